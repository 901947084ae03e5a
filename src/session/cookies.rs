//! Reading the request's `Cookie` header: finding a cookie by name, and the header without
//! the edge's own cookies, for the backend.
//!
//! A request's `Cookie` header is only `name=value` pairs separated by `;` (RFC 6265 §4.2.1),
//! with none of `Set-Cookie`'s attributes, so the pairs are split here in one pass over the
//! bytes, the way the `cookie` crate splits them (`split_parse`: pieces trimmed, names and
//! values trimmed, a piece without `=` or with an empty name is not a cookie) without making
//! a parsed `Cookie` of every pair: on a session-checked API call this was ~15 % of the
//! edge's own instructions. Sealing and opening values stays with the `cookie` crate.

use std::borrow::Cow;

/// One piece of a `Cookie` header value: the piece as sent (trimmed), and its name and value
/// when it is a cookie.
struct Piece<'a> {
    raw: &'a str,
    pair: Option<(&'a str, &'a str)>,
}

fn pieces(header: &str) -> impl Iterator<Item = Piece<'_>> {
    header
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|raw| Piece {
            raw,
            pair: raw
                .split_once('=')
                .map(|(n, v)| (n.trim(), v.trim()))
                .filter(|(n, _)| !n.is_empty()),
        })
}

/// A header value as text: borrowed when it is UTF-8 (always, from browsers); otherwise with
/// the invalid bytes replaced, so they can never form a name of ours.
fn text(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(value),
    }
}

/// Values of the cookies called `name` (raw: not decoded), in the order sent, across all the
/// request's `Cookie` header values; non-UTF-8 header values are skipped.
pub fn values<'a, S: AsRef<[u8]>>(
    headers: &'a [S],
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter_map(|h| std::str::from_utf8(h.as_ref()).ok())
        .flat_map(pieces)
        .filter_map(move |p| p.pair.filter(|(n, _)| *n == name).map(|(_, v)| v))
}

/// Whether one of the `Cookie` header values holds a cookie called `name`.
pub fn has<S: AsRef<[u8]>>(headers: &[S], name: &str) -> bool {
    headers
        .iter()
        .any(|h| pieces(&text(h.as_ref())).any(|p| p.pair.is_some_and(|(n, _)| n == name)))
}

/// All `Cookie` header values joined into one (`; `), without the cookies whose names are
/// `ours`; pieces are kept byte for byte as sent (trimmed). `None` when nothing else remains
/// (then the header is dropped).
pub fn without<S: AsRef<[u8]>>(headers: &[S], ours: impl Fn(&str) -> bool) -> Option<String> {
    let mut kept = String::new();
    for h in headers {
        for piece in pieces(&text(h.as_ref())) {
            if piece.pair.is_some_and(|(n, _)| ours(n)) {
                continue;
            }
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(piece.raw);
        }
    }
    (!kept.is_empty()).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &[&str] = &["wxedge_session", "wxedge_login"];

    fn ours(name: &str) -> bool {
        OURS.contains(&name)
    }

    fn strip(h: &str) -> Option<String> {
        without(&[h], ours)
    }

    #[test]
    fn without_removes_ours_only_and_keeps_the_rest_as_sent() {
        assert_eq!(
            strip("a=1; wxedge_session=XYZ; b=2"),
            Some("a=1; b=2".into())
        );
        assert_eq!(
            strip(" wxedge_login=q ;wxedge_session=XYZ;c=3 "),
            Some("c=3".into())
        );
        assert_eq!(strip("wxedge_session=XYZ; wxedge_login=1"), None);
        assert_eq!(strip(""), None);
        assert_eq!(strip(" ; ;"), None);
        // Similar names are not ours; spaces around the name are not part of it.
        assert_eq!(
            strip("wxedge_session2=1; xwxedge_session=2; wxedge_session =3"),
            Some("wxedge_session2=1; xwxedge_session=2".into())
        );
        // A value containing '=' is kept whole; a piece that is not a cookie is kept as sent.
        assert_eq!(strip("t=a=b; junk; =x"), Some("t=a=b; junk; =x".into()));
        // HTTP/2 sends each cookie as its own field: one header for the backend.
        assert_eq!(
            without(&["a=1", "wxedge_session=S", "b=2"], ours),
            Some("a=1; b=2".into())
        );
        // Invalid UTF-8 is replaced, never dropped silently and never matched as ours.
        assert_eq!(
            without(&[&b"x=\xff; wxedge_session=S"[..]], ours),
            Some("x=\u{fffd}".into())
        );
    }

    #[test]
    fn values_and_has_find_cookies_by_exact_name() {
        let headers = ["a=1; s=\"q\"; s = two ", "s=3", "junk; =4"];
        assert_eq!(
            values(&headers, "s").collect::<Vec<_>>(),
            ["\"q\"", "two", "3"]
        );
        assert_eq!(values(&headers, "a").collect::<Vec<_>>(), ["1"]);
        assert_eq!(values(&headers, "").count(), 0);
        assert!(has(&headers, "s") && has(&headers, "a"));
        assert!(!has(&headers, "junk") && !has(&headers, "x"));
        // Matches what the `cookie` crate's parser sees in the same header.
        let crate_view: Vec<(String, String)> = cookie::Cookie::split_parse(headers[0])
            .flatten()
            .map(|c| {
                (
                    c.name().to_string(),
                    c.value_raw().unwrap_or("").to_string(),
                )
            })
            .collect();
        let ours: Vec<(String, String)> = pieces(headers[0])
            .filter_map(|p| p.pair)
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(ours, crate_view);
    }
}
