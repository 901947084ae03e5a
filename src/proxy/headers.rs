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

pub fn apply(req: &mut RequestHeader, f: &Forwarding) -> Result<()> {
    let doomed: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| {
            let name = k.as_str();
            (f.drop_underscore_headers && name.contains('_')) || is_protected(name, f.protected)
        })
        .cloned()
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
    let client_host = req.headers.get(http::header::HOST).cloned();
    if let Some(ip) = f.client_ip {
        let xff = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        req.insert_header("x-forwarded-for", xff)?;
        req.insert_header("x-real-ip", ip)?;
    }
    req.insert_header("x-forwarded-proto", f.proto)?;
    if let Some(host) = client_host {
        req.insert_header("x-forwarded-host", host)?;
    }
    if let Some(h) = f.host_override {
        req.insert_header(http::header::HOST, h)?;
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
