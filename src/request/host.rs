//! The `Host` rule (RFC 9112 §3.2), part of the request parser's checks.

/// Why a request's `Host` lines make it a 400, or `None` when they are fine.
///
/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`, and no request carries two or
/// an invalid one; a server must answer 400 otherwise, as nginx does. Two `Host`s are how a
/// request reaches one site past a check made for another, so the edge never picks one.
/// `count` is the number of `Host` lines, `first` the value of the first.
pub fn host_problem(http_1_1: bool, count: usize, first: Option<&[u8]>) -> Option<&'static str> {
    match (count, first) {
        (0, _) if http_1_1 => Some("an HTTP/1.1 request needs a Host header"),
        (0, _) => None,
        (1, Some(v)) if valid_host(v) => None,
        (1, _) => Some("the Host header is not a valid host[:port]"),
        _ => Some("more than one Host header"),
    }
}

/// `host[:port]` as RFC 3986 has it: a registered name (letters, digits and the unreserved,
/// sub-delimiter and `%` characters) or a bracketed IPv6 literal, then an optional port
/// (digits, at most 65535; `host:` with none is allowed, as RFC 3986 allows it).
pub(crate) fn valid_host(v: &[u8]) -> bool {
    let v = v.trim_ascii();
    let (host_ok, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        (ok, &rest[end + 1..])
    } else {
        let (name, port) = match v.iter().rposition(|&b| b == b':') {
            Some(i) => v.split_at(i),
            None => (v, &v[v.len()..]),
        };
        let ok = !name.is_empty()
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
        (ok, port)
    };
    let port_ok = match port.split_first() {
        None => true,
        // A port is at most 65535 (RFC 9113 8.3.1 calls a larger one malformed).
        Some((b':', digits)) => {
            digits.iter().all(u8::is_ascii_digit)
                && (digits.len() < 5 || (digits.len() == 5 && digits <= &b"65535"[..]))
        }
        Some(_) => false,
    };
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_valid_host_passes() {
        for ok in [
            &b"example.com"[..],
            b"example.com:8080",
            b"EXAMPLE.com:",
            b"127.0.0.1:80",
            b"[::1]",
            b"[::1]:8080",
            b"[2001:db8::7]:443",
            b"a.example:65535",
            b"my_host-1.internal",
            b" padded.example ",
        ] {
            assert_eq!(host_problem(true, 1, Some(ok)), None, "{ok:?}");
        }
    }

    #[test]
    fn missing_duplicate_and_invalid_hosts_are_refused() {
        assert!(host_problem(true, 0, None).is_some());
        assert_eq!(host_problem(false, 0, None), None, "HTTP/1.0 needs no Host");
        assert!(host_problem(true, 2, Some(b"a")).is_some());
        assert!(host_problem(false, 2, Some(b"a")).is_some());
        for bad in [
            &b""[..],
            b"a b",
            b"a/b",
            b"a\\b",
            b"a@b",
            b"host:80x",
            b"host:80:81",
            b"host:65536",
            b"host:99999",
            b"host:000080",
            b"[::1]:123456",
            b":80",
            b"[::1",
            b"[]",
            b"[::1]x",
            b"[zz::1]",
            b"a\x7f",
            b"caf\xc3\xa9.example",
        ] {
            assert!(host_problem(true, 1, Some(bad)).is_some(), "{bad:?}");
            assert!(host_problem(false, 1, Some(bad)).is_some(), "{bad:?}");
        }
    }
}
