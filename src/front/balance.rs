//! Connections spread evenly over Pingora's per-thread runtimes.
//!
//! With `work_stealing: false` Pingora hands each accepted connection to a random thread, and
//! with tens of keep-alive connections the busiest thread ends up with noticeably more than
//! the others: its clients wait while another thread idles (on 2 cores: p99 8 ms against
//! nginx's 3 ms for small files). A thread serving more connections than the least busy one
//! passes a new connection on before touching it, like nginx workers taking turns to accept.

use std::sync::atomic::{AtomicUsize, Ordering};

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
