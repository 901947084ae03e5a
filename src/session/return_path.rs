//! The open-redirect guard for `?return=`: same-site relative paths only.

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
}
