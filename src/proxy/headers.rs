//! The request as the backend sees it: forwarding headers like nginx's usual
//! `proxy_set_header` lines, and no client-supplied copy of a header the edge vouches for.

use http::header::HeaderName;
use pingora::http::RequestHeader;
use pingora::Result;

/// `x_wx_openid`, `X-WX-OpenID` and `x-wx-openid` are the same name to many backends
/// (CGI-style frameworks turn `-` into `_`), so compare in one spelling.
pub fn canonical(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

pub struct Forwarding<'a> {
    pub client_ip: Option<&'a str>,
    pub proto: &'a str,
    /// Upstream `Host` override; None passes the client's through.
    pub host_override: Option<&'a str>,
    pub drop_underscore_headers: bool,
    /// Canonical names (see [`canonical`]) the edge alone may set.
    pub protected: &'a [String],
}

/// `name` (already lower case, as `http` stores it) equals a protected name with `_` read as `-`;
/// compared byte by byte, since this runs for every header of every proxied request.
fn is_protected(name: &str, protected: &[String]) -> bool {
    protected.iter().any(|p| {
        p.len() == name.len()
            && p.bytes().zip(name.bytes()).all(|(a, b)| {
                a == if b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                }
            })
    })
}

/// Whether a comma-separated header value (`Connection: keep-alive, Upgrade`) lists `token`.
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Writes `HTTP/1.1 <status> <reason>\r\n`; the standard reason when `reason` is empty.
pub fn push_status_line(out: &mut Vec<u8>, status: u16, reason: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    let standard = || http::StatusCode::from_u16(status).ok()?.canonical_reason();
    out.extend_from_slice(
        reason
            .filter(|r| !r.is_empty())
            .or_else(standard)
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, never forwarded.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A client header the backend must not get: a spoofable identity header, or any name with
/// `_` when those are dropped (nginx's `underscores_in_headers off`).
pub fn is_refused(name: &str, f: &Forwarding) -> bool {
    (f.drop_underscore_headers && name.contains('_')) || is_protected(name, f.protected)
}

/// A header [`forwarding_headers`] sets, so the client's copy is replaced, not passed on.
pub fn is_set_by_edge(name: &str, f: &Forwarding) -> bool {
    let n = |s: &str| name.eq_ignore_ascii_case(s);
    n("x-forwarded-proto")
        || n("x-forwarded-host")
        || (f.client_ip.is_some() && (n("x-forwarded-for") || n("x-real-ip")))
        || (f.host_override.is_some() && n("host"))
}

/// The forwarding headers, like nginx's usual `proxy_set_header` lines: each as its name and
/// the pieces of its value. `prev_xff` and `client_host` are the client's own values.
pub fn forwarding_headers<'a>(
    f: &Forwarding<'a>,
    prev_xff: Option<&'a [u8]>,
    client_host: Option<&'a [u8]>,
    mut emit: impl FnMut(&'static str, &[&[u8]]),
) {
    if let Some(ip) = f.client_ip {
        match prev_xff {
            Some(prev) if !prev.trim_ascii().is_empty() => {
                emit("x-forwarded-for", &[prev, b", ", ip.as_bytes()])
            }
            _ => emit("x-forwarded-for", &[ip.as_bytes()]),
        }
        emit("x-real-ip", &[ip.as_bytes()]);
    }
    emit("x-forwarded-proto", &[f.proto.as_bytes()]);
    if let Some(host) = client_host {
        emit("x-forwarded-host", &[host]);
    }
    if let Some(h) = f.host_override {
        emit("host", &[h.as_bytes()]);
    }
}

/// The same policy on Pingora's upstream request.
pub fn apply(req: &mut RequestHeader, f: &Forwarding) -> Result<()> {
    let doomed: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| is_refused(k.as_str(), f))
        .cloned()
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
    let prev_xff = req
        .headers
        .get("x-forwarded-for")
        .map(|v| v.as_bytes().to_vec());
    let client_host = req
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes().to_vec());
    let mut set: Vec<(&'static str, Vec<u8>)> = Vec::with_capacity(5);
    forwarding_headers(
        f,
        prev_xff.as_deref(),
        client_host.as_deref(),
        |name, parts| set.push((name, parts.concat())),
    );
    for (name, value) in set {
        let value = http::HeaderValue::from_bytes(&value).map_err(|_| {
            pingora::Error::explain(
                pingora::ErrorType::InvalidHTTPHeader,
                "forwarding header value",
            )
        })?;
        req.insert_header(name, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_and_spoof_stripping() {
        let mut req = RequestHeader::build("GET", b"/api/x", None).unwrap();
        req.insert_header("host", "h5.example.com").unwrap();
        req.insert_header("x-forwarded-for", "10.0.0.1").unwrap();
        req.insert_header("X-WX-OpenID", "forged").unwrap();
        req.append_header("x_wx_openid", "forged2").unwrap();
        req.insert_header("x_custom", "1").unwrap();
        req.insert_header("x-keep", "1").unwrap();
        let protected = vec![canonical("X-WX-OpenID")];
        let f = Forwarding {
            client_ip: Some("192.0.2.7"),
            proto: "http",
            host_override: None,
            drop_underscore_headers: false,
            protected: &protected,
        };
        apply(&mut req, &f).unwrap();
        let h = &req.headers;
        assert!(h.get("x-wx-openid").is_none() && h.get("x_wx_openid").is_none());
        assert_eq!(
            h.get("x_custom").unwrap(),
            "1",
            "underscores kept when allowed"
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 192.0.2.7");
        assert_eq!(h.get("x-real-ip").unwrap(), "192.0.2.7");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "h5.example.com");
        assert_eq!(h.get("host").unwrap(), "h5.example.com");
        assert_eq!(h.get("x-keep").unwrap(), "1");

        let f = Forwarding {
            drop_underscore_headers: true,
            host_override: Some("backend.local"),
            ..f
        };
        apply(&mut req, &f).unwrap();
        assert!(req.headers.get("x_custom").is_none());
        assert_eq!(req.headers.get("host").unwrap(), "backend.local");
    }
}
