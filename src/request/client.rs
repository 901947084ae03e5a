//! Who sent a request: the real client's address behind trusted load balancers, like nginx's
//! `set_real_ip_from` + `real_ip_header` + `real_ip_recursive on`. Forwarding headers are only
//! believed from trusted hops; from anyone else they are ignored, and not passed on.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// The addresses of one request, as the access log and the backend are told.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// The real client (access log, `X-Real-IP`, per-client decisions).
    pub client: Arc<str>,
    /// What delivered the request to the edge: the TCP peer, or the source a trusted load
    /// balancer's PROXY protocol header names.
    pub hop: Arc<str>,
    /// `hop` is trusted: its `X-Forwarded-For` is extended, not replaced.
    pub hop_trusted: bool,
}

impl ClientAddr {
    /// A request whose sender is not known (never from a socket: tests, odd streams).
    pub fn unknown() -> ClientAddr {
        let dash: Arc<str> = Arc::from("-");
        ClientAddr {
            client: dash.clone(),
            hop: dash,
            hop_trusted: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    XForwardedFor,
    XRealIp,
}

/// The trusted proxies and the header that carries the client's address.
#[derive(Debug, Clone)]
pub struct RealIp {
    trusted: Vec<IpNet>,
    header: Header,
}

impl RealIp {
    /// `header` is `X-Forwarded-For` or `X-Real-IP` (checked by the configuration).
    pub fn new(trusted: &[IpNet], header: &str) -> RealIp {
        RealIp {
            trusted: trusted.to_vec(),
            header: if header.eq_ignore_ascii_case("x-real-ip") {
                Header::XRealIp
            } else {
                Header::XForwardedFor
            },
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The connection's view before any request: `hop` sent it.
    pub fn hop(&self, hop: IpAddr) -> ClientAddr {
        let hop = canonical(hop);
        let text: Arc<str> = Arc::from(hop.to_string());
        ClientAddr {
            client: text.clone(),
            hop: text,
            hop_trusted: self.is_trusted(hop),
        }
    }

    /// The client of one request that `conn` delivered, from its header lines.
    pub fn client<'h>(
        &self,
        conn: &ClientAddr,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    ) -> ClientAddr {
        if !conn.hop_trusted {
            return conn.clone();
        }
        let Ok(hop) = conn.hop.parse::<IpAddr>() else {
            return conn.clone();
        };
        let found = match self.header {
            Header::XRealIp => headers
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-real-ip"))
                .find_map(|(_, v)| parse_ip(v)),
            Header::XForwardedFor => {
                let values: Vec<&[u8]> = headers
                    .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
                    .map(|(_, v)| v)
                    .collect();
                Some(self.walk_forwarded_for(hop, &values))
            }
        };
        match found {
            Some(ip) if ip != hop => ClientAddr {
                client: Arc::from(ip.to_string()),
                ..conn.clone()
            },
            _ => conn.clone(),
        }
    }

    /// Right to left through the `X-Forwarded-For` entries (header lines in order, each a
    /// comma-separated list): each trusted address vouches for the one before it; the first
    /// untrusted address, or the leftmost, is the client. A malformed entry ends the walk.
    fn walk_forwarded_for(&self, hop: IpAddr, values: &[&[u8]]) -> IpAddr {
        let mut current = hop;
        let entries = values
            .iter()
            .rev()
            .flat_map(|v| v.split(|&b| b == b',').rev());
        for entry in entries {
            if !self.is_trusted(current) {
                break;
            }
            match parse_ip(entry) {
                Some(ip) => current = ip,
                None => break,
            }
        }
        current
    }
}

/// An address as proxies write it: `192.0.2.7`, `2001:db8::1`, `[2001:db8::1]`, optionally
/// with a port (`192.0.2.7:5000`, `[2001:db8::1]:5000`).
fn parse_ip(v: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.7`, as dual-stack listeners report IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_ip(trusted: &[&str], header: &str) -> RealIp {
        let nets: Vec<IpNet> = trusted
            .iter()
            .map(|t| {
                t.parse()
                    .unwrap_or_else(|_| IpNet::from(t.parse::<IpAddr>().unwrap()))
            })
            .collect();
        RealIp::new(&nets, header)
    }

    fn client_of(r: &RealIp, hop: &str, headers: &[(&str, &str)]) -> (String, bool) {
        let conn = r.hop(hop.parse().unwrap());
        let c = r.client(&conn, headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        (c.client.to_string(), c.hop_trusted)
    }

    #[test]
    fn untrusted_hops_are_never_believed() {
        let r = real_ip(&["10.0.0.0/8"], "X-Forwarded-For");
        assert_eq!(
            client_of(&r, "203.0.113.9", &[("X-Forwarded-For", "1.2.3.4")]),
            ("203.0.113.9".into(), false)
        );
        let none = real_ip(&[], "X-Forwarded-For");
        assert_eq!(
            client_of(&none, "127.0.0.1", &[("X-Forwarded-For", "1.2.3.4")]).0,
            "127.0.0.1"
        );
    }

    #[test]
    fn forwarded_for_is_walked_right_to_left_past_trusted_hops() {
        let r = real_ip(&["10.0.0.0/8", "192.0.2.1/32"], "X-Forwarded-For");
        for (xff, want) in [
            ("198.51.100.7", "198.51.100.7"),
            // The client forged the leftmost entry; the LB appended the real one.
            ("6.6.6.6, 198.51.100.7", "198.51.100.7"),
            ("6.6.6.6, 198.51.100.7, 10.1.2.3", "198.51.100.7"),
            // Only trusted hops: the leftmost is the client.
            ("10.9.9.9, 10.1.2.3", "10.9.9.9"),
            ("198.51.100.7:5000", "198.51.100.7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            // A malformed entry ends the walk at the last trusted hop.
            ("198.51.100.7, garbage", "10.0.0.1"),
            ("", "10.0.0.1"),
        ] {
            assert_eq!(
                client_of(&r, "10.0.0.1", &[("X-Forwarded-For", xff)]).0,
                want,
                "{xff}"
            );
        }
        // Several header lines count as one list, in order.
        assert_eq!(
            client_of(
                &r,
                "10.0.0.1",
                &[
                    ("X-Forwarded-For", "6.6.6.6"),
                    ("x-forwarded-for", "198.51.100.7, 10.2.2.2")
                ]
            )
            .0,
            "198.51.100.7"
        );
        assert_eq!(
            client_of(
                &r,
                "::ffff:10.0.0.1",
                &[("X-Forwarded-For", "198.51.100.7")]
            ),
            ("198.51.100.7".into(), true),
            "IPv4-mapped peers count as IPv4"
        );
    }

    #[test]
    fn x_real_ip_from_a_trusted_hop() {
        let r = real_ip(&["127.0.0.1"], "X-Real-IP");
        assert_eq!(
            client_of(&r, "127.0.0.1", &[("X-Real-IP", "198.51.100.7")]).0,
            "198.51.100.7"
        );
        assert_eq!(
            client_of(&r, "127.0.0.1", &[("X-Real-IP", "nonsense")]).0,
            "127.0.0.1"
        );
        assert_eq!(
            client_of(&r, "127.0.0.1", &[("X-Forwarded-For", "198.51.100.7")]).0,
            "127.0.0.1",
            "the other header is not the configured one"
        );
    }
}
