//! Replies as values: what the edge answers by itself (a dist file, a health answer, a login
//! page or redirect, a JSON error), built by whoever decides and written by whichever transport
//! the request came on. A reply carries its own fields only; [`Finish`] adds what every answer
//! carries (`x-request-id`, `date`, HSTS, the connection's own fields), the same for replies,
//! prebuilt dist answers and relayed backend answers, on HTTP/1 and HTTP/2.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};

use crate::ops::RouteClass;
use crate::request::Refusal;
use crate::static_files::Piece;

pub const JSON: &str = "application/json; charset=utf-8";
pub const TEXT: &str = "text/plain; charset=utf-8";
pub const HTML: &str = "text/html; charset=utf-8";

/// The fields every answer to one request carries beside its own, whoever wrote it.
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a> {
    /// The edge's request id (the client's or its load balancer's when sane, else made).
    pub request_id: &'a str,
    /// `Strict-Transport-Security`, over TLS with HSTS on (it replaces a backend's).
    pub hsts: Option<&'a HeaderValue>,
    /// HTTP/1: what the connection does after this answer (`close`, HTTP/1.0's `keep-alive`,
    /// `upgrade`), or nothing (HTTP/1.1's default keep-alive); see [`Finish::connection`].
    pub connection: Option<&'static str>,
}

impl Finish<'_> {
    /// The `connection` field an answer needs: `close` when the connection ends after it,
    /// `keep-alive` for an HTTP/1.0 client that asked to keep it (RFC 9112 §9.3), none otherwise.
    pub fn connection(keep_alive: bool, minor_version: u8) -> Option<&'static str> {
        match (keep_alive, minor_version) {
            (false, _) => Some("close"),
            (true, 0) => Some("keep-alive"),
            (true, _) => None,
        }
    }

    /// The end of an HTTP/1 head: these fields, `date` (the coarse clock's, formatted once a
    /// second), then the blank line.
    pub fn http1(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(self.request_id.as_bytes());
        if let Some(v) = self.hsts {
            out.extend_from_slice(b"\r\nstrict-transport-security: ");
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\ndate: ");
        crate::ops::clock::with_http_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
        if let Some(c) = self.connection {
            out.extend_from_slice(b"connection: ");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The same fields on an HTTP/2 answer (no connection fields in HTTP/2; Pingora's writer
    /// sets `date`).
    pub fn h2(&self, h: &mut http::HeaderMap) {
        if let Ok(mut v) = HeaderValue::from_str(self.request_id) {
            // Never indexed: a value used once would evict the HPACK table's useful entries.
            v.set_sensitive(true);
            h.insert(X_REQUEST_ID, v);
        }
        if let Some(hsts) = self.hsts {
            h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    /// What kind of request it answers, for the log and metrics.
    pub class: RouteClass,
    pub status: u16,
    /// Its own header fields, in order (content type, location, validators, `Set-Cookie`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: ReplyBody,
}

#[derive(Debug)]
pub enum ReplyBody {
    /// Whole, in memory; `Content-Length` is its length (for HEAD too, the body unsent).
    Bytes(Bytes),
    /// A dist file's bytes in pieces (a range, a file read from disk); `length` is the
    /// `Content-Length` to send (none for 304).
    Pieces {
        pieces: Vec<Piece>,
        length: Option<u64>,
    },
}

impl Reply {
    /// A small answer of the edge's own: never stored by a cache.
    pub fn new(class: RouteClass, status: u16, content_type: &'static str, body: Bytes) -> Reply {
        Reply {
            class,
            status,
            headers: vec![
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body: ReplyBody::Bytes(body),
        }
    }

    pub fn json(class: RouteClass, status: u16, body: Bytes) -> Reply {
        Reply::new(class, status, JSON, body)
    }

    /// `{"error": code, "message": ...}`: every error answer of the edge has this shape.
    pub fn error(class: RouteClass, status: u16, code: &str, message: &str) -> Reply {
        Reply::json(class, status, json_error(code, message))
    }

    /// The answer to a request the edge will not serve.
    pub fn refusal(r: Refusal) -> Reply {
        Reply::error(
            RouteClass::Rejected,
            r.status,
            refusal_kind(r.status),
            r.message,
        )
    }

    pub fn text(class: RouteClass, status: u16, body: impl Into<Bytes>) -> Reply {
        Reply::new(class, status, TEXT, body.into())
    }

    pub fn page(class: RouteClass, status: u16, html: String) -> Reply {
        Reply::new(class, status, HTML, Bytes::from(html))
    }

    /// 302 to a path or URL the edge built itself.
    pub fn redirect(class: RouteClass, location: &str) -> Reply {
        Reply::moved(class, 302, location, Bytes::new())
    }

    /// A redirect with `status` (301, 302); a location that cannot be a header value (which
    /// the edge never builds) is a 500 rather than a broken answer.
    pub fn moved(class: RouteClass, status: u16, location: &str, body: Bytes) -> Reply {
        let Ok(location) = HeaderValue::from_bytes(location.as_bytes()) else {
            return Reply::error(class, 500, "internal_error", "not a header value");
        };
        let mut reply = Reply::text(class, status, body);
        reply.headers.push((header::LOCATION, location));
        reply
    }

    /// A header field more.
    pub fn with(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// `Set-Cookie` lines: an answer that sets a session is never stored by a shared cache.
    pub fn with_cookies(mut self, cookies: Vec<HeaderValue>) -> Reply {
        if cookies.is_empty() {
            return self;
        }
        self.headers.retain(|(n, _)| n != header::CACHE_CONTROL);
        self.headers
            .push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        self.headers
            .extend(cookies.into_iter().map(|c| (header::SET_COOKIE, c)));
        self
    }

    /// The `Content-Length` the answer declares.
    pub fn content_length(&self) -> Option<u64> {
        match &self.body {
            ReplyBody::Bytes(b) => Some(b.len() as u64),
            ReplyBody::Pieces { length, .. } => *length,
        }
    }
}

/// `{"error": code, "message": ...}`.
pub fn json_error(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": code, "message": message }).to_string())
}

/// The `error` code of a refusal with `status`.
pub fn refusal_kind(status: u16) -> &'static str {
    match status {
        413 => "payload_too_large",
        414 => "uri_too_long",
        431 => "header_too_large",
        // A body the edge could not keep (its temporary file), or too many being kept.
        500 => "internal_error",
        501 => "not_implemented",
        503 => "service_unavailable",
        505 => "version_not_supported",
        _ => "bad_request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_make_an_answer_private() {
        let r = Reply::text(RouteClass::Static, 200, "x").with(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        let r = r.with_cookies(vec![HeaderValue::from_static("s=1")]);
        let cc: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n == header::CACHE_CONTROL)
            .collect();
        assert_eq!(cc.len(), 1);
        assert_eq!(cc[0].1, "no-store");
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n == header::SET_COOKIE && v == "s=1"));
    }

    #[test]
    fn a_location_that_is_not_a_header_value_is_a_500() {
        let r = Reply::redirect(RouteClass::Auth, "/a\nb");
        assert_eq!(r.status, 500);
        assert_eq!(Reply::redirect(RouteClass::Auth, "/a?b=1").status, 302);
    }
}
