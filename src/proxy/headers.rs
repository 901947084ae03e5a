//! The request as the backend sees it: forwarding headers like nginx's usual
//! `proxy_set_header` lines, and no client-supplied copy of a header the edge vouches for.

use crate::request::client::ClientAddr;

/// `x_wx_openid`, `X-WX-OpenID` and `x-wx-openid` are the same name to many backends
/// (CGI-style frameworks turn `-` into `_`), so compare in one spelling.
pub fn canonical(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

pub struct Forwarding<'a> {
    /// Who sent the request (`None`: not known, e.g. not a TCP peer).
    pub client: Option<&'a ClientAddr>,
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

/// Whether `name` is listed in one of the message's `Connection` header values (such names
/// are hop-by-hop too, RFC 9110 §7.6.1).
pub fn named_in_connection<'v>(
    name: &str,
    connection_values: impl Iterator<Item = &'v [u8]>,
) -> bool {
    connection_values
        .into_iter()
        .any(|v| crate::request::has_token(v, name))
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
        || (f.client.is_some() && (n("x-forwarded-for") || n("x-real-ip")))
        || (f.host_override.is_some() && n("host"))
}

/// The forwarding headers, like nginx's usual `proxy_set_header` lines: each as its name and
/// the pieces of its value. `prev_xff` and `client_host` are the client's own values.
/// `X-Forwarded-For` is extended only when a trusted proxy delivered the request; from anyone
/// else the chain starts at the edge's peer (a client's own chain is not passed on).
pub fn forwarding_headers<'a>(
    f: &Forwarding<'a>,
    prev_xff: Option<&'a [u8]>,
    client_host: Option<&'a [u8]>,
    mut emit: impl FnMut(&'static str, &[&[u8]]),
) {
    if let Some(c) = f.client {
        match prev_xff {
            Some(prev) if c.hop_trusted && !prev.trim_ascii().is_empty() => {
                emit("x-forwarded-for", &[prev, b", ", c.hop.as_bytes()])
            }
            _ => emit("x-forwarded-for", &[c.hop.as_bytes()]),
        }
        emit("x-real-ip", &[c.client.as_bytes()]);
    }
    emit("x-forwarded-proto", &[f.proto.as_bytes()]);
    if let Some(host) = client_host {
        emit("x-forwarded-host", &[host]);
    }
    if let Some(h) = f.host_override {
        emit("host", &[h.as_bytes()]);
    }
}
