//! The same checks for HTTP/2 requests, which Pingora's HTTP/2 server reads (the h2 crate
//! has already refused what HTTP/2 itself forbids: connection-specific headers, a
//! `Content-Length` that the DATA frames contradict, pseudo-headers out of place).
//!
//! What is left is the edge's own rules, as the HTTP/1 parser applies them: a method token, a
//! path-only target that normalises (or 400), one unambiguous host, a plain `Content-Length`
//! within the body limit, and no more header lines than an HTTP/1 request may carry.

use http::header;
use pingora::http::RequestHeader;

use super::client::ClientAddr;
use super::{
    content_length, host, path, refuse, valid_method, Fields, Incoming, Refusal, MAX_HEADERS,
};
use crate::static_files::Conditions;

/// Check `req` and rewrite its target to the normalised path (the backend and the router see
/// that one only).
pub fn check(req: &mut RequestHeader, max_body_bytes: u64) -> Result<(), Refusal> {
    if req.headers.len() > MAX_HEADERS {
        return Err(refuse(431, "too many header lines"));
    }
    if !valid_method(req.method.as_str()) {
        return Err(refuse(400, "malformed method"));
    }
    // RFC 9113 8.2.1: a value that starts or ends with a space or tab is malformed (HTTP/1's
    // parser trims that whitespace; here it would reach the backend as sent).
    let padded =
        |v: &[u8]| matches!(v.first().zip(v.last()), Some((a, b)) if is_ws(*a) || is_ws(*b));
    if req.headers.values().any(|v| padded(v.as_bytes())) {
        return Err(refuse(400, "a header value starts or ends with whitespace"));
    }
    // CONNECT (no :path) and `*` end here, as absolute-form and `*` do on HTTP/1.
    let raw_path = req.uri.path();
    if !raw_path.starts_with('/') {
        return Err(refuse(400, "the request target must be a path"));
    }
    // `:authority` and `Host` are two names for one thing: both present and different is a
    // request two routers could place differently.
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let host = hosts.next().map(|v| v.as_bytes());
    if hosts.next().is_some() {
        return Err(refuse(400, "more than one Host header"));
    }
    let authority = req.uri.authority().map(|a| a.as_str().as_bytes());
    match (authority, host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h.trim_ascii()) => {
            return Err(refuse(400, ":authority and Host differ"))
        }
        (None, None) => return Err(refuse(400, "a request needs :authority or Host")),
        (a, h) => {
            if !host::valid_host(a.or(h).unwrap_or_default()) {
                return Err(refuse(400, "the Host header is not a valid host[:port]"));
            }
        }
    }
    let mut lengths = req.headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(v) = lengths.next() {
        let len = content_length(v.as_bytes())
            .ok_or(refuse(400, "Content-Length is not a plain number"))?;
        if lengths.next().is_some() {
            return Err(refuse(400, "more than one Content-Length"));
        }
        if len > max_body_bytes {
            return Err(refuse(413, "request body is too large"));
        }
    }
    let normalised = path::normalise(raw_path).map_err(|e| refuse(400, e.0))?;
    if let std::borrow::Cow::Owned(p) = normalised {
        let target = match req.uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        let mut parts = req.uri.clone().into_parts();
        parts.path_and_query = Some(
            target
                .parse()
                .map_err(|_| refuse(400, "the normalised target is not a valid URI"))?,
        );
        let uri = http::Uri::from_parts(parts)
            .map_err(|_| refuse(400, "the normalised target is not a valid URI"))?;
        req.set_uri(uri);
    }
    Ok(())
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A checked HTTP/2 request (or any request Pingora read) as the decision sees it.
pub fn incoming<'r>(
    req: &'r RequestHeader,
    client: &'r ClientAddr,
    request_id: &'r str,
    tls: bool,
    has_body: bool,
    upgrade: bool,
) -> Incoming<'r> {
    // HTTP/2 names the host in `:authority` (`check` made sure `Host` agrees).
    let host = req.headers.get(header::HOST).map(|v| v.as_bytes());
    Incoming {
        method: req.method.as_str(),
        path: req.uri.path(),
        query: req.uri.query(),
        target: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        fields: Fields::Map(&req.headers),
        conditions: Conditions::from_headers(&req.headers),
        host: host.or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes())),
        client,
        tls,
        redirect_listener: false,
        upgrade,
        has_body,
        request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h2(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/", None).unwrap();
        // As the h2 crate makes it from :scheme, :authority and :path.
        r.set_uri(uri.parse().unwrap());
        r.set_version(http::Version::HTTP_2);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn normalises_the_path_and_keeps_the_query() {
        let mut r = h2("GET", "https://a.example/api/x/../y/%7Euser?q=%2F", &[]);
        check(&mut r, 100).unwrap();
        assert_eq!(r.uri.path(), "/api/y/~user");
        assert_eq!(r.uri.query(), Some("q=%2F"));
        assert_eq!(r.uri.authority().unwrap().as_str(), "a.example");
    }

    #[test]
    fn refuses_what_http1_refuses() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16);
        let cases: &[Case] = &[
            ("GET", "https://a.example/a/%2e%2e/%2e%2e/etc", &[], 400),
            ("GET", "https://a.example/api%2fx", &[], 400),
            ("GET", "https://a.example/x/..;/y", &[], 400),
            ("GET", "https://a.example/", &[("host", "b.example")], 400),
            ("GET", "/", &[], 400),
            ("GET", "/", &[("host", "a b")], 400),
            ("GET", "/", &[("host", "a"), ("host", "a")], 400),
            (
                "POST",
                "https://a.example/api",
                &[("content-length", "+5")],
                400,
            ),
            (
                "POST",
                "https://a.example/api",
                &[("content-length", "101")],
                413,
            ),
            ("get", "https://a.example/", &[], 400),
            // RFC 9113 8.2.1 and 8.3.1: malformed fields are refused, not passed on.
            ("GET", "https://a.example:99999/", &[], 400),
            ("GET", "https://a.example/", &[("x-a", " v")], 400),
            ("GET", "https://a.example/", &[("x-a", "v\t")], 400),
            ("GET", "https://a.example/", &[("x-a", " ")], 400),
        ];
        for (m, u, hs, status) in cases {
            let mut r = h2(m, u, hs);
            assert_eq!(
                check(&mut r, 100).map_err(|e| e.status),
                Err(*status),
                "{m} {u} {hs:?}"
            );
        }
        let many: Vec<(String, &str)> = (0..101).map(|i| (format!("x-{i}"), "1")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let mut r = h2("GET", "https://a.example/", &many);
        assert_eq!(check(&mut r, 100).unwrap_err().status, 431);
        // Same host in both, any case: fine.
        let mut r = h2("GET", "https://A.example/", &[("host", "a.EXAMPLE")]);
        assert!(check(&mut r, 100).is_ok());
    }
}
