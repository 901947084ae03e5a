//! Waiting for the next request on a kept-alive connection, and the `Date` header value.

use std::cell::RefCell;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

/// How long an idle connection keeps its request loop's state (a boxed future, ~3 KiB) before
/// it gives it back; its buffers go back as soon as it waits (see [`read_pooled`]). Short, so
/// that the boxes of connections that went quiet are reused by busy ones instead of leaving
/// holes between the small objects every connection keeps (glibc cannot return those pages);
/// long enough that a connection under load is not re-boxed for every request.
pub const KEEP_BUFFERS_FOR: Duration = Duration::from_millis(100);

/// A connection's read buffer, and the buffer its answers' heads are written into.
const READ_BUFFER: usize = 4096;
const WRITE_BUFFER: usize = 1024;
/// Buffers a thread keeps for its connections' next requests (at most 160 KiB per thread).
const POOLED: usize = 32;

thread_local! {
    static POOL: RefCell<(Vec<BytesMut>, Vec<Vec<u8>>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Buffers for a connection that has bytes to read: from this thread's pool, else new.
fn take_buffers(buf: &mut BytesMut, out: &mut Vec<u8>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if buf.capacity() == 0 {
            *buf =
                p.0.pop()
                    .unwrap_or_else(|| BytesMut::with_capacity(READ_BUFFER));
        }
        if out.capacity() == 0 {
            *out =
                p.1.pop()
                    .unwrap_or_else(|| Vec::with_capacity(WRITE_BUFFER));
        }
    });
    if buf.capacity() < READ_BUFFER / 2 {
        // The last request's head handles are gone: this takes its buffer back.
        buf.reserve(READ_BUFFER);
    }
}

/// A waiting connection's buffers go back to the pool: a connection holds no buffer while it
/// waits, as nginx frees an idle keep-alive connection's buffers (WeChat's browser keeps
/// many connections open and quiet), and they are reused, not freed and allocated again.
fn give_buffers(buf: &mut BytesMut, out: &mut Vec<u8>) {
    // `out` is scratch space for the answer being written; `buf` may hold a request's start.
    if !buf.is_empty() {
        return;
    }
    let (buf, mut out) = (std::mem::take(buf), std::mem::take(out));
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if buf.capacity() > 0 && buf.capacity() <= 4 * READ_BUFFER && p.0.len() < POOLED {
            p.0.push(buf);
        }
        if out.capacity() > 0 && out.capacity() <= 4 * WRITE_BUFFER && p.1.len() < POOLED {
            out.clear();
            p.1.push(out);
        }
    });
}

/// Read what the client sent next into `buf`, holding buffers only while there is something
/// to read: they are taken from the thread's pool when the socket is polled and given back
/// when it has nothing (a `Pending` read leaves a TCP buffer untouched). No extra system call.
pub fn read_pooled<'a>(
    stream: &'a mut Stream,
    buf: &'a mut BytesMut,
    out: &'a mut Vec<u8>,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        take_buffers(buf, out);
        let polled = std::pin::pin!(stream.read_buf(&mut *buf)).poll(cx);
        if polled.is_pending() {
            give_buffers(buf, out);
        }
        polled
    })
}

/// What waiting for the next request came to.
pub enum Idle {
    /// Bytes of it were read (0: the client closed, or an error).
    Read(usize),
    /// Nothing within [`KEEP_BUFFERS_FOR`]: the buffers are given back; wait the rest of the
    /// keep-alive time with [`quiet_read`].
    Quiet(Duration),
    /// Keep-alive time over, or shutting down.
    Done,
}

/// Wait for the next request to begin, up to `idle` or [`KEEP_BUFFERS_FOR`], whichever is
/// shorter.
///
/// The buffers are the thread's while nothing is read ([`read_pooled`]); a connection quiet
/// for [`KEEP_BUFFERS_FOR`] gives its request loop back too (`Idle::Quiet`).
///
/// When Pingora starts shutting down (after an upgrade handed the listeners over, or on
/// SIGTERM), idle connections close within [`KEEP_BUFFERS_FOR`], as Pingora's own do, so
/// clients move on instead of racing this process's exit. Connections with a request under way finish it first, and
/// so do new ones (`shutdown` is `None` until a connection's first request): one accepted just
/// before the listener closed has its request in the socket already, and closing it unread
/// would reset it.
pub async fn idle_read(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    idle: Duration,
    shutdown: Option<&mut ShutdownWatch>,
) -> Idle {
    if shutdown.as_ref().is_some_and(|s| *s.borrow()) {
        return Idle::Done;
    }
    // Under load the next request is usually in the socket already: take it without arming a
    // timer and a shutdown waiter, which otherwise cost a timer-wheel entry and a watch
    // registration per request. A `Pending` here costs no system call of its own: the read
    // below finds the readiness this one cleared.
    {
        let mut ready_now = std::pin::pin!(read_pooled(stream, buf, out));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(read) = ready_now.as_mut().poll(&mut cx) {
            return Idle::Read(read.unwrap_or(0));
        }
    }
    // No shutdown waiter for this short wait (a registration on the process-wide watch per
    // request): shutdown was checked above, and a connection still quiet after this wait
    // watches for it in `quiet_read`, so an idle one closes at most KEEP_BUFFERS_FOR late.
    let first_wait = idle.min(KEEP_BUFFERS_FOR);
    match tokio::time::timeout(first_wait, read_pooled(stream, buf, out)).await {
        Ok(read) => Idle::Read(read.unwrap_or(0)),
        Err(_) if first_wait == idle => Idle::Done,
        Err(_) => Idle::Quiet(idle - first_wait),
    }
}

/// The rest of a quiet connection's keep-alive time, holding no buffer (`Ok(0)`: gone, quiet
/// too long or shutting down).
pub async fn quiet_read(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    left: Duration,
    mut shutdown: Option<&mut ShutdownWatch>,
) -> std::io::Result<usize> {
    if shutdown.as_ref().is_some_and(|s| *s.borrow()) {
        return Ok(0);
    }
    tokio::select! {
        read = tokio::time::timeout(left, read_pooled(stream, buf, out)) => read.unwrap_or(Ok(0)),
        _ = closing(&mut shutdown) => Ok(0),
    }
}

/// Resolves when shutdown starts; never for a connection that must be served regardless.
async fn closing(shutdown: &mut Option<&mut ShutdownWatch>) {
    match shutdown {
        Some(s) => {
            let _ = s.changed().await;
        }
        None => std::future::pending().await,
    }
}
