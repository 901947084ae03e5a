//! Waiting for the next request on a kept-alive connection, and the `Date` header value.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

/// How long an idle connection keeps its buffers before it gives them back.
const KEEP_BUFFERS_FOR: Duration = Duration::from_secs(1);

/// Wait up to `idle` for the next request to begin (`Ok(0)`: gone, quiet or shutting down).
///
/// A connection idle for more than [`KEEP_BUFFERS_FOR`] gives its read and write buffers
/// back and waits for one byte on the stack, as nginx frees an idle keep-alive connection's
/// buffers: WeChat's browser keeps many connections open and quiet.
///
/// When Pingora starts shutting down (after an upgrade handed the listeners over, or on
/// SIGTERM), idle connections close at once, as Pingora's own do, so clients move on instead
/// of racing this process's exit. Connections with a request under way finish it first, and
/// so do new ones (`shutdown` is `None` for a connection's first request): one accepted just
/// before the listener closed has its request in the socket already, and closing it unread
/// would reset it.
pub async fn idle_read(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    idle: Duration,
    mut shutdown: Option<&mut ShutdownWatch>,
) -> std::io::Result<usize> {
    if shutdown.as_ref().is_some_and(|s| *s.borrow()) {
        return Ok(0);
    }
    // Under load the next request is usually in the socket already: take it without arming a
    // timer and a shutdown waiter, which otherwise cost a timer-wheel entry and a watch
    // registration per request. A `Pending` here costs no system call of its own: the read
    // below finds the readiness this one cleared.
    {
        let mut ready_now = std::pin::pin!(stream.read_buf(buf));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(read) = ready_now.as_mut().poll(&mut cx) {
            return read;
        }
    }
    let first_wait = idle.min(KEEP_BUFFERS_FOR);
    tokio::select! {
        read = tokio::time::timeout(first_wait, stream.read_buf(buf)) => match read {
            Ok(read) => return read,
            Err(_) if first_wait == idle => return Ok(0),
            Err(_) => {}
        },
        _ = closing(&mut shutdown) => return Ok(0),
    }
    *buf = BytesMut::new();
    *out = Vec::new();
    let mut first = [0u8; 1];
    tokio::select! {
        read = tokio::time::timeout(idle - first_wait, stream.read(&mut first)) => match read {
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
