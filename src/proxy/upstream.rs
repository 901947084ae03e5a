//! The one builder of the request head the backend receives, whichever transport the client
//! used (`forward` sends it).
//!
//! From the client's header lines it keeps the end-to-end ones only: no hop-by-hop header
//! (nor any the client's `Connection` names), no framing (`Content-Length`,
//! `Transfer-Encoding`: the edge writes its own from the decoded body), no `Expect` (the edge
//! answered it), no spoofable identity (strip and inject from one list of names), no
//! `X-Request-ID` or forwarding header the edge sets itself, and the session cookie removed.

use http::{HeaderName, HeaderValue};

use super::headers::{self, Forwarding};

/// Who is calling, as the backend is told.
#[derive(Debug, Default, Clone)]
pub struct ForwardedIdentity {
    pub authenticated: bool,
    /// Identity headers to send upstream (name, value).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `None`: pass the client's `Cookie` unchanged; `Some(None)`: drop it; `Some(Some(v))`: send `v`.
    pub upstream_cookie: Option<Option<String>>,
}

/// What the edge decided about one request going upstream.
pub struct Outbound<'a> {
    pub forwarding: &'a Forwarding<'a>,
    pub identity: &'a ForwardedIdentity,
    pub request_id: &'a str,
    /// `Content-Length` of the whole (decoded) request body, when one is sent
    /// ([`declared_length`]).
    pub body_len: Option<u64>,
    /// A real upgrade (see [`crate::request::Request::upgrade`]): `Connection: upgrade` and
    /// the client's `Upgrade` go on.
    pub upgrade: bool,
}

/// Framing and expectation headers: the edge writes its own.
fn is_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("expect")
}

/// The `Content-Length` a request goes on with: its body's length when it has one, and 0 for
/// an empty body of a method that defines one (RFC 9110 §8.6: a POST without a length would
/// leave the backend to guess).
pub fn declared_length(method: &str, body_len: u64) -> Option<u64> {
    (body_len > 0 || matches!(method, "POST" | "PUT" | "PATCH")).then_some(body_len)
}

/// Call `emit(name, value pieces)` for every header line the backend gets, in order.
pub fn headers<'c, I>(client: I, out: &Outbound, mut emit: impl FnMut(&str, &[&[u8]]))
where
    I: Iterator<Item = (&'c str, &'c [u8])> + Clone,
{
    let f = out.forwarding;
    let connection_values = || {
        client
            .clone()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v)
    };
    let mut prev_xff = None;
    let mut client_host = None;
    let mut upgrade = None;
    let rewrites_cookie = out.identity.upstream_cookie.is_some();
    let mut cookies_sent = false;
    for (name, value) in client.clone() {
        if name.eq_ignore_ascii_case("x-forwarded-for") && prev_xff.is_none() {
            prev_xff = Some(value);
        }
        if name.eq_ignore_ascii_case("host") && client_host.is_none() {
            client_host = Some(value);
        }
        if name.eq_ignore_ascii_case("upgrade") && upgrade.is_none() {
            upgrade = Some(value);
        }
        if headers::is_hop_by_hop(name)
            || is_framing(name)
            || headers::is_refused(name, f)
            || headers::is_set_by_edge(name, f)
            || name.eq_ignore_ascii_case("x-request-id")
            || (rewrites_cookie && name.eq_ignore_ascii_case("cookie"))
            || headers::named_in_connection(name, connection_values())
        {
            continue;
        }
        if name.eq_ignore_ascii_case("cookie") {
            // HTTP/2 clients send each cookie as a field of its own (RFC 9113 §8.2.3); an
            // HTTP/1.1 backend gets them as one line, as a browser sends them (RFC 6265 §5.4).
            if !cookies_sent {
                cookies_sent = true;
                let mut parts: Vec<&[u8]> = Vec::new();
                for (_, v) in client
                    .clone()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                {
                    if !parts.is_empty() {
                        parts.push(b"; ");
                    }
                    parts.push(v);
                }
                emit(name, &parts);
            }
            continue;
        }
        emit(name, &[value]);
    }
    headers::forwarding_headers(f, prev_xff, client_host, |name, parts| emit(name, parts));
    for (name, value) in &out.identity.headers {
        emit(name.as_str(), &[value.as_bytes()]);
    }
    if let Some(Some(cookie)) = &out.identity.upstream_cookie {
        emit("cookie", &[cookie.as_bytes()]);
    }
    emit("x-request-id", &[out.request_id.as_bytes()]);
    if let (true, Some(protocol)) = (out.upgrade, upgrade) {
        emit("connection", &[b"upgrade"]);
        emit("upgrade", &[protocol]);
    }
    if let Some(len) = out.body_len {
        emit("content-length", &[len.to_string().as_bytes()]);
    }
}

/// The whole upstream request head, serialized.
pub fn write_head<'c, I>(buf: &mut Vec<u8>, method: &str, target: &str, client: I, out: &Outbound)
where
    I: Iterator<Item = (&'c str, &'c [u8])> + Clone,
{
    buf.extend_from_slice(method.as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    headers(client, out, |name, parts| {
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b": ");
        for p in parts {
            buf.extend_from_slice(p);
        }
        buf.extend_from_slice(b"\r\n");
    });
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::client::ClientAddr;

    /// A request delivered by a trusted load balancer at 192.0.2.7.
    fn trusted_lb() -> ClientAddr {
        ClientAddr {
            client: "198.51.100.1".into(),
            hop: "192.0.2.7".into(),
            hop_trusted: true,
        }
    }

    /// The policy the tests forward with: underscores dropped, `X-WX-OpenID` protected.
    fn forwarding<'a>(lb: &'a ClientAddr, protected: &'a [String]) -> Forwarding<'a> {
        Forwarding {
            client: Some(lb),
            proto: "http",
            host_override: None,
            drop_underscore_headers: true,
            protected,
        }
    }

    fn sample_client() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("Host", b"h5.example.com"),
            ("X-Forwarded-For", b"10.0.0.1"),
            ("x_wx_openid", b"forged"),
            ("X-WX-OPENID", b"forged"),
            ("Connection", b"keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", b"hop"),
            ("Keep-Alive", b"timeout=5"),
            ("Content-Length", b"+70"),
            ("Transfer-Encoding", b"chunked"),
            ("Expect", b"100-continue"),
            ("Upgrade", b"websocket"),
            ("Cookie", b"wxedge_session=abc; a=1"),
            ("X-Request-ID", b"client"),
            ("Accept", b"*/*"),
        ]
    }

    fn built(identity: &ForwardedIdentity, body_len: u64, upgrade: bool) -> String {
        let (lb, protected) = (trusted_lb(), vec![headers::canonical("X-WX-OpenID")]);
        let f = forwarding(&lb, &protected);
        let out = Outbound {
            forwarding: &f,
            identity,
            request_id: "rid",
            body_len: declared_length("POST", body_len).filter(|&n| n > 0),
            upgrade,
        };
        let client = sample_client();
        let mut buf = Vec::new();
        write_head(
            &mut buf,
            "POST",
            "/api/x?y=1",
            client.iter().map(|(k, v)| (*k, *v)),
            &out,
        );
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn strips_then_injects_from_one_list() {
        let identity = ForwardedIdentity {
            authenticated: true,
            headers: vec![(
                HeaderName::from_static("x-wx-openid"),
                HeaderValue::from_static("o-1"),
            )],
            upstream_cookie: Some(Some("a=1".into())),
        };
        let text = built(&identity, 5, false);
        assert!(text.starts_with("POST /api/x?y=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "Host: h5.example.com",
            "Accept: */*",
            "x-forwarded-for: 10.0.0.1, 192.0.2.7",
            "x-real-ip: 198.51.100.1",
            "x-forwarded-proto: http",
            "x-forwarded-host: h5.example.com",
            "x-wx-openid: o-1",
            "cookie: a=1",
            "x-request-id: rid",
            "content-length: 5",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in {text}");
        }
        let lower = text.to_ascii_lowercase();
        for gone in [
            "forged",
            "connection:",
            "keep-alive",
            "x-secret-hop",
            "+70",
            "transfer-encoding",
            "expect",
            "upgrade",
            "wxedge_session",
            "client",
        ] {
            assert!(!lower.contains(gone), "{gone:?} in {text}");
        }
        assert_eq!(lower.matches("x-forwarded-for").count(), 1);
        assert_eq!(lower.matches("content-length").count(), 1);
    }

    #[test]
    fn upgrades_keep_their_protocol_and_empty_bodies_no_length() {
        let text = built(&ForwardedIdentity::default(), 0, true).to_ascii_lowercase();
        assert!(
            text.contains("\r\nconnection: upgrade\r\nupgrade: websocket\r\n"),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
        assert!(
            text.contains("cookie: wxedge_session=abc; a=1"),
            "unchanged without a login"
        );
    }

    #[test]
    fn lengths_go_on_for_bodies_and_body_methods() {
        assert_eq!(declared_length("POST", 0), Some(0));
        assert_eq!(declared_length("PUT", 3), Some(3));
        assert_eq!(declared_length("GET", 0), None);
        assert_eq!(declared_length("GET", 2), Some(2));
        assert_eq!(declared_length("DELETE", 0), None);
    }

    #[test]
    fn split_cookie_fields_go_upstream_as_one_line() {
        let (lb, protected) = (trusted_lb(), vec![]);
        let f = forwarding(&lb, &protected);
        let identity = ForwardedIdentity::default();
        let out = Outbound {
            forwarding: &f,
            identity: &identity,
            request_id: "rid",
            body_len: None,
            upgrade: false,
        };
        let client: Vec<(&str, &[u8])> = vec![
            ("cookie", b"a=1"),
            ("accept", b"*/*"),
            ("cookie", b"b=2"),
            ("cookie", b"c=3"),
        ];
        let mut buf = Vec::new();
        write_head(
            &mut buf,
            "GET",
            "/api/x",
            client.iter().map(|(k, v)| (*k, *v)),
            &out,
        );
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.matches("cookie:").count(), 1, "{text}");
        assert!(
            text.contains("cookie: a=1; b=2; c=3\r\naccept: */*\r\n"),
            "{text}"
        );
    }
}
