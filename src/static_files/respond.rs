//! From a file and the request's headers to a response plan: encoding negotiation,
//! preconditions (RFC 9110 §13), ranges (§14). Pure, so every rule is unit-tested.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

use super::model::{Body, Encoding, Prebuilt, StaticFile, Variant};

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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// The request headers the static layer reads, however the request was parsed (Pingora's
/// `HeaderMap` or the front door's `httparse` view). The first copy of each header counts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    pub accept: Option<&'a str>,
    pub accept_encoding: Option<&'a str>,
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_unmodified_since: Option<&'a str>,
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

impl<'a> Conditions<'a> {
    pub fn from_headers(h: &'a HeaderMap) -> Self {
        let get = |name: HeaderName| h.get(name).and_then(|v| v.to_str().ok());
        Conditions {
            accept: get(header::ACCEPT),
            accept_encoding: get(header::ACCEPT_ENCODING),
            if_match: get(header::IF_MATCH),
            if_none_match: get(header::IF_NONE_MATCH),
            if_modified_since: get(header::IF_MODIFIED_SINCE),
            if_unmodified_since: get(header::IF_UNMODIFIED_SINCE),
            range: get(header::RANGE),
            if_range: get(header::IF_RANGE),
        }
    }
}

/// A whole-file 200 or a 304, with its header lines serialized once at start-up: the
/// answer to almost every request for a dist file.
#[derive(Debug)]
pub struct Quick<'a> {
    pub status: u16,
    /// `name: value\r\n` lines, `Content-Length` included for 200 (also for HEAD).
    pub head: &'a [u8],
    /// The same headers as a map, for HTTP/2 answers (cloned, not rebuilt, per request).
    pub headers: &'a HeaderMap,
    /// Empty for 304 and HEAD.
    pub body: &'a Bytes,
    /// The same bytes in a memory file, for `sendfile(2)` (large bodies only).
    pub body_file: Option<&'a std::fs::File>,
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
    &file.variants()[choose_index(file, accept_encoding)]
}

fn choose_index(file: &StaticFile, accept_encoding: Option<&str>) -> usize {
    if accept_encoding.is_none() {
        return 0;
    }
    file.variants()[1..]
        .iter()
        .position(|v| accepted(accept_encoding, v.encoding))
        .map_or(0, |i| i + 1)
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

fn http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

enum Ranges {
    Whole,
    Parts(Vec<std::ops::RangeInclusive<u64>>),
    Unsatisfiable,
}

fn ranges(c: &Conditions, variant: &Variant, file: &StaticFile) -> Ranges {
    let Some(range) = c.range else {
        return Ranges::Whole;
    };
    if !range.trim_start().starts_with("bytes=") {
        return Ranges::Whole; // Unknown units are ignored.
    }
    if let Some(if_range) = c.if_range {
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

/// Headers every answer about this variant carries (200, 206, 304, 412, 416).
fn validator_headers(file: &StaticFile, variant: &Variant) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(10);
    headers.push((header::ETAG, variant.etag.clone()));
    headers.push((header::LAST_MODIFIED, file.last_modified.clone()));
    headers.push((header::CACHE_CONTROL, file.cache_control.clone()));
    if file.has_encodings() {
        headers.push((header::VARY, HeaderValue::from_static("Accept-Encoding")));
    }
    headers.push((
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    ));
    headers
}

/// What a representation of the variant (200 or 206) adds to the validators.
fn push_representation_headers(headers: &mut Vec<(HeaderName, HeaderValue)>, variant: &Variant) {
    headers.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    if variant.encoding != Encoding::Identity {
        headers.push((
            header::CONTENT_ENCODING,
            HeaderValue::from_static(variant.encoding.token()),
        ));
    }
}

fn header_map(headers: &[(HeaderName, HeaderValue)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        map.append(k.clone(), v.clone());
    }
    map
}

fn serialize(headers: &[(HeaderName, HeaderValue)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Serialize, once per variant, the header lines [`plan`] would produce for a whole 200 and a
/// 304, so [`quick`] answers with the same headers without building them per request.
pub fn prebuild(file: &StaticFile, variants: &[Variant]) -> Vec<Prebuilt> {
    variants
        .iter()
        .map(|variant| {
            let validators = validator_headers(file, variant);
            let not_modified = serialize(&validators);
            let not_modified_map = header_map(&validators);
            let mut headers = validators;
            push_representation_headers(&mut headers, variant);
            headers.push((header::CONTENT_TYPE, file.content_type.clone()));
            headers.push((header::CONTENT_LENGTH, HeaderValue::from(variant.len)));
            Prebuilt {
                ok: Bytes::from(serialize(&headers)),
                not_modified: Bytes::from(not_modified),
                ok_map: header_map(&headers),
                not_modified_map,
            }
        })
        .collect()
}

static EMPTY: Bytes = Bytes::new();

/// The answer without building anything, when it is a whole in-memory file or a 304 (no
/// `Range`, `If-Match` or `If-Unmodified-Since` involved); `None` means: ask [`plan`].
pub fn quick<'a>(file: &'a StaticFile, c: &Conditions, head: bool) -> Option<Quick<'a>> {
    if c.range.is_some() || c.if_match.is_some() || c.if_unmodified_since.is_some() {
        return None;
    }
    let index = choose_index(file, c.accept_encoding);
    let variant = &file.variants()[index];
    let prebuilt = file.prebuilt().get(index)?;
    let not_modified = match c.if_none_match {
        Some(inm) => etag_list_matches(inm, &variant.etag, false),
        None => c
            .if_modified_since
            .and_then(http_date)
            .is_some_and(|ims| file.modified <= ims),
    };
    if not_modified {
        return Some(Quick {
            status: 304,
            head: &prebuilt.not_modified,
            headers: &prebuilt.not_modified_map,
            body: &EMPTY,
            body_file: None,
            encoding: variant.encoding,
        });
    }
    let Body::Memory(bytes) = &variant.body else {
        return None;
    };
    Some(Quick {
        status: 200,
        head: &prebuilt.ok,
        headers: &prebuilt.ok_map,
        body: if head { &EMPTY } else { bytes },
        body_file: if head { None } else { variant.sendfile.get() },
        encoding: variant.encoding,
    })
}

/// Plan the answer to a GET or HEAD of `file`.
pub fn plan(file: &StaticFile, c: &Conditions, head: bool) -> Plan {
    let variant = choose(file, c.accept_encoding);
    let mut headers = validator_headers(file, variant);
    let bare = |status, headers| Plan {
        status,
        headers,
        body: vec![],
        content_length: None,
        encoding: variant.encoding,
    };
    if let Some(status) = precondition_failed(file, variant, c) {
        return bare(status, headers);
    }

    push_representation_headers(&mut headers, variant);
    let total = variant.len;
    match ranges(c, variant, file) {
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
        Ranges::Parts(parts) => multipart(file, variant, &parts, headers, head),
    }
}

/// The status when a precondition decides the answer (412, or 304 for a cached copy still
/// current), checked in RFC 9110 §13.2.2 order.
fn precondition_failed(file: &StaticFile, variant: &Variant, c: &Conditions) -> Option<u16> {
    if let Some(im) = c.if_match {
        if !etag_list_matches(im, &variant.etag, true) {
            return Some(412);
        }
    } else if let Some(ius) = c.if_unmodified_since.and_then(http_date) {
        if file.modified > ius {
            return Some(412);
        }
    }
    if let Some(inm) = c.if_none_match {
        if etag_list_matches(inm, &variant.etag, false) {
            return Some(304);
        }
    } else if let Some(ims) = c.if_modified_since.and_then(http_date) {
        if file.modified <= ims {
            return Some(304);
        }
    }
    None
}

/// A 206 of several ranges: `multipart/byteranges`, each part with its own head.
fn multipart(
    file: &StaticFile,
    variant: &Variant,
    parts: &[std::ops::RangeInclusive<u64>],
    mut headers: Vec<(HeaderName, HeaderValue)>,
    head: bool,
) -> Plan {
    let total = variant.len;
    let b = boundary(variant);
    let ct = file
        .content_type
        .to_str()
        .unwrap_or("application/octet-stream");
    let mut body = Vec::with_capacity(parts.len() * 2 + 1);
    for r in parts {
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
        HeaderValue::from_str(&format!("multipart/byteranges; boundary={b}")).expect("ASCII"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn file(content: &'static [u8], gz: Option<&'static [u8]>) -> StaticFile {
        let mut variants = vec![Variant {
            encoding: Encoding::Identity,
            body: Body::Memory(Bytes::from_static(content)),
            len: content.len() as u64,
            etag: HeaderValue::from_static("\"abc\""),
            sendfile: Default::default(),
        }];
        if let Some(gz) = gz {
            variants.push(Variant {
                encoding: Encoding::Gzip,
                body: Body::Memory(Bytes::from_static(gz)),
                len: gz.len() as u64,
                etag: HeaderValue::from_static("\"abc-gzip\""),
                sendfile: Default::default(),
            });
        }
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        StaticFile::new(
            HeaderValue::from_static("text/plain; charset=utf-8"),
            HeaderValue::from_static("no-cache"),
            modified,
            variants,
            false,
        )
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

    fn plan_h(f: &StaticFile, h: &HeaderMap, head: bool) -> Plan {
        plan(f, &Conditions::from_headers(h), head)
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
        let p = plan_h(&f, &req(&[("accept-encoding", "gzip")]), false);
        assert_eq!(get(&p, "content-encoding"), Some("gzip"));
        assert_eq!(get(&p, "etag"), Some("\"abc-gzip\""));
        assert_eq!(get(&p, "vary"), Some("Accept-Encoding"));
        let p = plan_h(&f, &req(&[]), false);
        assert_eq!(get(&p, "content-encoding"), None);
        assert_eq!(body(&p), b"hello hello hello");
    }

    #[test]
    fn quick_answers_exactly_like_plan_and_leaves_the_rest_to_it() {
        let f = file(b"hello hello hello", Some(b"gz-bytes"));
        let lm = httpdate::fmt_http_date(f.modified);
        let lines = |head: &[u8]| {
            let mut l: Vec<String> = std::str::from_utf8(head)
                .unwrap()
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            l.sort();
            l
        };
        for (pairs, status) in [
            (vec![], 200),
            (vec![("accept-encoding", "gzip")], 200),
            (vec![("if-none-match", "\"abc\"")], 304),
            (
                vec![("if-none-match", "\"other\""), ("if-modified-since", &lm)],
                200,
            ),
            (vec![("if-modified-since", &lm)], 304),
        ] {
            let h = req(&pairs);
            let c = Conditions::from_headers(&h);
            let (q, p) = (quick(&f, &c, false).unwrap(), plan(&f, &c, false));
            assert_eq!((q.status, p.status), (status, status), "{pairs:?}");
            let mut want: Vec<String> = p
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                .collect();
            if let Some(len) = p.content_length {
                want.push(format!("content-length: {len}"));
            }
            want.sort();
            assert_eq!(lines(q.head), want, "{pairs:?}");
            assert_eq!(q.body, &body(&p)[..], "{pairs:?}");
        }
        let head = quick(&f, &Conditions::default(), true).unwrap();
        assert!(head.body.is_empty() && lines(head.head).contains(&"content-length: 17".into()));
        for pairs in [
            vec![("range", "bytes=0-1")],
            vec![("if-match", "\"abc\"")],
            vec![("if-unmodified-since", lm.as_str())],
        ] {
            let h = req(&pairs);
            assert!(
                quick(&f, &Conditions::from_headers(&h), false).is_none(),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn conditionals() {
        let f = file(b"0123456789", None);
        assert_eq!(
            plan_h(&f, &req(&[("if-none-match", "\"abc\"")]), false).status,
            304
        );
        assert_eq!(
            plan_h(&f, &req(&[("if-none-match", "\"x\", W/\"abc\"")]), false).status,
            304
        );
        assert_eq!(
            plan_h(&f, &req(&[("if-none-match", "*")]), false).status,
            304
        );
        assert_eq!(
            plan_h(&f, &req(&[("if-none-match", "\"other\"")]), false).status,
            200
        );
        let lm = httpdate::fmt_http_date(f.modified);
        let later = httpdate::fmt_http_date(f.modified + Duration::from_secs(5));
        let earlier = httpdate::fmt_http_date(f.modified - Duration::from_secs(5));
        assert_eq!(
            plan_h(&f, &req(&[("if-modified-since", &lm)]), false).status,
            304
        );
        assert_eq!(
            plan_h(&f, &req(&[("if-modified-since", &later)]), false).status,
            304
        );
        assert_eq!(
            plan_h(&f, &req(&[("if-modified-since", &earlier)]), false).status,
            200
        );
        assert_eq!(
            plan_h(&f, &req(&[("if-modified-since", "garbage")]), false).status,
            200
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            plan_h(
                &f,
                &req(&[("if-none-match", "\"other\""), ("if-modified-since", &lm)]),
                false
            )
            .status,
            200
        );
        assert_eq!(
            plan_h(&f, &req(&[("if-match", "W/\"abc\"")]), false).status,
            412
        );
        assert_eq!(
            plan_h(&f, &req(&[("if-match", "\"abc\"")]), false).status,
            200
        );
        assert_eq!(
            plan_h(&f, &req(&[("if-unmodified-since", &earlier)]), false).status,
            412
        );
        let p = plan_h(&f, &req(&[("if-none-match", "\"abc\"")]), false);
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
        let p = plan_h(&f, &req(&[("range", "bytes=2-4")]), false);
        assert_eq!(
            (p.status, get(&p, "content-range"), body(&p)),
            (206, Some("bytes 2-4/10"), b"234".to_vec())
        );
        let p = plan_h(&f, &req(&[("range", "bytes=-3")]), false);
        assert_eq!(body(&p), b"789");
        let p = plan_h(&f, &req(&[("range", "bytes=8-100")]), false);
        assert_eq!(
            (p.status, get(&p, "content-range")),
            (206, Some("bytes 8-9/10"))
        );
        let p = plan_h(&f, &req(&[("range", "bytes=10-")]), false);
        assert_eq!(
            (p.status, get(&p, "content-range")),
            (416, Some("bytes */10"))
        );
        assert_eq!(
            plan_h(&f, &req(&[("range", "bytes=abc")]), false).status,
            416
        );
        assert_eq!(
            plan_h(&f, &req(&[("range", "items=1-2")]), false).status,
            200
        );
        let p = plan_h(&f, &req(&[("range", "bytes=0-1,5-6")]), false);
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
            plan_h(
                &f,
                &req(&[("range", "bytes=0-1"), ("if-range", "\"abc\"")]),
                false
            )
            .status,
            206
        );
        assert_eq!(
            plan_h(
                &f,
                &req(&[("range", "bytes=0-1"), ("if-range", "\"old\"")]),
                false
            )
            .status,
            200
        );
        assert_eq!(
            plan_h(
                &f,
                &req(&[("range", "bytes=0-1"), ("if-range", "W/\"abc\"")]),
                false
            )
            .status,
            200
        );
        let lm = httpdate::fmt_http_date(f.modified);
        assert_eq!(
            plan_h(
                &f,
                &req(&[("range", "bytes=0-1"), ("if-range", &lm)]),
                false
            )
            .status,
            206
        );
        // HEAD: headers and length, no body.
        let p = plan_h(&f, &req(&[]), true);
        assert_eq!(
            (p.status, p.content_length, p.body.len()),
            (200, Some(10), 0)
        );
    }
}
