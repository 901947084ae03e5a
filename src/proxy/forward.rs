//! Every request the edge sends to a backend goes through here, whatever the client's
//! transport: one write of the request (its head from the one builder, `upstream`; its whole
//! body after it), the response relayed as it arrives, the backend connection kept in a
//! per-thread pool (nginx's `keepalive` per worker), the retries on refused or stale
//! connections, and the response's hop-by-hop rules (`for_client`). HTTP/1.1 clients get the
//! backend's framing as it is, HTTP/1.0 clients a chunked answer decoded and ended by closing,
//! HTTP/2 clients the body unframed on their stream; a real upgrade (WebSocket) becomes a
//! tunnel after the backend's `101` (`tunnel`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::HttpSession;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::Chunked;
use super::headers;
use super::Upstreams;
use crate::ops::metrics::METRICS;
use crate::reply::Finish;
use crate::request::body::Spooled;
use crate::request::has_token;

/// Idle backend connections kept per thread (nginx: `keepalive 64` per worker).
const POOL_PER_THREAD: usize = 64;
/// Bodies up to this size go to the client in one write with the head (copied after it);
/// larger ones in a second write, not copied.
pub const COALESCE_MAX: usize = 8 * 1024;
/// Idle longer than this, a pooled connection is checked before it is used.
const PROBE_AFTER_IDLE: Duration = Duration::from_secs(1);
/// Largest response head accepted from a backend, and most header lines: pingora-core's
/// (`v1::common::MAX_HEADER_SIZE`, `MAX_HEADERS`, private there) limits,
/// so both paths take the same backend answers.
const MAX_RESPONSE_HEAD: usize = 1_048_575;
const MAX_RESPONSE_HEADERS: usize = 256;

struct Idle {
    addr: SocketAddr,
    stream: TcpStream,
    since: Instant,
}

thread_local! {
    static POOL: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// The most recently used live connection to `addr`, if one idles here.
fn take_idle(addr: SocketAddr, max_idle: Duration) -> Option<TcpStream> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        while let Some(pos) = p.iter().rposition(|c| c.addr == addr) {
            let c = p.remove(pos);
            if c.since.elapsed() >= max_idle {
                continue;
            }
            // After a pause, check that the backend has not closed the connection (EOF) or
            // sent something unasked. Right after use that costs a system call per request for
            // nothing: a connection that died meanwhile fails before answering, and is retried.
            if c.since.elapsed() < PROBE_AFTER_IDLE {
                return Some(c.stream);
            }
            let mut probe = [0u8; 1];
            match c.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(c.stream),
                _ => continue,
            }
        }
        None
    })
}

fn put_idle(addr: SocketAddr, stream: TcpStream) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() >= POOL_PER_THREAD {
            p.remove(0);
        }
        p.push(Idle {
            addr,
            stream,
            since: Instant::now(),
        });
    });
}

/// One request as it goes upstream (its head written by [`super::upstream::write_head`]).
pub struct Outgoing<'a> {
    /// The request head as it goes upstream.
    pub head: &'a [u8],
    /// The whole body (sent after the head; again from its start on a retry).
    pub body: &'a Spooled,
    /// A HEAD request: the answer has no body whatever its headers say.
    pub head_request: bool,
    /// What every answer to the request carries (the edge's request id, HSTS: it replaces
    /// the backend's); the connection field is decided here, per answer.
    pub finish: Finish<'a>,
    /// The client's connection ends after this response (it asked, or the edge is draining).
    pub close_client: bool,
    /// The client speaks HTTP/1.0: a chunked answer reaches it decoded, ended by closing.
    pub http10: bool,
    /// A real upgrade (`tunnel`): the backend may answer `101 Switching Protocols`.
    pub upgrade: bool,
    /// Longest wait for the client to take a part of the answer.
    pub send_timeout: Duration,
}

/// How the relay went.
#[derive(Debug)]
pub struct Relayed {
    pub status: u16,
    pub body_bytes: u64,
    pub backend: usize,
    /// The client connection may serve another request.
    pub client_reusable: bool,
}

/// Nothing reached the client: it gets this error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub kind: &'static str,
    pub message: &'static str,
    pub backend: Option<usize>,
}

/// The response had begun when the backend or the client failed: close the client connection.
#[derive(Debug)]
pub struct Broken {
    pub status: u16,
    pub body_bytes: u64,
    pub backend: usize,
}

impl Failure {
    /// The client's answer, counted once in `wxedge_backend_errors_total`, whichever
    /// transport writes it.
    pub fn answer(&self) -> crate::reply::Reply {
        METRICS.backend_errors.with_label_values(&[self.kind]).inc();
        let class = crate::ops::RouteClass::Proxy;
        crate::reply::Reply::error(class, self.status, self.kind, self.message)
    }
}

pub enum Error {
    Before(Failure),
    Midway(Broken),
}

/// The answers for a backend that failed (nginx's: refused is a 502, no answer in time a 504).
pub const BAD_GATEWAY: Failure = Failure {
    status: 502,
    kind: "bad_gateway",
    message: "the backend is unavailable",
    backend: None,
};
pub const GATEWAY_TIMEOUT: Failure = Failure {
    status: 504,
    kind: "gateway_timeout",
    message: "the backend did not answer in time",
    backend: None,
};

async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(BAD_GATEWAY),
        Err(_) => Err(GATEWAY_TIMEOUT),
    }
}

/// A backend connection that answered with a response head.
struct Answered {
    stream: TcpStream,
    addr: SocketAddr,
    backend: usize,
    buf: BytesMut,
}

/// Send the request to a backend (retrying other backends on refused connections, and a
/// fresh connection when a pooled one turns out closed) until one answers with a head.
async fn exchange(ups: &Upstreams, req: &Outgoing<'_>) -> Result<(Answered, usize), Failure> {
    let mut tried: Vec<usize> = Vec::new();
    let mut last = BAD_GATEWAY;
    loop {
        let Some(idx) = ups.pick(&tried) else {
            return Err(last);
        };
        let addr = ups.addr(idx);
        // Pooled connections first; any of them may have been closed by the backend meanwhile.
        let mut fresh = false;
        loop {
            let stream = match take_idle(addr, ups.idle_timeout) {
                Some(s) => s,
                None => {
                    fresh = true;
                    match tokio::time::timeout(ups.connect_timeout, TcpStream::connect(addr)).await
                    {
                        Ok(Ok(s)) => {
                            let _ = s.set_nodelay(true);
                            ups.mark_up(idx);
                            s
                        }
                        failed => {
                            ups.mark_down(idx);
                            let (why, failure) = match failed {
                                Ok(Err(e)) => (e.to_string(), BAD_GATEWAY),
                                _ => ("connect timed out".to_string(), GATEWAY_TIMEOUT),
                            };
                            log::warn!("backend {} unreachable: {why}", ups.authority(idx));
                            METRICS.backend_errors.with_label_values(&["connect"]).inc();
                            last = failure;
                            break;
                        }
                    }
                }
            };
            match send_and_read_head(ups, stream, req).await {
                Ok((stream, buf, head_len)) => {
                    return Ok((
                        Answered {
                            stream,
                            addr,
                            backend: idx,
                            buf,
                        },
                        head_len,
                    ))
                }
                // A pooled connection that failed before any answer: the backend closed it
                // while idle. Try the next one (nginx and Pingora retry these too).
                Err((f, answered_nothing)) if !fresh && answered_nothing => {
                    let _ = f;
                    continue;
                }
                Err((f, _)) => {
                    return Err(Failure {
                        backend: Some(idx),
                        ..f
                    })
                }
            }
        }
        tried.push(idx);
    }
}

/// Write the request, then read until a complete non-1xx response head is buffered.
/// On failure, also says whether the backend sent nothing at all.
async fn send_and_read_head(
    ups: &Upstreams,
    mut stream: TcpStream,
    req: &Outgoing<'_>,
) -> Result<(TcpStream, BytesMut, usize), (Failure, bool)> {
    timed(
        ups.write_timeout,
        req.body.write_after(req.head, &mut stream),
    )
    .await
    .map_err(|f| (f, true))?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let n = timed(ups.read_timeout, stream.read_buf(&mut buf))
            .await
            .map_err(|f| (f, buf.is_empty()))?;
        if n == 0 {
            return Err((BAD_GATEWAY, buf.is_empty()));
        }
        // Only the end of the head is found here; it is parsed once, by `response_head`.
        while let Some(len) = head_end(&buf) {
            match status_code(&buf) {
                Some(code) if (100..200).contains(&code) && code != 101 => {
                    // Interim answers (100 Continue, 103 Early Hints) are not relayed, but
                    // must be well-formed heads all the same.
                    let mut hs = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
                    match httparse::Response::new(&mut hs).parse(&buf[..len]) {
                        Ok(httparse::Status::Complete(n)) if n == len => buf.advance(len),
                        _ => return Err((BAD_GATEWAY, false)),
                    }
                }
                Some(101) if !req.upgrade => return Err((BAD_GATEWAY, false)),
                // Anything else, well-formed or not, is `response_head`'s to judge.
                _ => return Ok((stream, buf, len)),
            }
        }
        if buf.len() >= MAX_RESPONSE_HEAD || !could_be_status_line(&buf) || has_bare_cr(&buf) {
            return Err((BAD_GATEWAY, false));
        }
    }
}

/// The empty lines httparse skips before a status line.
fn leading_empty_lines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Where the response head at the start of `buf` ends: just after its first empty line
/// (`\r\n` or a bare `\n`, as httparse accepts them).
fn head_end(buf: &[u8]) -> Option<usize> {
    let start = leading_empty_lines(buf);
    memchr::memchr_iter(b'\n', &buf[start..]).find_map(|i| match &buf[start + i + 1..] {
        [b'\n', ..] => Some(start + i + 2),
        [b'\r', b'\n', ..] => Some(start + i + 3),
        _ => None,
    })
}

/// The status code of the head's `HTTP/1.x NNN` status line, if it has one.
fn status_code(buf: &[u8]) -> Option<u16> {
    match &buf[leading_empty_lines(buf)..] {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', _, b' ', d @ ..] if d.len() >= 3 => {
            let d = &d[..3];
            d.iter()
                .all(u8::is_ascii_digit)
                .then(|| d.iter().fold(0, |n, b| n * 10 + u16::from(b - b'0')))
        }
        _ => None,
    }
}

/// Whether what the backend sent so far can still become a status line: anything else is a
/// 502 at once, not after the read timeout.
fn could_be_status_line(buf: &[u8]) -> bool {
    let rest = &buf[leading_empty_lines(buf)..];
    let n = rest.len().min(7);
    rest[..n] == b"HTTP/1."[..n]
}

/// Whether the head so far has a CR that is not followed by LF: it ends no line (RFC 9112
/// §2.2), so no complete head can follow; a 502 at once (Pingora's parser refuses it too).
fn has_bare_cr(buf: &[u8]) -> bool {
    let start = leading_empty_lines(buf);
    memchr::memchr_iter(b'\r', &buf[start..])
        .any(|i| matches!(buf.get(start + i + 1), Some(&b) if b != b'\n'))
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[&[u8]]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for part in value {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

async fn write_client<W: AsyncWrite + Unpin>(
    limit: Duration,
    client: &mut W,
    data: &[u8],
) -> std::io::Result<()> {
    within_send_timeout(limit, client.write_all(data)).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Run writes to the client within `limit`: a client that stops reading must not hold the
/// connection forever (nginx: `send_timeout`).
pub async fn within_send_timeout(
    limit: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// What the backend's response head says.
struct ResponseHead {
    status: u16,
    framing: Framing,
    /// The backend connection may be pooled after this response.
    upstream_keeps: bool,
    /// The client's connection ends after this response.
    close_client: bool,
}

/// Parse a complete response head (as [`send_and_read_head`] buffered it) and hand its
/// status line and header lines to `f`.
fn with_response<R>(
    buf: &[u8],
    f: impl FnOnce(u16, Option<u8>, Option<&str>, &[httparse::Header]) -> Option<R>,
) -> Option<R> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    resp.parse(buf).ok()?;
    f(resp.code?, resp.version, resp.reason, resp.headers)
}

/// How the backend frames its response, and whether its connection stays usable. `None`: the
/// head cannot be framed one way (conflicting lengths), a 502.
fn framing_of(
    status: u16,
    version: Option<u8>,
    hs: &[httparse::Header],
    req: &Outgoing<'_>,
) -> Option<ResponseHead> {
    let mut upstream_keeps = version == Some(1);
    let mut framing = None;
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    for h in hs {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let chunked_last = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            framing = Some(if chunked_last {
                Framing::Chunked
            } else {
                Framing::UntilClose
            });
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match (crate::request::content_length(h.value), length) {
                (Some(v), None) => length = Some(v),
                (Some(v), Some(l)) if v == l => {}
                _ => bad_length = true,
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                upstream_keeps = false;
            } else if has_token(h.value, "keep-alive") {
                upstream_keeps = true;
            }
        }
    }
    if bad_length && framing.is_none() {
        return None;
    }
    let framing = if req.head_request || status == 204 || status == 304 || status == 101 {
        Framing::Empty
    } else {
        framing.unwrap_or(match length {
            Some(l) => Framing::Length(l),
            None => Framing::UntilClose,
        })
    };
    Some(ResponseHead {
        status,
        framing,
        // After a 101 the connection is the tunnel's, never pooled.
        upstream_keeps: upstream_keeps && status != 101,
        close_client: req.close_client
            || status == 101
            || framing == Framing::UntilClose
            || (req.http10 && framing == Framing::Chunked),
    })
}

/// The backend's header lines the client gets, in order: no hop-by-hop header (nor those the
/// backend's `Connection` names), no `X-Request-ID` or `Date` (the edge's go instead, as
/// nginx's `Date` does), no length beside chunked framing, no `Strict-Transport-Security` when
/// the edge sends its own.
/// `chunked_te`: the client gets the chunked body as it is (HTTP/1), with its
/// `Transfer-Encoding`.
fn for_client<'h>(
    hs: &'h [httparse::Header<'h>],
    framing: Framing,
    req: &Outgoing<'_>,
    chunked_te: bool,
    mut emit: impl FnMut(&'h str, &'h [u8]),
) {
    let connection_values = || {
        hs.iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value)
    };
    let chunked = framing == Framing::Chunked;
    for h in hs {
        let keep_te = chunked_te && chunked && h.name.eq_ignore_ascii_case("transfer-encoding");
        if (headers::is_hop_by_hop(h.name) && !keep_te)
            || headers::named_in_connection(h.name, connection_values())
            || h.name.eq_ignore_ascii_case("x-request-id")
            || h.name.eq_ignore_ascii_case("date")
            || (chunked && h.name.eq_ignore_ascii_case("content-length"))
            || (req.finish.hsts.is_some()
                && h.name.eq_ignore_ascii_case("strict-transport-security"))
        {
            continue;
        }
        emit(h.name, h.value);
    }
}

/// Read the backend's response head and write the client's version of it into `out`:
/// [`for_client`]'s lines, then the [`Finish`] with what the client's connection does next
/// (`close`; `keep-alive` for an HTTP/1.0 client that keeps it; `upgrade` with the backend's
/// `Upgrade` after a 101). `None`: a head that cannot be framed one way, a 502.
fn response_head(buf: &[u8], req: &Outgoing<'_>, out: &mut Vec<u8>) -> Option<ResponseHead> {
    with_response(buf, |status, version, reason, hs| {
        let head = framing_of(status, version, hs, req)?;
        out.clear();
        headers::push_status_line(out, status, reason);
        for_client(hs, head.framing, req, !req.http10, |name, value| {
            push_header(out, name.as_bytes(), &[value])
        });
        let connection = if status == 101 {
            // Only WebSocket is asked for (`Request::upgrade`): a switch to anything else, or
            // to nothing named, is a 502.
            let protocol = hs.iter().find(|h| h.name.eq_ignore_ascii_case("upgrade"))?;
            if !protocol
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"websocket")
            {
                return None;
            }
            push_header(out, b"upgrade", &[protocol.value]);
            Some("upgrade")
        } else {
            Finish::connection(!head.close_client, if req.http10 { 0 } else { 1 })
        };
        Finish {
            connection,
            ..req.finish
        }
        .http1(out);
        Some(head)
    })
}

/// Forward one request and relay the response to `client`. `scratch` is reused for the
/// response head.
pub async fn forward<W: AsyncWrite + Unpin>(
    ups: &Upstreams,
    req: &Outgoing<'_>,
    client: &mut W,
    scratch: &mut Vec<u8>,
) -> Result<Relayed, Error> {
    let (mut up, mut head) = exchange_http1(ups, req, scratch).await?;
    let sent = relay_body(ups, &mut up, &mut head, req, client, scratch).await?;
    if client.flush().await.is_err() {
        return Err(broken(&head, &up, sent));
    }
    Ok(relayed(up, &head, sent, !head.close_client))
}

/// [`exchange`], and the client's HTTP/1 version of the response head in `scratch`.
async fn exchange_http1(
    ups: &Upstreams,
    req: &Outgoing<'_>,
    scratch: &mut Vec<u8>,
) -> Result<(Answered, ResponseHead), Error> {
    let (mut up, head_len) = exchange(ups, req).await.map_err(Error::Before)?;
    let Some(head) = response_head(&up.buf[..head_len], req, scratch) else {
        return Err(Error::Before(Failure {
            backend: Some(up.backend),
            ..BAD_GATEWAY
        }));
    };
    up.buf.advance(head_len);
    Ok((up, head))
}

/// Room for one read in each direction of a tunnel.
const TUNNEL_BUFFER: usize = 8 * 1024;

/// Forward an upgrade request (WebSocket). After the backend's `101 Switching Protocols` the
/// two connections are joined: bytes go both ways as they come (`early`, what the client sent
/// after its request, first), each write within the send timeout, until both sides have
/// closed, either fails, or nothing moves for the backend's read timeout (nginx's
/// `proxy_read_timeout` on upgraded connections). Any other answer is relayed as usual and the
/// client's connection then closes. `body_bytes`: what the client got after the head.
pub async fn tunnel<C: AsyncRead + AsyncWrite + Unpin + Send>(
    ups: &Upstreams,
    req: &Outgoing<'_>,
    client: &mut C,
    early: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<Relayed, Error> {
    let (mut up, mut head) = exchange_http1(ups, req, scratch).await?;
    if head.status != 101 {
        // A connection asked to switch protocols is not offered to the next request.
        head.upstream_keeps = false;
        let sent = relay_body(ups, &mut up, &mut head, req, client, scratch).await?;
        let _ = client.flush().await;
        return Ok(relayed(up, &head, sent, false));
    }
    // The head, and whatever the backend already said in the new protocol.
    let said = up.buf.split();
    scratch.extend_from_slice(&said);
    if write_client(req.send_timeout, client, scratch)
        .await
        .is_err()
    {
        return Err(broken(&head, &up, 0));
    }
    let timeouts = (ups.read_timeout, req.send_timeout);
    let to_client = join(client, &mut up.stream, early, timeouts).await + said.len() as u64;
    Ok(Relayed {
        status: 101,
        body_bytes: to_client,
        backend: up.backend,
        client_reusable: false,
    })
}

/// Carry bytes both ways between an upgraded client and its backend (see [`tunnel`]); how
/// many reached the client.
async fn join<C: AsyncRead + AsyncWrite + Unpin + Send>(
    client: &mut C,
    backend: &mut TcpStream,
    early: &[u8],
    (idle, send_timeout): (Duration, Duration),
) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let start = tokio::time::Instant::now();
    // Milliseconds from `start` to the last byte that moved, either way.
    let moved = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut backend_rx, mut backend_tx) = backend.split();
    if !early.is_empty()
        && within_send_timeout(send_timeout, backend_tx.write_all(early))
            .await
            .is_err()
    {
        return 0;
    }
    let mark = |n: usize| {
        moved.store(start.elapsed().as_millis() as u64, Relaxed);
        n
    };
    let up = pass(&mut client_rx, &mut backend_tx, send_timeout, |n| {
        mark(n);
    });
    let down = pass(&mut backend_rx, &mut client_tx, send_timeout, |n| {
        to_client.fetch_add(mark(n) as u64, Relaxed);
    });
    let quiet = async {
        loop {
            let last = start + Duration::from_millis(moved.load(Relaxed));
            if last.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    };
    tokio::select! {
        _ = async { tokio::try_join!(up, down) } => {}
        _ = quiet => {}
    }
    to_client.load(Relaxed)
}

/// One direction of a tunnel: read, write on, until `from` ends (then `to` is shut down for
/// writing, a half-close) or either fails (`Err`). `passed` hears of every part sent.
async fn pass<R, W>(
    from: &mut R,
    to: &mut W,
    send_timeout: Duration,
    mut passed: impl FnMut(usize),
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; TUNNEL_BUFFER];
    loop {
        let n = from.read(&mut buf).await.map_err(|_| ())?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let write = async {
            to.write_all(&buf[..n]).await?;
            to.flush().await
        };
        within_send_timeout(send_timeout, write)
            .await
            .map_err(|_| ())?;
        passed(n);
    }
}

fn broken(head: &ResponseHead, up: &Answered, body_bytes: u64) -> Error {
    Error::Midway(Broken {
        status: head.status,
        body_bytes,
        backend: up.backend,
    })
}

/// Where a response body ends in what the backend sends, and what of it the client gets: the
/// bytes as they came, or (`decode`) a chunked body's data only.
struct BodyEnd {
    framing: Framing,
    /// What a length-framed body still lacks.
    left: u64,
    chunks: Chunked,
    decode: bool,
    decoded: Vec<u8>,
}

impl BodyEnd {
    fn new(framing: Framing, decode: bool) -> BodyEnd {
        BodyEnd {
            framing,
            left: match framing {
                Framing::Length(l) => l,
                _ => 0,
            },
            chunks: Chunked::default(),
            decode: decode && framing == Framing::Chunked,
            decoded: Vec::new(),
        }
    }

    /// There is no body at all.
    fn is_empty(&self) -> bool {
        matches!(self.framing, Framing::Empty | Framing::Length(0))
    }

    /// How much of `data` is body, and whether the body ends there. Decoded data is appended
    /// to `self.decoded`.
    fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), super::chunked::Malformed> {
        Ok(match self.framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let take = data.len().min(self.left as usize);
                self.left -= take as u64;
                (take, self.left == 0)
            }
            Framing::Chunked => {
                let out = self.decode.then_some(&mut self.decoded);
                match self.chunks.feed(data, out)? {
                    Some(end) => (end, true),
                    None => (data.len(), false),
                }
            }
            Framing::UntilClose => (data.len(), false),
        })
    }
}

/// The backend's next bytes (empty: it closed), within its read timeout.
async fn read_more(ups: &Upstreams, up: &mut Answered) -> std::io::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    match tokio::time::timeout(ups.read_timeout, up.stream.read_buf(&mut buf)).await {
        Ok(Ok(_)) => Ok(buf),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Relay the body as it arrives, the head (in `scratch`) going out with its first bytes;
/// how many body bytes were sent.
async fn relay_body<W: AsyncWrite + Unpin>(
    ups: &Upstreams,
    up: &mut Answered,
    head: &mut ResponseHead,
    req: &Outgoing<'_>,
    client: &mut W,
    scratch: &mut Vec<u8>,
) -> Result<u64, Error> {
    let mut sent: u64 = 0;
    // An HTTP/1.0 client gets a chunked answer's data only (its connection ends it).
    let mut body = BodyEnd::new(head.framing, req.http10);
    let mut done = body.is_empty();
    let mut first = true;
    loop {
        // Body bytes already read with the head go out in the same write as the head.
        let available = match first {
            true => std::mem::take(&mut up.buf),
            false => read_more(ups, up)
                .await
                .map_err(|_| broken(head, up, sent))?,
        };
        let eof = !first && available.is_empty();
        if eof && head.framing != Framing::UntilClose {
            return Err(broken(head, up, sent));
        }
        let (take, ends) = match (done || eof, body.feed(&available)) {
            (true, _) => (0, true),
            (false, Ok(fed)) => fed,
            (false, Err(_)) => {
                // Garbage from the backend: pass on the head, then cut.
                if first {
                    let _ = write_client(req.send_timeout, client, scratch).await;
                }
                return Err(broken(head, up, sent));
            }
        };
        done = ends;
        if eof || take < available.len() {
            // Closed, or sent more than the response: do not use the connection again.
            head.upstream_keeps = false;
        }
        let part = match body.decode {
            true => &body.decoded[..],
            false => &available[..take],
        };
        let io = match (first, part.len() <= COALESCE_MAX) {
            (true, true) => {
                scratch.extend_from_slice(part);
                write_client(req.send_timeout, client, scratch).await
            }
            (true, false) => match write_client(req.send_timeout, client, scratch).await {
                Ok(()) => write_client(req.send_timeout, client, part).await,
                e => e,
            },
            (false, _) if part.is_empty() => Ok(()),
            (false, _) => write_client(req.send_timeout, client, part).await,
        };
        if io.is_err() {
            return Err(broken(head, up, sent));
        }
        first = false;
        sent += part.len() as u64;
        body.decoded.clear();
        if done {
            return Ok(sent);
        }
    }
}

/// Forward one request of an HTTP/2 client and relay the answer on its stream: the same
/// backends, pool, retries and header rules as [`forward`]; the body unframed (HTTP/2 frames
/// it itself: a chunked one is decoded) and written as the client's window allows, each part
/// within the send timeout.
pub async fn forward_h2(
    ups: &Upstreams,
    req: &Outgoing<'_>,
    client: &mut HttpSession,
) -> Result<Relayed, Error> {
    let (mut up, head_len) = exchange(ups, req).await.map_err(Error::Before)?;
    let parsed = with_response(&up.buf[..head_len], |status, version, _, hs| {
        let head = framing_of(status, version, hs, req)?;
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(status).ok()?;
        parts.version = http::Version::HTTP_2;
        let mut valid = true;
        for_client(hs, head.framing, req, false, |name, value| {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                (Ok(n), Ok(v)) => {
                    parts.headers.append(n, v);
                }
                _ => valid = false,
            }
        });
        req.finish.h2(&mut parts.headers);
        valid.then(|| (head, ResponseHeader::from(parts)))
    });
    let Some((mut head, resp)) = parsed else {
        return Err(Error::Before(Failure {
            backend: Some(up.backend),
            ..BAD_GATEWAY
        }));
    };
    up.buf.advance(head_len);
    client.set_write_timeout(Some(req.send_timeout));
    let no_body = matches!(head.framing, Framing::Empty | Framing::Length(0));
    if client
        .write_response_header(Box::new(resp), no_body)
        .is_err()
    {
        return Err(broken(&head, &up, 0));
    }
    let sent = if no_body {
        if !up.buf.is_empty() {
            // The backend sent more than the response: do not trust the connection again.
            head.upstream_keeps = false;
        }
        0
    } else {
        relay_body_h2(ups, &mut up, &mut head, client).await?
    };
    Ok(relayed(up, &head, sent, true))
}

/// The answer is relayed: pool the backend connection when its response allows it.
fn relayed(up: Answered, head: &ResponseHead, sent: u64, client_reusable: bool) -> Relayed {
    if head.upstream_keeps && head.framing != Framing::UntilClose {
        put_idle(up.addr, up.stream);
    }
    Relayed {
        status: head.status,
        body_bytes: sent,
        backend: up.backend,
        client_reusable,
    }
}

/// The body of [`forward_h2`]'s answer, as it arrives; how many body bytes were sent.
async fn relay_body_h2(
    ups: &Upstreams,
    up: &mut Answered,
    head: &mut ResponseHead,
    client: &mut HttpSession,
) -> Result<u64, Error> {
    let mut sent: u64 = 0;
    // HTTP/2 frames the body itself: a chunked one goes on decoded.
    let mut body = BodyEnd::new(head.framing, true);
    let mut available = std::mem::take(&mut up.buf);
    let mut eof = false;
    loop {
        let (take, done) = match eof {
            true => (0, true),
            false => body.feed(&available).map_err(|_| broken(head, up, sent))?,
        };
        if take < available.len() {
            // The backend sent more than the response: do not trust the connection again.
            head.upstream_keeps = false;
        }
        let data = match body.decode {
            true => Bytes::from(std::mem::take(&mut body.decoded)),
            false => available.split_to(take).freeze(),
        };
        if !data.is_empty() || done {
            let len = data.len() as u64;
            if client.write_body(data, done).await.is_err() {
                return Err(broken(head, up, sent));
            }
            sent += len;
        }
        if done {
            return Ok(sent);
        }
        available = read_more(ups, up)
            .await
            .map_err(|_| broken(head, up, sent))?;
        if available.is_empty() {
            if head.framing != Framing::UntilClose {
                return Err(broken(head, up, sent));
            }
            eof = true;
            head.upstream_keeps = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_empty_line_whatever_its_line_endings() {
        let h = b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody\r\n\r\n";
        assert_eq!(head_end(h), Some(25));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\nA: 1\n\nbody"), Some(22));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: 1\r\n"), None);
        // httparse skips empty lines before the status line; so does the search.
        assert_eq!(head_end(b"\r\n\r\nHTTP/1.1 204 No\r\n\r\n"), Some(23));
        assert_eq!(head_end(b"\r\n"), None);
        assert_eq!(head_end(b""), None);
        // The end found is where httparse finds it.
        let mut hs = [httparse::EMPTY_HEADER; 4];
        let parsed = httparse::Response::new(&mut hs).parse(h).unwrap();
        assert_eq!(parsed, httparse::Status::Complete(25));
    }

    #[test]
    fn status_codes_and_status_lines_in_the_making() {
        assert_eq!(status_code(b"HTTP/1.1 103 Early Hints\r\n"), Some(103));
        assert_eq!(status_code(b"\r\nHTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.1 2x0 OK\r\n"), None);
        assert_eq!(status_code(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert!(could_be_status_line(b""));
        assert!(could_be_status_line(b"\r\nHTT"));
        assert!(could_be_status_line(b"HTTP/1.1 200 O"));
        assert!(!could_be_status_line(b"SSH-2.0-OpenSSH"));
        assert!(has_bare_cr(b"HTTP/1.1 200 OK\rX"));
        assert!(!has_bare_cr(b"HTTP/1.1 200 OK\r"), "the LF may still come");
        assert!(!has_bare_cr(b"\r\nHTTP/1.1 200 OK\r\nA: b\r\n"));
        assert!(!could_be_status_line(b"HTTP/2 200"));
    }
}
