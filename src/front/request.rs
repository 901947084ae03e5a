//! Reading and looking at one HTTP/1.1 request head, without copying it.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use crate::proxy::headers::has_token;
use crate::static_files::Conditions;

pub enum ReadError {
    /// The client closed, went quiet, or failed: nothing to answer.
    Closed,
    /// Not for the short path (too large, bare LF line ends): Pingora reads on from here.
    NotShort,
}

/// Searchers built once (building one per call showed up in profiles).
static HEAD_END: once_cell::sync::Lazy<memchr::memmem::Finder<'static>> =
    once_cell::sync::Lazy::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
static BARE_LF_END: once_cell::sync::Lazy<memchr::memmem::Finder<'static>> =
    once_cell::sync::Lazy::new(|| memchr::memmem::Finder::new(b"\n\n"));

/// Read until `buf` holds a complete head; its length. `idle` bounds the wait for the first
/// byte of a request, `request` the wait for the rest.
pub async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    idle: Duration,
    request: Duration,
    max_head: usize,
    shutdown: &mut ShutdownWatch,
) -> Result<usize, ReadError> {
    loop {
        if let Some(i) = HEAD_END.find(buf) {
            // Large heads get Pingora's path, which measures them and answers 431.
            return if i + 4 > max_head {
                Err(ReadError::NotShort)
            } else {
                Ok(i + 4)
            };
        }
        if buf.len() > max_head || BARE_LF_END.find(buf).is_some() {
            return Err(ReadError::NotShort);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let read = if buf.is_empty() {
            idle_read(stream, buf, idle, shutdown).await
        } else {
            tokio::time::timeout(request, stream.read_buf(buf))
                .await
                .unwrap_or(Ok(0))
        };
        match read {
            Ok(n) if n > 0 => {}
            _ => return Err(ReadError::Closed),
        }
    }
}

/// Wait up to `idle` for the next request to begin (`Ok(0)`: gone, quiet or shutting down).
///
/// When Pingora starts shutting down (after an upgrade handed the listeners over, or on
/// SIGTERM), idle connections close at once, as Pingora's own do, so clients move on instead
/// of racing this process's exit. Connections with a request under way finish it first.
async fn idle_read(
    stream: &mut Stream,
    buf: &mut BytesMut,
    idle: Duration,
    shutdown: &mut ShutdownWatch,
) -> std::io::Result<usize> {
    if *shutdown.borrow() {
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
    tokio::select! {
        read = tokio::time::timeout(idle, stream.read_buf(buf)) => read.unwrap_or(Ok(0)),
        _ = shutdown.changed() => Ok(0),
    }
}

/// The parts of a request head the edge looks at, borrowed from the read buffer.
pub struct Head<'b, 'h> {
    pub method: &'b str,
    /// Path and query as sent.
    pub target: &'b str,
    pub path: &'b str,
    pub query: Option<&'b str>,
    /// Minor version: 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: &'h [httparse::Header<'b>],
    pub conditions: Conditions<'b>,
    pub request_id: Option<&'b [u8]>,
    pub content_length: Option<u64>,
    /// Unparseable, or several that disagree.
    pub bad_content_length: bool,
    pub has_transfer_encoding: bool,
    pub expects_continue: bool,
    pub upgrade: bool,
    /// `Connection: close`.
    pub close: bool,
    pub referer: Option<&'b str>,
    pub user_agent: Option<&'b str>,
    /// How many `Host` lines, and the first one's value.
    pub host_count: usize,
    pub host: Option<&'b [u8]>,
}

/// Owned copies of what the access log prints (only made when it is on).
pub struct LogFields {
    pub method: String,
    pub target: String,
    pub referer: String,
    pub user_agent: String,
}

fn text(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v).ok()
}

impl<'b, 'h> Head<'b, 'h> {
    /// `None` for anything httparse refuses (Pingora then answers it, with its 400).
    pub fn parse(data: &'b [u8], hs: &'h mut [httparse::Header<'b>]) -> Option<Head<'b, 'h>> {
        let mut req = httparse::Request::new(hs);
        match req.parse(data) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return None,
        }
        let (method, target, minor_version) = (req.method?, req.path?, req.version?);
        let headers: &'h [httparse::Header<'b>] = req.headers;
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut head = Head {
            method,
            target,
            path,
            query,
            minor_version,
            headers,
            conditions: Conditions::default(),
            request_id: None,
            content_length: None,
            bad_content_length: false,
            has_transfer_encoding: false,
            expects_continue: false,
            upgrade: false,
            close: false,
            referer: None,
            user_agent: None,
            host_count: 0,
            host: None,
        };
        for h in headers {
            let v = h.value;
            let c = &mut head.conditions;
            // The first copy counts, as with `HeaderMap::get` on Pingora's path.
            macro_rules! first {
                ($slot:expr) => {
                    if $slot.is_none() {
                        $slot = text(v);
                    }
                };
            }
            match h.name.len() {
                4 if h.name.eq_ignore_ascii_case("host") => {
                    head.host_count += 1;
                    head.host.get_or_insert(v);
                }
                6 if h.name.eq_ignore_ascii_case("accept") => first!(c.accept),
                6 if h.name.eq_ignore_ascii_case("expect") => head.expects_continue = true,
                5 if h.name.eq_ignore_ascii_case("range") => first!(c.range),
                7 if h.name.eq_ignore_ascii_case("referer") => first!(head.referer),
                7 if h.name.eq_ignore_ascii_case("upgrade") => head.upgrade = true,
                8 if h.name.eq_ignore_ascii_case("if-match") => first!(c.if_match),
                8 if h.name.eq_ignore_ascii_case("if-range") => first!(c.if_range),
                10 if h.name.eq_ignore_ascii_case("user-agent") => first!(head.user_agent),
                10 if h.name.eq_ignore_ascii_case("connection") => {
                    head.close |= has_token(v, "close");
                    head.upgrade |= has_token(v, "upgrade");
                }
                12 if h.name.eq_ignore_ascii_case("x-request-id") && head.request_id.is_none() => {
                    head.request_id = Some(v)
                }
                13 if h.name.eq_ignore_ascii_case("if-none-match") => first!(c.if_none_match),
                14 if h.name.eq_ignore_ascii_case("content-length") => {
                    let n = text(v).and_then(|s| s.trim().parse::<u64>().ok());
                    match (n, head.content_length) {
                        (Some(n), None) => head.content_length = Some(n),
                        (Some(n), Some(prev)) if n == prev => {}
                        _ => head.bad_content_length = true,
                    }
                }
                15 if h.name.eq_ignore_ascii_case("accept-encoding") => {
                    first!(c.accept_encoding)
                }
                17 if h.name.eq_ignore_ascii_case("if-modified-since") => {
                    first!(c.if_modified_since)
                }
                17 if h.name.eq_ignore_ascii_case("transfer-encoding") => {
                    head.has_transfer_encoding = true
                }
                19 if h.name.eq_ignore_ascii_case("if-unmodified-since") => {
                    first!(c.if_unmodified_since)
                }
                _ => {}
            }
        }
        Some(head)
    }

    /// HTTP/1.1 with a plain origin-form target, unambiguous framing and one valid `Host`;
    /// anything else (HTTP/1.0 keep-alive rules, absolute-form targets, conflicting lengths,
    /// the 400s of [`crate::validation`]) is Pingora's.
    pub fn short_path_candidate(&self) -> bool {
        self.minor_version == 1
            && self.target.starts_with('/')
            && !self.bad_content_length
            && !(self.has_transfer_encoding && self.content_length.is_some())
            && crate::validation::host_problem(true, self.host_count, self.host).is_none()
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    pub fn is_get_or_head(&self) -> bool {
        self.method == "GET" || self.method == "HEAD"
    }

    /// Every `Cookie` header's value.
    pub fn cookies(&self) -> Vec<&'b [u8]> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .map(|h| h.value)
            .collect()
    }

    pub fn to_owned_log(&self) -> LogFields {
        LogFields {
            method: self.method.to_string(),
            target: self.target.to_string(),
            referer: self.referer.unwrap_or("").to_string(),
            user_agent: self.user_agent.unwrap_or("").to_string(),
        }
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
    fn head_fields() {
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\naccept-encoding: br\r\n\
If-None-Match: \"e\"\r\nConnection: keep-alive, close\r\nCookie: a=1\r\nCookie: b=2\r\nX-Request-ID: r1\r\n\r\n";
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let h = Head::parse(raw, &mut hs).unwrap();
        assert_eq!((h.method, h.path, h.query), ("GET", "/a/b", Some("x=1")));
        assert_eq!(
            h.conditions.accept_encoding,
            Some("gzip"),
            "first copy counts"
        );
        assert_eq!(h.conditions.if_none_match, Some("\"e\""));
        assert!(h.close && !h.upgrade && h.short_path_candidate());
        assert_eq!(h.cookies(), vec![&b"a=1"[..], b"b=2"]);
        assert_eq!(h.request_id, Some(&b"r1"[..]));
    }

    #[test]
    fn framing_that_is_not_for_the_short_path() {
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let h = Head::parse(
            b"POST /api HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            &mut hs,
        )
        .unwrap();
        assert!(!h.short_path_candidate());
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let h = Head::parse(b"GET / HTTP/1.0\r\n\r\n", &mut hs).unwrap();
        assert!(!h.short_path_candidate());
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let h = Head::parse(b"GET http://x/ HTTP/1.1\r\n\r\n", &mut hs).unwrap();
        assert!(!h.short_path_candidate());
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let h = Head::parse(
            b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            &mut hs,
        )
        .unwrap();
        assert!(h.upgrade);
        let mut hs = [httparse::EMPTY_HEADER; 16];
        assert!(Head::parse(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", &mut hs).is_none());
    }

    #[test]
    fn date_is_an_http_date() {
        let mut got = Vec::new();
        with_http_date(|d| got.extend_from_slice(d));
        let s = String::from_utf8(got).unwrap();
        assert!(httpdate::parse_http_date(&s).is_ok(), "{s}");
    }
}
