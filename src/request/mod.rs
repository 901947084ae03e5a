//! The one HTTP/1.x request parser: bytes → a validated request head, or a refusal.
//!
//! Every request on every connection passes here first (the front door reads all of them),
//! before anything looks at what it asks for. It is at least as strict as nginx ≥ 1.21 and
//! RFC 9112: a request that could be framed or routed two ways is refused, never guessed.
//! Nothing after this module reads the client's framing lines again: the body is decoded here
//! (`body`), and whatever goes on to the backend is written from [`Framing`].

pub mod body;
pub mod client;
pub(crate) mod h2;
pub(crate) mod host;
mod incoming;
pub mod path;

use std::borrow::Cow;

use crate::static_files::Conditions;

pub use incoming::{FieldIter, Fields, Incoming};

/// How the request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: neither `Content-Length` nor `Transfer-Encoding`, or `Content-Length: 0`.
    Empty,
    Length(u64),
    Chunked,
}

/// A request the edge will not serve: the status and a short reason. The connection closes
/// after it (what follows cannot be trusted to be framed as the edge thinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

pub(crate) const fn refuse(status: u16, message: &'static str) -> Refusal {
    Refusal { status, message }
}

/// More header lines than the parser was given room for.
pub const TOO_MANY_HEADERS: Refusal = refuse(431, "too many header lines");

impl Refusal {
    /// The head may parse with room for more header lines (up to [`MAX_HEADERS`]).
    pub fn is_too_many_headers(&self) -> bool {
        self.message == TOO_MANY_HEADERS.message
    }
}

/// More header lines than this is a 431 (nginx bounds heads by size only; a count limit is
/// cheaper to enforce and no browser sends a tenth of it).
pub const MAX_HEADERS: usize = 100;

/// A validated request head, borrowed from the read buffer.
#[derive(Debug)]
pub struct Request<'b, 'h> {
    pub method: &'b str,
    /// The target as sent (for the access log).
    pub target: &'b str,
    /// The normalised path ([`path::normalise`]): what routes and what the backend receives.
    pub path: Cow<'b, str>,
    pub query: Option<&'b str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: &'h [httparse::Header<'b>],
    pub framing: Framing,
    /// `Expect: 100-continue` on HTTP/1.1.
    pub expects_continue: bool,
    /// A real upgrade request: HTTP/1.1 GET, `Upgrade`, and `upgrade` listed in `Connection`.
    pub upgrade: bool,
    /// The connection may serve another request after this one (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    pub conditions: Conditions<'b>,
    pub request_id: Option<&'b [u8]>,
    /// Raw bytes: only logged (escaped there), so obs-text is kept rather than lost.
    pub referer: Option<&'b [u8]>,
    pub user_agent: Option<&'b [u8]>,
    pub host: Option<&'b [u8]>,
}

fn text(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v).ok()
}

/// nginx's method rule: upper-case letters, `_` and `-`.
pub(crate) fn valid_method(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
}

/// `Content-Length` is `1*DIGIT`, nothing else: no sign, no list, no inner space (for
/// requests and for backend responses alike).
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether a comma-separated header value (`Connection: keep-alive, Upgrade`) lists `token`.
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parse the head at the start of `buf`. `Ok(None)`: incomplete, read more (the caller
/// enforces `max_head` on what it has buffered); `Ok(Some((request, head_len)))`; or a refusal.
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    hs: &'h mut [httparse::Header<'b>],
    max_head: usize,
) -> Result<Option<(Request<'b, 'h>, usize)>, Refusal> {
    let mut req = httparse::Request::new(hs);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(too_large(buf))
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY_HEADERS),
        Err(httparse::Error::Version) if names_a_version(buf) => {
            return Err(refuse(505, "only HTTP/1.0 and HTTP/1.1 are served here"));
        }
        Err(_) => return Err(refuse(400, "malformed request head")),
    };
    if head_len > max_head {
        return Err(too_large(buf));
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(refuse(400, "malformed request line"));
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;
    validate(method, target, minor_version, headers).map(|r| Some((r, head_len)))
}

/// Whether the request line ends in a well-formed `HTTP/x[.y]` (then a version httparse
/// refuses is a 505); anything else (`GET / / HTTP/1.1`) is a malformed line, a 400.
fn names_a_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    match version.strip_prefix(b"HTTP/") {
        Some([major]) => major.is_ascii_digit(),
        Some([major, b'.', minor]) => major.is_ascii_digit() && minor.is_ascii_digit(),
        _ => false,
    }
}

fn too_large(buf: &[u8]) -> Refusal {
    if memchr::memchr(b'\n', buf).is_none() {
        refuse(414, "the request line is too long")
    } else {
        refuse(431, "the request head is too large")
    }
}

/// The checks after a syntactically valid head: request line, framing, Host, connection.
fn validate<'b, 'h>(
    method: &'b str,
    target: &'b str,
    minor_version: u8,
    headers: &'h [httparse::Header<'b>],
) -> Result<Request<'b, 'h>, Refusal> {
    let (path, query) = request_line(method, target)?;
    let mut r = Request {
        method,
        target,
        path,
        query,
        minor_version,
        headers,
        framing: Framing::Empty,
        expects_continue: false,
        upgrade: false,
        keep_alive: minor_version == 1,
        conditions: Conditions::default(),
        request_id: None,
        referer: None,
        user_agent: None,
        host: None,
    };
    let mut seen = Seen::default();
    for h in headers {
        read_field(&mut r, &mut seen, h.name, h.value)?;
    }
    if let Some(why) = host::host_problem(minor_version == 1, seen.hosts, r.host) {
        return Err(refuse(400, why));
    }
    r.framing = framing(&seen, minor_version)?;
    r.expects_continue &= minor_version == 1;
    // WebSocket only: a tunnel to another protocol the backend speaks (h2c above all) would
    // carry requests the edge never sees, with whatever identity headers the client writes.
    r.upgrade = seen.upgrade_lines == 1
        && seen.websocket
        && seen.upgrade_token
        && minor_version == 1
        && method == "GET";
    r.keep_alive = !seen.close && (minor_version == 1 || seen.keep_alive_token);
    Ok(r)
}

/// The request line's checks: the method, a path target without a fragment, the path
/// normalised; then the path and the query.
fn request_line<'b>(
    method: &str,
    target: &'b str,
) -> Result<(Cow<'b, str>, Option<&'b str>), Refusal> {
    if !valid_method(method) {
        return Err(refuse(400, "malformed method"));
    }
    if !target.starts_with('/') {
        // Absolute-form and `*`: no browser sends them to an origin server, and an absolute
        // target is a second Host.
        return Err(refuse(400, "the request target must be a path"));
    }
    if target.contains('#') {
        return Err(refuse(400, "a fragment in the request target"));
    }
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = path::normalise(raw_path).map_err(|e| refuse(400, e.0))?;
    Ok((path, query))
}

/// What the header fields said about Host, framing and the connection, judged after all of
/// them are read.
#[derive(Default)]
struct Seen {
    hosts: usize,
    lengths: usize,
    encodings: usize,
    /// The last `Content-Length` (each one is checked to be a number as it is read).
    length: Option<u64>,
    /// Whether the last `Transfer-Encoding` is exactly `chunked`.
    chunked: bool,
    close: bool,
    keep_alive_token: bool,
    upgrade_token: bool,
    upgrade_lines: u8,
    /// The (last) `Upgrade` line names WebSocket alone.
    websocket: bool,
}

/// One header field: into the request (first copy of a field that is not a list) or `seen`.
fn read_field<'b>(
    r: &mut Request<'b, '_>,
    seen: &mut Seen,
    n: &'b str,
    v: &'b [u8],
) -> Result<(), Refusal> {
    let c = &mut r.conditions;
    // The first copy counts for fields that are not lists.
    macro_rules! first {
        ($slot:expr) => {
            if $slot.is_none() {
                $slot = text(v);
            }
        };
    }
    match n.len() {
        4 if n.eq_ignore_ascii_case("host") => {
            seen.hosts += 1;
            r.host.get_or_insert(v);
        }
        5 if n.eq_ignore_ascii_case("range") => first!(c.range),
        6 if n.eq_ignore_ascii_case("accept") => first!(c.accept),
        6 if n.eq_ignore_ascii_case("expect") => {
            r.expects_continue |= v.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        }
        7 if n.eq_ignore_ascii_case("referer") => {
            r.referer.get_or_insert(v);
        }
        7 if n.eq_ignore_ascii_case("upgrade") => {
            seen.upgrade_lines += 1;
            seen.websocket = v.trim_ascii().eq_ignore_ascii_case(b"websocket");
        }
        8 if n.eq_ignore_ascii_case("if-match") => first!(c.if_match),
        8 if n.eq_ignore_ascii_case("if-range") => first!(c.if_range),
        10 if n.eq_ignore_ascii_case("user-agent") => {
            r.user_agent.get_or_insert(v);
        }
        10 if n.eq_ignore_ascii_case("connection") => {
            seen.close |= has_token(v, "close");
            seen.keep_alive_token |= has_token(v, "keep-alive");
            seen.upgrade_token |= has_token(v, "upgrade");
        }
        12 if n.eq_ignore_ascii_case("x-request-id") => {
            r.request_id.get_or_insert(v);
        }
        13 if n.eq_ignore_ascii_case("if-none-match") => first!(c.if_none_match),
        14 if n.eq_ignore_ascii_case("content-length") => {
            seen.lengths += 1;
            seen.length =
                Some(content_length(v).ok_or(refuse(400, "Content-Length is not a plain number"))?);
        }
        15 if n.eq_ignore_ascii_case("accept-encoding") => first!(c.accept_encoding),
        17 if n.eq_ignore_ascii_case("if-modified-since") => first!(c.if_modified_since),
        17 if n.eq_ignore_ascii_case("transfer-encoding") => {
            seen.encodings += 1;
            seen.chunked = v.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
        19 if n.eq_ignore_ascii_case("if-unmodified-since") => first!(c.if_unmodified_since),
        _ => {}
    }
    Ok(())
}

/// The body's framing from the `Content-Length` and `Transfer-Encoding` fields seen.
fn framing(seen: &Seen, minor_version: u8) -> Result<Framing, Refusal> {
    Ok(match (seen.lengths, seen.encodings) {
        (0, 0) => Framing::Empty,
        (1, 0) => match seen.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        },
        (_, 0) => return Err(refuse(400, "more than one Content-Length")),
        (0, 1) if minor_version == 0 => {
            return Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request"))
        }
        (0, 1) if seen.chunked => Framing::Chunked,
        // nginx's answer to a coding it cannot decode.
        (0, 1) => return Err(refuse(501, "only Transfer-Encoding: chunked is supported")),
        (0, _) => return Err(refuse(400, "more than one Transfer-Encoding")),
        _ => return Err(refuse(400, "both Content-Length and Transfer-Encoding")),
    })
}

impl Request<'_, '_> {
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    pub fn is_get_or_head(&self) -> bool {
        self.method == "GET" || self.method == "HEAD"
    }

    pub fn version_label(&self) -> &'static str {
        if self.minor_version == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }
    }

    /// The request as the decision sees it.
    pub fn incoming<'r>(
        &'r self,
        client: &'r client::ClientAddr,
        request_id: &'r str,
        tls: bool,
        redirect_listener: bool,
    ) -> Incoming<'r> {
        Incoming {
            method: self.method,
            path: &self.path,
            query: self.query,
            target: self.target,
            fields: Fields::Lines(self.headers),
            conditions: self.conditions,
            host: self.host,
            client,
            tls,
            redirect_listener,
            upgrade: self.upgrade,
            has_body: self.framing != Framing::Empty,
            request_id,
        }
    }

    /// Every `Cookie` header's value.
    pub fn cookies(&self) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .map(|h| h.value)
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The normalised path and the query, as the request goes on.
    pub fn normalised_target(&self) -> Cow<'_, str> {
        match (&self.path, self.query) {
            (Cow::Borrowed(_), _) => Cow::Borrowed(self.target),
            (Cow::Owned(p), None) => Cow::Borrowed(p.as_str()),
            (Cow::Owned(p), Some(q)) => Cow::Owned(format!("{p}?{q}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &[u8]) -> Result<Option<usize>, Refusal> {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        parse(raw, &mut hs, 32 * 1024).map(|o| o.map(|(_, n)| n))
    }

    fn status(raw: &[u8]) -> u16 {
        match check(raw) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(r) => r.status,
        }
    }

    #[test]
    fn fields_and_framing() {
        let raw = b"POST /a/./b?x=1 HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\naccept-encoding: br\r\n\
If-None-Match: \"e\"\r\nConnection: keep-alive, close\r\nCookie: a=1\r\nCookie: b=2\r\nX-Request-ID: r1\r\n\
Content-Length: 007\r\n\r\nbody...";
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (r, n) = parse(raw, &mut hs, 32 * 1024).unwrap().unwrap();
        assert_eq!(&raw[n..], b"body...");
        assert_eq!((r.method, &*r.path, r.query), ("POST", "/a/b", Some("x=1")));
        assert_eq!(r.normalised_target(), "/a/b?x=1");
        assert_eq!(
            r.conditions.accept_encoding,
            Some("gzip"),
            "first copy counts"
        );
        assert_eq!(r.conditions.if_none_match, Some("\"e\""));
        assert_eq!(r.framing, Framing::Length(7));
        assert!(!r.keep_alive && !r.upgrade);
        assert_eq!(r.cookies(), vec![&b"a=1"[..], b"b=2"]);
        assert_eq!(r.request_id, Some(&b"r1"[..]));
    }

    #[test]
    fn head_ends_where_the_parser_says() {
        assert_eq!(check(b"GET / HTTP/1.1\r\nHost: h\n\r\nGET"), Ok(Some(26)));
        assert_eq!(check(b"GET / HTTP/1.1\nHost: h\n\nGET"), Ok(Some(24)));
        assert_eq!(check(b"GET / HTTP/1.1\r\nHost: h\r\n"), Ok(None));
    }

    #[test]
    fn framing_is_one_way_or_refused() {
        let h = "POST /api/a HTTP/1.1\r\nHost: t\r\n";
        for (extra, want) in [
            ("Content-Length: 5\r\n", 200),
            ("Content-Length: 0\r\n", 200),
            ("Transfer-Encoding: chunked\r\n", 200),
            ("Transfer-Encoding: CHUNKED \r\n", 200),
            ("Content-Length: +70\r\n", 400),
            ("Content-Length: -1\r\n", 400),
            ("Content-Length: 70, 70\r\n", 400),
            ("Content-Length: 7 0\r\n", 400),
            ("Content-Length: 0x10\r\n", 400),
            ("Content-Length: \r\n", 400),
            ("Content-Length: 99999999999999999999\r\n", 400),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", 400),
            ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
            ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                400,
            ),
            ("Transfer-Encoding: gzip, chunked\r\n", 501),
            ("Transfer-Encoding: chunked, gzip\r\n", 501),
            ("Transfer-Encoding: identity\r\n", 501),
            ("Transfer-Encoding: xchunked\r\n", 501),
            ("Transfer-Encoding : chunked\r\n", 400),
        ] {
            let raw = format!("{h}{extra}\r\n");
            assert_eq!(status(raw.as_bytes()), want, "{extra:?}");
        }
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
    }

    #[test]
    fn request_lines() {
        for (raw, want) in [
            (&b"GET / HTTP/1.0\r\n\r\n"[..], 200),
            (b"GET http://t/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
            (b"GET / HTTP/3\r\nHost: t\r\n\r\n", 505),
            (b"GET / / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET / HTTP/1.1x\r\nHost: t\r\n\r\n", 400),
            (b"GET /a#b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET /api/../../x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET /api/..%2fx HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
        ] {
            assert_eq!(status(raw), want, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn limits() {
        let mut many = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(100));
        assert_eq!(parse(long.as_bytes(), &mut hs, 64).unwrap_err().status, 431);
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let line = format!("GET /{}", "a".repeat(100));
        assert_eq!(parse(line.as_bytes(), &mut hs, 64).unwrap_err().status, 414);
    }

    #[test]
    fn connection_semantics() {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let raw = b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\r\n";
        let (r, _) = parse(raw, &mut hs, 4096).unwrap().unwrap();
        assert!(!r.upgrade, "Upgrade not named in Connection is ignored");
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let raw =
            b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(parse(raw, &mut hs, 4096).unwrap().unwrap().0.upgrade);
        for other in [
            "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
            "Upgrade: websocket, h2c\r\n",
            "Upgrade: websocket\r\nUpgrade: h2c\r\n",
            "Upgrade: TLS/1.2\r\n",
        ] {
            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let raw = format!("GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n{other}\r\n");
            let (r, _) = parse(raw.as_bytes(), &mut hs, 4096).unwrap().unwrap();
            assert!(!r.upgrade, "only WebSocket is tunnelled: {other}");
        }
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let raw = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert!(parse(raw, &mut hs, 4096).unwrap().unwrap().0.keep_alive);
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let raw = b"GET / HTTP/1.0\r\n\r\n";
        assert!(!parse(raw, &mut hs, 4096).unwrap().unwrap().0.keep_alive);
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let raw =
            b"POST /api HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        assert!(
            parse(raw, &mut hs, 4096)
                .unwrap()
                .unwrap()
                .0
                .expects_continue
        );
    }
}
