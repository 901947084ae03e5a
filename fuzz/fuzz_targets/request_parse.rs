//! `wxedge::request::parse`: the one HTTP/1.x request head parser and validator.
//!
//! Raw bytes in. Whatever it accepts must be a head that can be routed and framed one way only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxedge::request::{self, Framing, MAX_HEADERS};

const MAX_HEAD: usize = 32 * 1024;

/// The header lines of an accepted head, read again from the raw bytes (not from httparse's
/// view), so a line the parser skipped or mis-split is still counted.
fn raw_header_lines(head: &[u8]) -> Vec<&[u8]> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        // Empty lines before the request line are allowed (RFC 9112 §2.2).
        .skip_while(|l| l.is_empty());
    lines.next(); // the request line
    lines.take_while(|l| !l.is_empty()).collect()
}

fn name_is<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    line[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(name.as_bytes())
        .then(|| line[colon + 1..].trim_ascii())
}

fn plain_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fuzz_target!(|buf: &[u8]| {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = request::parse(buf, &mut hs, MAX_HEAD);
    let (req, n) = match parsed {
        Ok(Some(ok)) => ok,
        Ok(None) => {
            assert!(
                buf.len() < MAX_HEAD,
                "incomplete but already over the limit"
            );
            return;
        }
        Err(refusal) => {
            assert!(
                matches!(refusal.status, 400 | 414 | 431 | 501 | 505),
                "unexpected refusal {refusal:?}"
            );
            return;
        }
    };
    assert!(
        n <= buf.len(),
        "head length {n} past the buffer {}",
        buf.len()
    );
    assert!(n <= MAX_HEAD);

    // The path: routed and forwarded as is, so it must be in normal form.
    let path: &str = &req.path;
    assert!(path.starts_with('/'), "path {path:?}");
    let again = request::path::normalise(path).expect("a normalised path normalises");
    assert_eq!(&*again, path, "normalise is not idempotent");
    assert!(
        !path.split('/').any(|s| s == ".." || s == "."),
        "dot segment in {path:?}"
    );
    assert!(!path.contains("//"), "{path:?}");
    assert!(!path.contains('\\'), "{path:?}");
    for bad in ["%2F", "%2f", "%5C", "%5c", "%00"] {
        assert!(!path.contains(bad), "{bad} in {path:?}");
    }
    assert!(!path.contains(['?', '#']), "{path:?}");
    let target = req.normalised_target();
    assert!(target.starts_with(path), "{target:?} vs {path:?}");

    // Framing, against the raw header lines.
    let lines = raw_header_lines(&buf[..n]);
    let lengths: Vec<&[u8]> = lines
        .iter()
        .filter_map(|l| name_is(l, "content-length"))
        .collect();
    let encodings: Vec<&[u8]> = lines
        .iter()
        .filter_map(|l| name_is(l, "transfer-encoding"))
        .collect();
    // httparse's view must agree with the raw lines on how many framing lines there are.
    let count = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    assert_eq!(count("content-length"), lengths.len(), "{lines:?}");
    assert_eq!(count("transfer-encoding"), encodings.len(), "{lines:?}");
    match req.framing {
        Framing::Length(len) => {
            assert_eq!(
                lengths.len(),
                1,
                "Length without exactly one Content-Length"
            );
            assert!(encodings.is_empty(), "Length with Transfer-Encoding");
            assert_eq!(plain_digits(lengths[0]), Some(len), "{:?}", lengths[0]);
            assert!(len > 0);
        }
        Framing::Chunked => {
            assert_eq!(encodings.len(), 1, "Chunked without exactly one TE line");
            assert!(
                encodings[0].eq_ignore_ascii_case(b"chunked"),
                "{:?}",
                encodings[0]
            );
            assert!(lengths.is_empty(), "Chunked with Content-Length");
            assert_eq!(req.minor_version, 1, "chunked on HTTP/1.0");
        }
        Framing::Empty => {
            assert!(encodings.is_empty(), "a TE line read as no body");
            assert!(lengths.len() <= 1);
            if let Some(v) = lengths.first() {
                assert_eq!(plain_digits(v), Some(0), "{v:?} read as no body");
            }
        }
    }

    // The same head alone (nothing after it) parses the same way.
    let mut hs2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (req2, n2) = request::parse(&buf[..n], &mut hs2, MAX_HEAD)
        .expect("the head alone is refused")
        .expect("the head alone is incomplete");
    assert_eq!(n2, n);
    assert_eq!(req2.path, req.path);
    assert_eq!(req2.framing, req.framing);
    assert_eq!(req2.keep_alive, req.keep_alive);
});
