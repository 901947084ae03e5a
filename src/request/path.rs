//! The request path as every later step sees it: normalised once, before routing, so the
//! route chosen and the path the backend receives are the same thing.
//!
//! RFC 3986 §6.2.2: percent-encoded unreserved characters are decoded (`%61pi` is `api`), dot
//! segments are removed (§5.2.4) and repeated slashes merged (nginx's `merge_slashes on`).
//! Anything that a backend could read as a different path is refused instead of guessed:
//! an encoded `/`, `\` or NUL (a backend that decodes before it splits would see other
//! segments), `..` above the root, control characters, a malformed escape, and `..;`/`.;`
//! segments (Tomcat and Spring read `..;` as `..`).

use std::borrow::Cow;

/// Why a path cannot be routed; always a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters RFC 3986 allows in a path as they are (pchar and `/`), besides `%`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@/".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Normalise the path part of an origin-form target (no query). Nearly every path is in
/// normal form already (no `%`, no dot segment, no `//`): it is returned as it is.
pub fn normalise(raw: &str) -> Result<Cow<'_, str>, BadPath> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadPath("the request target must start with /"));
    }
    let plain = bytes.iter().all(|&b| b != b'%' && is_path_char(b))
        && !bytes.windows(2).any(|w| w == b"//" || w == b"/.");
    if plain {
        return Ok(Cow::Borrowed(raw));
    }
    normalise_slow(bytes).map(Cow::Owned)
}

fn normalise_slow(bytes: &[u8]) -> Result<String, BadPath> {
    let decoded = decode(bytes)?;
    merge_segments(&decoded)
}

/// Pass 1: decode unreserved escapes, check everything else.
fn decode(bytes: &[u8]) -> Result<String, BadPath> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(BadPath("malformed percent-encoding in the path"));
            };
            let c = hi * 16 + lo;
            match c {
                b'/' | b'\\' => return Err(BadPath("encoded slash or backslash in the path")),
                0..=0x1f | 0x7f => return Err(BadPath("encoded control character in the path")),
                c if is_unreserved(c) => decoded.push(c),
                _ => {
                    // Kept encoded, in one spelling (upper-case hex, RFC 3986 §6.2.2.1).
                    decoded.push(b'%');
                    decoded.push(bytes[i + 1].to_ascii_uppercase());
                    decoded.push(bytes[i + 2].to_ascii_uppercase());
                }
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            return Err(BadPath("backslash in the path"));
        }
        if !is_path_char(b) && b < 0x80 {
            return Err(BadPath("character not allowed in a path"));
        }
        // Raw UTF-8 bytes (browsers encode them, some clients do not): kept as sent; the
        // static file lookup checks they are valid UTF-8.
        decoded.push(b);
        i += 1;
    }
    // Only ASCII was decoded, so the bytes are as valid UTF-8 as the input was.
    String::from_utf8(decoded).map_err(|_| BadPath("the path is not UTF-8"))
}

/// Pass 2: dot segments removed and slashes merged, refusing `..` above the root and dot
/// segments with parameters.
fn merge_segments(decoded: &str) -> Result<String, BadPath> {
    let trailing_slash = decoded.len() > 1 && decoded.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    let mut ends_in_dir = trailing_slash;
    for seg in decoded.split('/') {
        // `..;x` and `.;x` are dot segments to servlet containers: never let them through,
        // neither with `;` nor with `%3B` (which a backend may decode before it strips
        // parameters).
        let params_at = [seg.find(';'), seg.find("%3B")].into_iter().flatten().min();
        if let Some(at) = params_at {
            if matches!(&seg[..at], "." | "..") {
                return Err(BadPath("dot segment with parameters in the path"));
            }
        }
        match seg {
            "" => {}
            "." => ends_in_dir = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(BadPath("the path climbs above the root"));
                }
                ends_in_dir = true;
            }
            s => {
                segments.push(s);
                ends_in_dir = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || ((trailing_slash || ends_in_dir) && !segments.is_empty()) {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_forms() {
        for (raw, want) in [
            ("/", "/"),
            ("/index.html", "/index.html"),
            ("/api/", "/api/"),
            ("/api", "/api"),
            ("//api//x", "/api/x"),
            ("/api/x/../y", "/api/y"),
            ("/api/x/./y", "/api/x/y"),
            ("/api/x/..", "/api/"),
            ("/api/x/.", "/api/x/"),
            ("/%61pi/x", "/api/x"),
            ("/api/%7euser", "/api/~user"),
            ("/api/a%20b", "/api/a%20b"),
            ("/api/a%3fb", "/api/a%3Fb"),
            ("/api/%E4%B8%AD", "/api/%E4%B8%AD"),
            ("/api/../admin/secret", "/admin/secret"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/.%2E/admin", "/admin"),
            ("/a;b/c", "/a;b/c"),
            ("/api/x;jsessionid=1", "/api/x;jsessionid=1"),
            ("/.well-known/x", "/.well-known/x"),
        ] {
            assert_eq!(normalise(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "",
            "*",
            "api",
            "http://x/",
            "/..",
            "/../etc/passwd",
            "/api/../../x",
            "/%2e%2e/x",
            "/api/..%2fadmin",
            "/api/..%2Fadmin",
            "/api%5c..%5cadmin",
            "/api\\..\\admin",
            "/api/%00",
            "/api/%0a",
            "/api/%zz",
            "/api/%2",
            "/api/%",
            "/api/..;/admin",
            "/api/.;x/y",
            "/api/%2e%2e;/admin",
            // Found by fuzzing: an encoded `;` is a `;` to a backend that decodes first.
            "/.%3b",
            "/a/..%3b/b",
            "/a/..%3B/b",
            "/a/.%2E%3bx/b",
            "/a b",
            "/a\"b",
            "/a<b",
            "/a#b",
            "/a\x7f",
        ] {
            assert!(normalise(raw).is_err(), "{raw:?} should be refused");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for raw in ["/api/x/../y/", "/%61/./b//c", "/a%3fb/%7e", "/x/..", "/"] {
            let once = normalise(raw).unwrap();
            assert_eq!(normalise(&once).unwrap(), once.clone(), "{raw}");
        }
    }
}
