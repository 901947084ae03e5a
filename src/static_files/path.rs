//! Request path → a normalized path inside the dist root, or a refusal.
//!
//! Decoding happens exactly once, here, before `.`/`..` are resolved, so no encoded form
//! (`%2e%2e`, `%2f`, overlong UTF-8, backslashes) can reach the file system.

use percent_encoding::percent_decode;

#[derive(Debug, PartialEq, Eq)]
pub enum PathRefusal {
    /// Malformed: bad `%`, control characters, invalid UTF-8, backslash, `..` above the root.
    BadRequest(&'static str),
    /// A dotfile or dot-directory: answered as if it did not exist.
    Hidden,
}

/// A clean absolute path: `/` or `/a/b` (no trailing slash), plus whether the request had one.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct CleanPath {
    pub path: String,
    pub trailing_slash: bool,
}

/// Normalize the path part of a request target (no query).
pub fn normalize(raw: &str) -> Result<CleanPath, PathRefusal> {
    if !raw.starts_with('/') {
        return Err(PathRefusal::BadRequest("path must start with /"));
    }
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b <= 0x20 || b == 0x7f {
            return Err(PathRefusal::BadRequest(
                "control character or space in path",
            ));
        }
        if b == b'%' {
            let ok = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(PathRefusal::BadRequest("bad percent-encoding"));
            }
        }
    }
    let decoded: Vec<u8> = percent_decode(bytes).collect();
    // from_utf8 refuses overlong forms such as %c0%ae ('.') and %c0%af ('/').
    let decoded =
        std::str::from_utf8(&decoded).map_err(|_| PathRefusal::BadRequest("path is not UTF-8"))?;
    if decoded.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathRefusal::BadRequest(
            "control character or backslash in path",
        ));
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathRefusal::BadRequest("path escapes the root"));
                }
            }
            s => segments.push(s),
        }
    }
    // `.well-known` is a public convention (app links, ACME); every other dot name stays hidden.
    if segments
        .iter()
        .any(|s| s.starts_with('.') && *s != ".well-known")
    {
        return Err(PathRefusal::Hidden);
    }
    let trailing_slash = decoded.ends_with('/') && !segments.is_empty();
    let mut path = String::with_capacity(decoded.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(CleanPath {
        path,
        trailing_slash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize(raw).unwrap().path
    }

    #[test]
    fn plain_paths() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/index.html"), "/index.html");
        assert_eq!(ok("//assets///a.js"), "/assets/a.js");
        assert_eq!(ok("/a/./b/../c"), "/a/c");
        assert_eq!(ok("/%E4%B8%AD.txt"), "/中.txt");
        assert!(normalize("/static/").unwrap().trailing_slash);
        assert!(!normalize("/").unwrap().trailing_slash);
    }

    #[test]
    fn escapes_are_refused() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc",
            "/a/..%2f..%2fetc",
            "/a%5c..%5c..%5cetc",
            "/a\\b",
            "/%00",
            "/a%0a",
            "/%c0%ae%c0%ae/",
            "/%c0%af",
            "/%zz",
            "/%2",
            "/a b",
            "relative",
        ] {
            assert!(
                matches!(normalize(raw), Err(PathRefusal::BadRequest(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn dotfiles_are_hidden() {
        for raw in ["/.env", "/.git/config", "/a/%2egit/x", "/.htaccess"] {
            assert_eq!(normalize(raw), Err(PathRefusal::Hidden), "{raw}");
        }
        assert_eq!(
            ok("/.well-known/assetlinks.json"),
            "/.well-known/assetlinks.json"
        );
    }
}
