//! Which thread serves a connection, and how a busy thread shares the CPU.
//!
//! - Balance: with `work_stealing: false` Pingora hands each accepted connection to a random
//!   thread, so one thread can hold noticeably more keep-alive connections than another, whose
//!   clients then wait while the other idles. A thread serving more connections than the least
//!   busy one passes a new connection on before touching it, as nginx workers take turns to accept.
//! - Home: the socket is registered with the runtime of the thread that serves it ([`rehome`]).
//! - Sharing: a busy thread offers the CPU every few dozen answers ([`share_the_cpu`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use pingora::protocols::Stream;

use super::socket::Socket;

const MAX_THREADS: usize = 256;

static LOAD: [AtomicUsize; MAX_THREADS] = [const { AtomicUsize::new(0) }; MAX_THREADS];
static SEEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = SEEN.fetch_add(1, Ordering::Relaxed).min(MAX_THREADS - 1);
}

fn slot() -> usize {
    SLOT.with(|s| *s)
}

/// Whether this thread should pass a new connection on: it serves more connections than the
/// least busy of the `threads` threads (a thread that has not served any yet counts as idle).
pub fn should_pass_on(threads: usize) -> bool {
    let mine = LOAD[slot()].load(Ordering::Relaxed);
    let seen = SEEN.load(Ordering::Relaxed).min(MAX_THREADS);
    let least = if seen < threads {
        0
    } else {
        (0..seen)
            .map(|i| LOAD[i].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };
    mine > least
}

/// Counts a connection on this thread while it lives.
pub struct Held(usize);

impl Held {
    pub fn here() -> Held {
        let s = slot();
        LOAD[s].fetch_add(1, Ordering::Relaxed);
        Held(s)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        LOAD[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers a thread gives before it offers the CPU to others (`sched_yield`).
const ANSWERS_PER_YIELD: u32 = 64;

thread_local! {
    static ANSWERS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Under load a runtime thread always has another connection ready and never sleeps, so the
/// kernel takes the CPU from it in whole time slices (ms), stalling every connection of that
/// thread at once: on 2 cores shared with the backend or a load generator, p99 was 8 ms
/// against nginx's 1–3 ms, whose workers sleep in `epoll_wait` between bursts. Offering the CPU
/// every few dozen answers keeps the tail short for ~1 % of throughput (bench/RESULTS.md).
pub fn share_the_cpu() {
    let n = ANSWERS.with(|a| {
        let n = a.get().wrapping_add(1);
        a.set(n);
        n
    });
    if n.is_multiple_of(ANSWERS_PER_YIELD) {
        // SAFETY: no arguments, no memory; only a scheduling hint.
        unsafe {
            libc::sched_yield();
        }
    }
}

/// Register the connection's socket with the runtime of the thread serving it.
///
/// With one runtime per thread (`work_stealing: false`), Pingora accepts on one runtime and
/// runs each connection on a random one; the socket stays registered with the accepting one,
/// so every readiness event would cross threads (an eventfd write and a wake-up per request).
/// A duplicate of the descriptor, registered here, keeps each connection on one thread, like
/// an nginx worker. Costs a few system calls per connection, none per request. The result is
/// the front door's own small [`Socket`] (TCP only; anything else is returned as it came).
pub fn rehome(stream: Stream) -> Stream {
    use pingora::protocols::l4::stream::Stream as TcpStreamL4;
    use std::os::fd::{AsRawFd, FromRawFd};
    let addresses = stream.get_socket_digest().and_then(|d| {
        let peer = d.peer_addr()?.as_inet().copied()?;
        let local = d.local_addr()?.as_inet().copied()?;
        Some((peer, local))
    });
    let Some((peer, local)) = addresses else {
        return stream;
    };
    let Some(fd) = stream
        .as_any()
        .downcast_ref::<TcpStreamL4>()
        .map(|s| s.as_raw_fd())
    else {
        return stream;
    };
    // SAFETY: `fd` is open (owned by `stream`); the duplicate is owned by the new std stream.
    let dup = unsafe { libc::dup(fd) };
    if dup < 0 {
        return stream;
    }
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(dup) };
    let Ok(tokio_stream) = tokio::net::TcpStream::from_std(std_stream) else {
        return stream;
    };
    // Only this descriptor (and its registration with the other runtime) closes; the socket
    // lives on in the duplicate.
    drop(stream);
    let _ = tokio_stream.set_nodelay(true);
    Box::new(Socket::new(tokio_stream, peer, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_busier_than_the_least_busy_passes_connections_on() {
        let (to_a, at_a) = std::sync::mpsc::channel::<&str>();
        let (to_test, from_a) = std::sync::mpsc::channel::<bool>();
        // Thread A holds three connections and answers whether it would pass a new one on.
        let a = std::thread::spawn(move || {
            let held: Vec<Held> = (0..3).map(|_| Held::here()).collect();
            while let Ok(cmd) = at_a.recv() {
                match cmd {
                    "ask" => to_test.send(should_pass_on(2)).unwrap(),
                    _ => break,
                }
            }
            drop(held);
        });
        // Until a second thread has served anything, it counts as idle: A passes on.
        to_a.send("ask").unwrap();
        assert!(from_a.recv().unwrap());
        // This thread serves as many as A: nobody passes on.
        let mine: Vec<Held> = (0..3).map(|_| Held::here()).collect();
        to_a.send("ask").unwrap();
        assert!(!from_a.recv().unwrap());
        assert!(!should_pass_on(2));
        // One more here: this thread is the busier one now.
        let extra = Held::here();
        assert!(should_pass_on(2));
        drop(extra);
        drop(mine);
        to_a.send("stop").unwrap();
        a.join().unwrap();
    }
}
