//! The open-redirect guards: `?return=` takes same-site relative paths only; the login relay's
//! `redirect_uri` takes absolute URLs on exactly the allowlisted origins.

use percent_encoding::percent_decode;

const MAX_RETURN_LEN: usize = 2048;
/// Rounds of percent-decoding inspected (`%25` nesting deeper than this is refused).
const DECODE_ROUNDS: usize = 4;

/// Accepts `raw` as a redirect target only if it is a path on this site: it must start with a
/// single `/`, and neither it nor any of its percent-decoded forms (up to 4 levels) may start with
/// `//` or `/\`, contain a backslash, a control character (browsers drop tab/CR/LF, turning
/// `/\t/evil` into `//evil`) or a `.`/`..` path segment. Schemes (`https:`, `javascript:`) never
/// start with `/` and are refused with everything else not starting with `/`.
///
/// The result is safe to put in a `Location` header: spaces, quotes, `<>` and non-ASCII
/// characters are percent-encoded; existing `%xx` escapes are kept.
pub fn safe_return_path(raw: &str) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_RETURN_LEN || !raw.starts_with('/') {
        return None;
    }
    let mut form: Vec<u8> = raw.as_bytes().to_vec();
    let mut stable = false;
    for _ in 0..DECODE_ROUNDS {
        if !form_is_safe(&form) {
            return None;
        }
        let decoded: Vec<u8> = percent_decode(&form).collect();
        if decoded == form {
            stable = true;
            break;
        }
        form = decoded;
    }
    if !stable && !form_is_safe(&form) {
        return None;
    }
    if !stable && percent_decode(&form).collect::<Vec<u8>>() != form {
        return None;
    }

    let mut out = String::with_capacity(raw.len());
    for &b in raw.as_bytes() {
        match b {
            b' ' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^' | 0x80..=0xff => {
                out.push_str(&format!("%{b:02X}"))
            }
            _ => out.push(b as char),
        }
    }
    Some(out)
}

/// An exact web origin, spelled one way: lower-case scheme (`http` or `https`) and host, and the
/// port only when it is not the scheme's default. Two spellings of one origin compare equal;
/// anything else does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin(String);

impl Origin {
    /// `scheme://host[:port]`, with at most a `/` after it (a configured origin).
    pub fn parse(raw: &str) -> Option<Origin> {
        let (origin, rest) = split_origin(raw)?;
        (rest.is_empty() || rest == "/").then_some(origin)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Accepts `raw` as a login relay's `redirect_uri` only if its origin is exactly one of `allowed`
/// and the rest is a [`safe_return_path`] without a fragment. Gives the origin it matched and
/// the URL to send the browser to, rebuilt from the normalised origin and the checked path.
pub fn allowed_redirect(raw: &str, allowed: &[Origin]) -> Option<(Origin, String)> {
    let (origin, rest) = split_origin(raw)?;
    if !allowed.contains(&origin) || rest.contains('#') {
        return None;
    }
    let path = match rest {
        "" => "/".to_string(),
        r if r.starts_with('?') => format!("/{r}"),
        r => r.to_string(),
    };
    let path = safe_return_path(&path)?;
    let url = format!("{origin}{path}");
    Some((origin, url))
}

/// An absolute http(s) URL → its origin and what follows the authority (may be empty).
///
/// Strict on purpose, where browsers are lenient: only visible ASCII (browsers drop tabs and
/// newlines, and a non-ASCII name could be a homograph: IDNs must come as punycode), no
/// backslash (read as `/`), and a host of letters, digits, `.` and `-` only, so userinfo (`@`),
/// percent-encoded dots or slashes and IPv6 literals are refused rather than interpreted.
fn split_origin(raw: &str) -> Option<(Origin, &str)> {
    if raw.len() > MAX_RETURN_LEN
        || raw
            .bytes()
            .any(|b| !(0x21..0x7f).contains(&b) || b == b'\\')
    {
        return None;
    }
    let (scheme, rest) = raw.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let port = match port {
        None => default_port,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|&n| n != 0)?
        }
        Some(_) => return None,
    };
    let host = host.to_ascii_lowercase();
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && host.split('.').all(|label| !label.is_empty());
    if !host_ok {
        return None;
    }
    let origin = if port == default_port {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    };
    Some((Origin(origin), tail))
}

fn form_is_safe(p: &[u8]) -> bool {
    if p.first() != Some(&b'/') {
        return false;
    }
    if matches!(p.get(1), Some(b'/') | Some(b'\\')) {
        return false;
    }
    if p.iter().any(|&b| b < 0x20 || b == 0x7f || b == b'\\') {
        return false;
    }
    let path_end = p
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(p.len());
    !p[..path_end]
        .split(|&b| b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted() {
        for (input, out) in [
            ("/", "/"),
            ("/x", "/x"),
            ("/pages/a?b=1", "/pages/a?b=1"),
            ("/#/pages/login/login", "/#/pages/login/login"),
            ("/pages/a?next=//evil", "/pages/a?next=//evil"),
            ("/a%20b", "/a%20b"),
            ("/a b", "/a%20b"),
            ("/页面?x=\"1\"", "/%E9%A1%B5%E9%9D%A2?x=%221%22"),
            ("/https://evil.com", "/https://evil.com"),
            ("/a/.well-known/x", "/a/.well-known/x"),
            ("/a?x=..", "/a?x=.."),
        ] {
            assert_eq!(safe_return_path(input).as_deref(), Some(out), "{input}");
        }
    }

    #[test]
    fn refused() {
        let long = format!("/{}", "a".repeat(3000));
        let refused = [
            "",
            "x",
            "pages/a",
            " /x",
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "http:/evil.com",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "/\t/evil.com",
            "/\r\n/evil.com",
            "/x\nSet-Cookie: a=b",
            "/x\0",
            "/x\x7f",
            "/a\\b",
            "/%2f%2fevil.com",
            "/%2F%2Fevil.com",
            "/%2fevil.com",
            "%2f%2fevil.com",
            "/%5cevil.com",
            "/%5Cevil.com",
            "/%252f%252fevil.com",
            "/%25252f%25252fevil.com",
            "/%2525252f%2525252fevil.com",
            "/%09/evil.com",
            "/%0d%0aSet-Cookie:x",
            "/%00",
            "/../etc/passwd",
            "/a/./b",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            long.as_str(),
        ];
        for r in refused {
            assert_eq!(safe_return_path(r), None, "{r:?} must be refused");
        }
    }

    fn allowlist() -> Vec<Origin> {
        ["https://shop.example.com", "http://127.0.0.1:9000/"]
            .iter()
            .map(|o| Origin::parse(o).unwrap())
            .collect()
    }

    #[test]
    fn origins_have_one_spelling() {
        for (input, out) in [
            ("https://shop.example.com", "https://shop.example.com"),
            ("HTTPS://Shop.Example.COM/", "https://shop.example.com"),
            ("https://shop.example.com:443", "https://shop.example.com"),
            ("http://shop.example.com:80/", "http://shop.example.com"),
            (
                "https://shop.example.com:8443",
                "https://shop.example.com:8443",
            ),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("https://xn--fiq228c.example", "https://xn--fiq228c.example"),
        ] {
            assert_eq!(
                Origin::parse(input).map(|o| o.0).as_deref(),
                Some(out),
                "{input}"
            );
        }
        for bad in [
            "https://shop.example.com/path",
            "https://shop.example.com?x",
            "shop.example.com",
            "ftp://shop.example.com",
            "https://",
            "https://[::1]:8443",
            "https://中文.example",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn relay_redirects_accepted() {
        let allowed = allowlist();
        for (input, out) in [
            (
                "https://shop.example.com/pages/a?x=1",
                "https://shop.example.com/pages/a?x=1",
            ),
            ("https://SHOP.Example.com/p", "https://shop.example.com/p"),
            (
                "https://shop.example.com:443/p",
                "https://shop.example.com/p",
            ),
            ("hTTps://shop.example.com", "https://shop.example.com/"),
            (
                "https://shop.example.com?from=share",
                "https://shop.example.com/?from=share",
            ),
            (
                "http://127.0.0.1:9000/_wxedge/callback",
                "http://127.0.0.1:9000/_wxedge/callback",
            ),
            (
                "https://shop.example.com/a?next=//evil.com",
                "https://shop.example.com/a?next=//evil.com",
            ),
        ] {
            let got = allowed_redirect(input, &allowed);
            assert_eq!(got.as_ref().map(|(_, u)| u.as_str()), Some(out), "{input}");
        }
        let (origin, _) = allowed_redirect("https://shop.example.com/x", &allowed).unwrap();
        assert_eq!(origin, allowed[0]);
    }

    #[test]
    fn relay_redirects_refused() {
        let allowed = allowlist();
        let long = format!("https://shop.example.com/{}", "a".repeat(3000));
        let refused = [
            "",
            // Other origins: host, scheme and port are all compared exactly.
            "https://evil.com/",
            "https://shop.example.com.evil.com/",
            "https://evilshop.example.com/",
            "https://sub.shop.example.com/",
            "https://example.com/",
            "http://shop.example.com/",
            "https://shop.example.com:8443/",
            "http://127.0.0.1/",
            "http://127.0.0.1:9001/",
            "http://127.0.0.1:09000x/",
            "http://localhost:9000/",
            "https://shop.example.com:99999/",
            "https://shop.example.com:-1/",
            "https://shop.example.com:/",
            "https://shop.example.com./",
            "https://shop..example.com/",
            // Userinfo.
            "https://shop.example.com@evil.com/",
            "https://evil.com@shop.example.com/",
            "https://user:pw@shop.example.com/",
            "https://shop.example.com:443@evil.com/",
            // Backslashes.
            "https://shop.example.com\\@evil.com/",
            "https:\\\\shop.example.com/",
            "https://evil.com\\shop.example.com/",
            "https://shop.example.com/\\evil.com",
            // Encoded slashes, dots, at-signs.
            "https://shop.example.com%2f@evil.com/",
            "https://shop.example.com%2F%2Fevil.com/",
            "https://shop%2eexample.com/",
            "https://shop.example.com%40evil.com/",
            "https://shop.example.com/%2f%2fevil.com",
            "https://shop.example.com/%252f%252fevil.com",
            "https://shop.example.com/%5cevil.com",
            "https://shop.example.com/a/%2e%2e/b",
            "https://shop.example.com/a/../b",
            // Not absolute http(s), or an authority that is not one.
            "//shop.example.com/",
            "///evil.com",
            "/pages/a",
            "shop.example.com/",
            "https:/shop.example.com/",
            "https:///shop.example.com/",
            "https://shop.example.com//evil.com",
            "javascript:alert(1)",
            "javascript://shop.example.com/%0aalert(1)",
            "JavaScript://shop.example.com/",
            "data:text/html,x",
            "ftp://shop.example.com/",
            "https://[::1]/",
            // IDN and look-alikes: non-ASCII is refused, mixed case is normalised above.
            "https://shop.exаmple.com/",
            "https://ｓhop.example.com/",
            "https://shop.example.com/页面",
            "https://xn--shop-9na.example.com/",
            // Whitespace and control characters.
            " https://shop.example.com/",
            "https://shop.example.com/ ",
            "https://shop.example.com/a b",
            "https://shop.example.com/\t",
            "https://sh\top.example.com/",
            "https://shop.example.com/\r\nSet-Cookie:x=1",
            "https://shop.example.com/\0",
            "https://shop.example.com/%0d%0aSet-Cookie:x",
            // Fragments.
            "https://shop.example.com/#/pages/a",
            "https://shop.example.com#@evil.com",
            "https://evil.com#shop.example.com",
            "https://evil.com?shop.example.com",
            long.as_str(),
        ];
        for r in refused {
            assert_eq!(allowed_redirect(r, &allowed), None, "{r:?} must be refused");
        }
    }
}
