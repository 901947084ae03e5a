//! From a file and the request's headers to a response plan: encoding negotiation,
//! preconditions (RFC 9110 §13), ranges (§14). Pure, so every rule is unit-tested.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

use super::tree::{Body, Encoding, StaticFile, Variant};

/// A piece of the response body.
#[derive(Debug, Clone)]
pub enum Piece {
    Memory(Bytes),
    File {
        path: std::path::PathBuf,
        start: u64,
        len: u64,
    },
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Memory(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        }
    }
}

#[derive(Debug)]
pub struct Plan {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Empty for HEAD, 304, 412 and 416 (the length header still tells the size for HEAD).
    pub body: Vec<Piece>,
    pub content_length: Option<u64>,
    pub encoding: Encoding,
}

fn q_value(params: &str) -> f32 {
    params
        .split(';')
        .filter_map(|p| {
            p.trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
        })
        .next()
        .and_then(|q| q.trim().parse::<f32>().ok())
        .unwrap_or(1.0)
}

/// Which encodings the client accepts (q > 0), per `Accept-Encoding`.
pub fn accepted(accept_encoding: Option<&str>, enc: Encoding) -> bool {
    let Some(ae) = accept_encoding else {
        return enc == Encoding::Identity;
    };
    let mut star = None;
    for item in ae.split(',') {
        let (name, params) = item.split_once(';').unwrap_or((item, ""));
        let name = name.trim();
        if name.eq_ignore_ascii_case(enc.token())
            || (enc == Encoding::Gzip && name.eq_ignore_ascii_case("x-gzip"))
        {
            return q_value(params) > 0.0;
        }
        if name == "*" {
            star = Some(q_value(params) > 0.0);
        }
    }
    // Identity is acceptable unless refused explicitly (and even then we rather serve it than 406).
    star.unwrap_or(enc == Encoding::Identity)
}

/// The smallest acceptable variant (compressed ones are sorted by size after identity).
pub fn choose<'a>(file: &'a StaticFile, accept_encoding: Option<&str>) -> &'a Variant {
    file.variants[1..]
        .iter()
        .find(|v| accepted(accept_encoding, v.encoding))
        .unwrap_or(file.identity())
}

/// Strip `W/` and compare opaque tags; `strong` refuses weak tags on either side.
fn etag_list_matches(list: &str, etag: &HeaderValue, strong: bool) -> bool {
    let ours = etag.as_bytes();
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        let (weak, opaque) = match t.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        !(strong && weak) && opaque.as_bytes() == ours
    })
}

fn header_str<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

enum Ranges {
    Whole,
    Parts(Vec<std::ops::RangeInclusive<u64>>),
    Unsatisfiable,
}

fn ranges(h: &HeaderMap, variant: &Variant, file: &StaticFile) -> Ranges {
    let Some(range) = header_str(h, &header::RANGE) else {
        return Ranges::Whole;
    };
    if !range.trim_start().starts_with("bytes=") {
        return Ranges::Whole; // Unknown units are ignored.
    }
    if let Some(if_range) = header_str(h, &header::IF_RANGE) {
        let still_same = if if_range.starts_with('"') || if_range.starts_with("W/") {
            etag_list_matches(if_range, &variant.etag, true) && !if_range.contains(',')
        } else {
            http_date(if_range).is_some_and(|d| d == file.modified)
        };
        if !still_same {
            return Ranges::Whole;
        }
    }
    let parsed = match http_range_header::parse_range_header(range.trim()) {
        Ok(p) => p,
        Err(_) => return Ranges::Unsatisfiable,
    };
    match parsed.validate(variant.len) {
        Ok(parts) if parts.is_empty() => Ranges::Whole,
        Ok(parts) => {
            // Overlapping or pathological requests (their sum exceeding the file) get the file.
            let sum: u64 = parts.iter().map(|r| r.end() - r.start() + 1).sum();
            if sum > variant.len {
                Ranges::Whole
            } else {
                Ranges::Parts(parts)
            }
        }
        Err(_) => Ranges::Unsatisfiable,
    }
}

fn slice(variant: &Variant, start: u64, len: u64) -> Piece {
    match &variant.body {
        Body::Memory(b) => Piece::Memory(b.slice(start as usize..(start + len) as usize)),
        Body::Disk(path) => Piece::File {
            path: path.clone(),
            start,
            len,
        },
    }
}

/// Boundary for multipart/byteranges: unique enough per response, never inside the parts' headers.
fn boundary(variant: &Variant) -> String {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "wxedge{:016x}",
        xxhash_rust::xxh3::xxh3_64(format!("{t}{:?}", variant.etag).as_bytes())
    )
}

/// Plan the answer to a GET or HEAD of `file`.
pub fn plan(file: &StaticFile, req: &HeaderMap, head: bool) -> Plan {
    let variant = choose(file, header_str(req, &header::ACCEPT_ENCODING));
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(10);
    headers.push((header::ETAG, variant.etag.clone()));
    headers.push((header::LAST_MODIFIED, file.last_modified.clone()));
    headers.push((header::CACHE_CONTROL, file.cache_control.clone()));
    if file.has_encodings() {
        headers.push((header::VARY, HeaderValue::from_static("Accept-Encoding")));
    }
    let bare = |status, headers| Plan {
        status,
        headers,
        body: vec![],
        content_length: None,
        encoding: variant.encoding,
    };

    // Preconditions, in RFC 9110 §13.2.2 order.
    if let Some(im) = header_str(req, &header::IF_MATCH) {
        if !etag_list_matches(im, &variant.etag, true) {
            return bare(412, headers);
        }
    } else if let Some(ius) = header_str(req, &header::IF_UNMODIFIED_SINCE).and_then(http_date) {
        if file.modified > ius {
            return bare(412, headers);
        }
    }
    if let Some(inm) = header_str(req, &header::IF_NONE_MATCH) {
        if etag_list_matches(inm, &variant.etag, false) {
            return bare(304, headers);
        }
    } else if let Some(ims) = header_str(req, &header::IF_MODIFIED_SINCE).and_then(http_date) {
        if file.modified <= ims {
            return bare(304, headers);
        }
    }

    headers.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    if variant.encoding != Encoding::Identity {
        headers.push((
            header::CONTENT_ENCODING,
            HeaderValue::from_static(variant.encoding.token()),
        ));
    }
    let total = variant.len;
    match ranges(req, variant, file) {
        Ranges::Unsatisfiable => {
            headers.push((
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{total}")).expect("ASCII"),
            ));
            bare(416, headers)
        }
        Ranges::Whole => {
            headers.push((header::CONTENT_TYPE, file.content_type.clone()));
            let body = if head {
                vec![]
            } else {
                vec![slice(variant, 0, total)]
            };
            Plan {
                status: 200,
                headers,
                body,
                content_length: Some(total),
                encoding: variant.encoding,
            }
        }
        Ranges::Parts(parts) if parts.len() == 1 => {
            let (start, end) = (*parts[0].start(), *parts[0].end());
            headers.push((header::CONTENT_TYPE, file.content_type.clone()));
            headers.push((
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")).expect("ASCII"),
            ));
            let len = end - start + 1;
            let body = if head {
                vec![]
            } else {
                vec![slice(variant, start, len)]
            };
            Plan {
                status: 206,
                headers,
                body,
                content_length: Some(len),
                encoding: variant.encoding,
            }
        }
        Ranges::Parts(parts) => {
            let b = boundary(variant);
            let ct = file
                .content_type
                .to_str()
                .unwrap_or("application/octet-stream");
            let mut body = Vec::with_capacity(parts.len() * 2 + 1);
            for r in &parts {
                let (start, end) = (*r.start(), *r.end());
                body.push(Piece::Memory(Bytes::from(format!(
                    "\r\n--{b}\r\nContent-Type: {ct}\r\nContent-Range: bytes {start}-{end}/{total}\r\n\r\n"
                ))));
                body.push(slice(variant, start, end - start + 1));
            }
            body.push(Piece::Memory(Bytes::from(format!("\r\n--{b}--\r\n"))));
            let len = body.iter().map(Piece::len).sum();
            headers.push((
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("multipart/byteranges; boundary={b}"))
                    .expect("ASCII"),
            ));
            let body = if head { vec![] } else { body };
            Plan {
                status: 206,
                headers,
                body,
                content_length: Some(len),
                encoding: variant.encoding,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::static_files::tree::Variant;
    use std::time::{Duration, UNIX_EPOCH};

    fn file(content: &'static [u8], gz: Option<&'static [u8]>) -> StaticFile {
        let mut variants = vec![Variant {
            encoding: Encoding::Identity,
            body: Body::Memory(Bytes::from_static(content)),
            len: content.len() as u64,
            etag: HeaderValue::from_static("\"abc\""),
        }];
        if let Some(gz) = gz {
            variants.push(Variant {
                encoding: Encoding::Gzip,
                body: Body::Memory(Bytes::from_static(gz)),
                len: gz.len() as u64,
                etag: HeaderValue::from_static("\"abc-gzip\""),
            });
        }
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        StaticFile {
            content_type: HeaderValue::from_static("text/plain; charset=utf-8"),
            cache_control: HeaderValue::from_static("no-cache"),
            modified,
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified)).unwrap(),
            variants,
        }
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn get<'a>(p: &'a Plan, name: &str) -> Option<&'a str> {
        p.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    fn body(p: &Plan) -> Vec<u8> {
        p.body
            .iter()
            .flat_map(|x| match x {
                Piece::Memory(b) => b.to_vec(),
                _ => panic!("memory only"),
            })
            .collect()
    }

    #[test]
    fn negotiation() {
        assert!(accepted(Some("gzip, deflate, br"), Encoding::Brotli));
        assert!(!accepted(Some("gzip;q=0, br"), Encoding::Gzip));
        assert!(accepted(Some("*"), Encoding::Gzip));
        assert!(!accepted(Some("br;q=0.0, *"), Encoding::Brotli));
        assert!(!accepted(None, Encoding::Gzip));
        assert!(accepted(Some("identity"), Encoding::Identity));
        let f = file(b"hello hello hello", Some(b"gz"));
        let p = plan(&f, &req(&[("accept-encoding", "gzip")]), false);
        assert_eq!(get(&p, "content-encoding"), Some("gzip"));
        assert_eq!(get(&p, "etag"), Some("\"abc-gzip\""));
        assert_eq!(get(&p, "vary"), Some("Accept-Encoding"));
        let p = plan(&f, &req(&[]), false);
        assert_eq!(get(&p, "content-encoding"), None);
        assert_eq!(body(&p), b"hello hello hello");
    }

    #[test]
    fn conditionals() {
        let f = file(b"0123456789", None);
        assert_eq!(
            plan(&f, &req(&[("if-none-match", "\"abc\"")]), false).status,
            304
        );
        assert_eq!(
            plan(&f, &req(&[("if-none-match", "\"x\", W/\"abc\"")]), false).status,
            304
        );
        assert_eq!(plan(&f, &req(&[("if-none-match", "*")]), false).status, 304);
        assert_eq!(
            plan(&f, &req(&[("if-none-match", "\"other\"")]), false).status,
            200
        );
        let lm = httpdate::fmt_http_date(f.modified);
        let later = httpdate::fmt_http_date(f.modified + Duration::from_secs(5));
        let earlier = httpdate::fmt_http_date(f.modified - Duration::from_secs(5));
        assert_eq!(
            plan(&f, &req(&[("if-modified-since", &lm)]), false).status,
            304
        );
        assert_eq!(
            plan(&f, &req(&[("if-modified-since", &later)]), false).status,
            304
        );
        assert_eq!(
            plan(&f, &req(&[("if-modified-since", &earlier)]), false).status,
            200
        );
        assert_eq!(
            plan(&f, &req(&[("if-modified-since", "garbage")]), false).status,
            200
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            plan(
                &f,
                &req(&[("if-none-match", "\"other\""), ("if-modified-since", &lm)]),
                false
            )
            .status,
            200
        );
        assert_eq!(
            plan(&f, &req(&[("if-match", "W/\"abc\"")]), false).status,
            412
        );
        assert_eq!(
            plan(&f, &req(&[("if-match", "\"abc\"")]), false).status,
            200
        );
        assert_eq!(
            plan(&f, &req(&[("if-unmodified-since", &earlier)]), false).status,
            412
        );
        let p = plan(&f, &req(&[("if-none-match", "\"abc\"")]), false);
        assert!(
            get(&p, "content-type").is_none()
                && get(&p, "accept-ranges").is_none()
                && p.body.is_empty()
        );
        assert_eq!(get(&p, "etag"), Some("\"abc\""));
    }

    #[test]
    fn ranges() {
        let f = file(b"0123456789", None);
        let p = plan(&f, &req(&[("range", "bytes=2-4")]), false);
        assert_eq!(
            (p.status, get(&p, "content-range"), body(&p)),
            (206, Some("bytes 2-4/10"), b"234".to_vec())
        );
        let p = plan(&f, &req(&[("range", "bytes=-3")]), false);
        assert_eq!(body(&p), b"789");
        let p = plan(&f, &req(&[("range", "bytes=8-100")]), false);
        assert_eq!(
            (p.status, get(&p, "content-range")),
            (206, Some("bytes 8-9/10"))
        );
        let p = plan(&f, &req(&[("range", "bytes=10-")]), false);
        assert_eq!(
            (p.status, get(&p, "content-range")),
            (416, Some("bytes */10"))
        );
        assert_eq!(plan(&f, &req(&[("range", "bytes=abc")]), false).status, 416);
        assert_eq!(plan(&f, &req(&[("range", "items=1-2")]), false).status, 200);
        let p = plan(&f, &req(&[("range", "bytes=0-1,5-6")]), false);
        assert_eq!(p.status, 206);
        assert!(get(&p, "content-type")
            .unwrap()
            .starts_with("multipart/byteranges; boundary="));
        let text = String::from_utf8(body(&p)).unwrap();
        assert!(
            text.contains("Content-Range: bytes 0-1/10\r\n\r\n01\r\n")
                && text.contains("bytes 5-6/10\r\n\r\n56"),
            "{text}"
        );
        assert_eq!(p.content_length, Some(text.len() as u64));
        // If-Range: a matching tag keeps the range, a stale one gets the whole file.
        assert_eq!(
            plan(
                &f,
                &req(&[("range", "bytes=0-1"), ("if-range", "\"abc\"")]),
                false
            )
            .status,
            206
        );
        assert_eq!(
            plan(
                &f,
                &req(&[("range", "bytes=0-1"), ("if-range", "\"old\"")]),
                false
            )
            .status,
            200
        );
        assert_eq!(
            plan(
                &f,
                &req(&[("range", "bytes=0-1"), ("if-range", "W/\"abc\"")]),
                false
            )
            .status,
            200
        );
        let lm = httpdate::fmt_http_date(f.modified);
        assert_eq!(
            plan(
                &f,
                &req(&[("range", "bytes=0-1"), ("if-range", &lm)]),
                false
            )
            .status,
            206
        );
        // HEAD: headers and length, no body.
        let p = plan(&f, &req(&[]), true);
        assert_eq!(
            (p.status, p.content_length, p.body.len()),
            (200, Some(10), 0)
        );
    }
}
