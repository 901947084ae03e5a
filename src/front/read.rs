//! Waiting for the next request on a kept-alive connection, and the `Date` header value.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

/// How long an idle connection keeps its buffers before it gives them back.
pub const KEEP_BUFFERS_FOR: Duration = Duration::from_secs(1);

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
/// A connection idle for more than [`KEEP_BUFFERS_FOR`] gives its read and write buffers
/// back, as nginx frees an idle keep-alive connection's buffers: WeChat's browser keeps many
/// connections open and quiet.
///
/// When Pingora starts shutting down (after an upgrade handed the listeners over, or on
/// SIGTERM), idle connections close at once, as Pingora's own do, so clients move on instead
/// of racing this process's exit. Connections with a request under way finish it first, and
/// so do new ones (`shutdown` is `None` until a connection's first request): one accepted just
/// before the listener closed has its request in the socket already, and closing it unread
/// would reset it.
pub async fn idle_read(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    idle: Duration,
    mut shutdown: Option<&mut ShutdownWatch>,
) -> Idle {
    if shutdown.as_ref().is_some_and(|s| *s.borrow()) {
        return Idle::Done;
    }
    // Under load the next request is usually in the socket already: take it without arming a
    // timer and a shutdown waiter, which otherwise cost a timer-wheel entry and a watch
    // registration per request. A `Pending` here costs no system call of its own: the read
    // below finds the readiness this one cleared.
    {
        let mut ready_now = std::pin::pin!(stream.read_buf(buf));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(read) = ready_now.as_mut().poll(&mut cx) {
            return Idle::Read(read.unwrap_or(0));
        }
    }
    let first_wait = idle.min(KEEP_BUFFERS_FOR);
    tokio::select! {
        read = tokio::time::timeout(first_wait, stream.read_buf(buf)) => match read {
            Ok(read) => Idle::Read(read.unwrap_or(0)),
            Err(_) if first_wait == idle => Idle::Done,
            Err(_) => {
                *buf = BytesMut::new();
                *out = Vec::new();
                Idle::Quiet(idle - first_wait)
            }
        },
        _ = closing(&mut shutdown) => Idle::Done,
    }
}

/// The rest of a quiet connection's keep-alive time: wait for one byte with no buffer, then
/// start a new one with it (`Ok(0)`: gone, quiet too long or shutting down).
pub async fn quiet_read(
    stream: &mut Stream,
    buf: &mut BytesMut,
    left: Duration,
    mut shutdown: Option<&mut ShutdownWatch>,
) -> std::io::Result<usize> {
    if shutdown.as_ref().is_some_and(|s| *s.borrow()) {
        return Ok(0);
    }
    let mut first = [0u8; 1];
    tokio::select! {
        read = tokio::time::timeout(left, stream.read(&mut first)) => match read {
            Ok(Ok(1)) => {
                buf.reserve(4096);
                buf.extend_from_slice(&first);
                Ok(1)
            }
            Ok(other) => other,
            Err(_) => Ok(0),
        },
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

thread_local! {
    /// The `Date` value, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Call `f` with the current HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn with_http_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            }
        }
        f(&d.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_is_an_http_date() {
        let mut got = Vec::new();
        with_http_date(|d| got.extend_from_slice(d));
        let s = String::from_utf8(got).unwrap();
        assert!(httpdate::parse_http_date(&s).is_ok(), "{s}");
    }
}
