//! The front door (src/front, src/proxy/forward.rs) against a scripted backend that answers
//! in every framing HTTP/1.1 allows, HTTP/1.0 clients, upgrades, and connections that carry
//! every kind of answer in turn.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// What the scripted backend does for one request: the raw answer, and whether to close the
/// connection afterwards (without saying so in the answer).
type Script = Arc<dyn Fn(&str, &str) -> (Vec<u8>, bool) + Send + Sync>;

/// Request heads and bodies as the backend received them.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

struct ScriptedBackend {
    addr: SocketAddr,
    requests: Received,
    connections: Arc<AtomicUsize>,
}

impl ScriptedBackend {
    fn start(script: Script) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, c) = (requests.clone(), connections.clone());
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, script) = (r.clone(), script.clone());
                std::thread::spawn(move || serve(sock, r, script));
            }
        });
        ScriptedBackend {
            addr,
            requests,
            connections,
        }
    }

    /// A backend giving every request `200` with `body`, closing after each answer if `close`.
    fn answering(body: &'static str, close: bool) -> ScriptedBackend {
        ScriptedBackend::start(Arc::new(move |_m: &str, _t: &str| {
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            (answer.into_bytes(), close)
        }))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<(String, Vec<u8>)> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(mut sock: TcpStream, seen: Received, script: Script) {
    let mut buf = Vec::new();
    while let Some((method, target, head, body)) = read_request(&mut sock, &mut buf) {
        seen.lock().unwrap().push((head, body));
        let (answer, close) = script(&method, &target);
        if sock.write_all(&answer).is_err() || close {
            return;
        }
    }
}

/// The next request on `sock` (method, target, head, body), or `None` when it ends first.
fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, String, String, Vec<u8>)> {
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    let mut first = head.split(' ');
    let (method, target) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    Some((method, target, head, body))
}

/// A client connection kept open across requests, reading each answer by its framing.
struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            sock,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.sock.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn send(&mut self, request: &[u8]) -> RawResponse {
        self.sock.write_all(request).unwrap();
        self.read(request.starts_with(b"HEAD "))
    }

    /// One whole response off the connection; what follows it stays buffered.
    fn read(&mut self, head_request: bool) -> RawResponse {
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            assert!(self.fill(), "connection closed before a response head");
        };
        let head = parse_response(&self.buf[..end], true).unwrap();
        let status = head.status;
        let bodyless = head_request || status == 204 || status == 304 || status < 200;
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        let len = head
            .header("content-length")
            .map(|v| v.parse::<usize>().unwrap());
        let total = if bodyless {
            end
        } else if chunked {
            // The last chunk ("0"), then trailer lines up to an empty line.
            loop {
                let body = &self.buf[end - 2..];
                if let Some(p) = body.windows(5).position(|w| w == b"\r\n0\r\n") {
                    if let Some(q) = body[p + 3..].windows(4).position(|w| w == b"\r\n\r\n") {
                        break end - 2 + p + 3 + q + 4;
                    }
                }
                assert!(self.fill(), "connection closed inside a chunked body");
            }
        } else if let Some(len) = len {
            while self.buf.len() < end + len {
                assert!(self.fill(), "connection closed inside a body");
            }
            end + len
        } else {
            while self.fill() {}
            self.buf.len()
        };
        let whole: Vec<u8> = self.buf.drain(..total).collect();
        parse_response(&whole, bodyless).unwrap()
    }

    fn is_closed(&mut self) -> bool {
        self.sock
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        self.buf.is_empty() && !self.fill()
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: h5.example.com\r\n\r\n").into_bytes()
}

#[test]
fn every_backend_framing_is_relayed_whole_on_a_kept_alive_connection() {
    let backend = ScriptedBackend::start(Arc::new(|_m: &str, target: &str| {
        let answer: &[u8] = match target {
            "/api/chunked" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            "/api/empty" => b"HTTP/1.1 204 No Content\r\nX-From: backend\r\n\r\n",
            "/api/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            "/api/close" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Request-ID: backend-made\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nConnection: keep-alive, X-Hop\r\nX-Hop: backend\r\nKeep-Alive: timeout=5\r\n\r\n0123456789",
        };
        (answer.to_vec(), target == "/api/close")
    }));
    // The backend counts the answers' connections: no active health check connects besides.
    let edge = start_edge(&[
        ("WXEDGE_BACKEND", &backend.url()),
        ("WXEDGE_HEALTH_CHECK_INTERVAL_MS", "0"),
    ]);
    let mut c = Client::connect(edge.addr());

    let r = c.send(&get("/api/chunked"));
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert!(r.header("content-length").is_none());
    let r = c.send(&get("/api/empty"));
    assert_eq!((r.status, r.header("x-from")), (204, Some("backend")));
    let r = c.send(&get("/api/continue"));
    assert_eq!(
        (r.status, r.text().as_str()),
        (201, "ok"),
        "interim 100 is not relayed"
    );
    let r = c.send(b"HEAD /api/len HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(r.body.is_empty());
    let r = c.send(&get("/api/len"));
    assert_eq!(r.text(), "0123456789");
    assert_ne!(
        r.header("x-request-id"),
        Some("backend-made"),
        "the edge's request id replaces the backend's"
    );
    let count = |name: &str| {
        r.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    };
    assert_eq!(count("x-request-id"), 1);
    // One `Date`, the edge's (nginx's rule: a backend's clock is not the client's business).
    assert_eq!(count("date"), 1);
    let date = httpdate::parse_http_date(r.header("date").unwrap()).unwrap();
    assert!(date > std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    // Hop-by-hop headers are the edge's own (none: keep-alive is HTTP/1.1's default); none
    // of the backend's is relayed.
    assert!(r.header("connection").is_none(), "{:?}", r.headers);
    assert!(
        r.header("x-hop").is_none() && r.header("keep-alive").is_none(),
        "{:?}",
        r.headers
    );
    // A body that ends when the backend closes: relayed whole, then the client connection ends.
    let r = c.send(&get("/api/close"));
    assert_eq!((r.status, r.text().as_str()), (200, "until the end"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
    // Five answers on one backend connection, the sixth (close-delimited) on a second.
    assert!(backend.connections.load(Ordering::SeqCst) <= 2);
}

#[test]
fn backend_garbage_is_a_502_and_a_body_cut_short_closes_the_client() {
    let backend = ScriptedBackend::start(Arc::new(|_m: &str, target: &str| match target {
        "/api/garbage" => (b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), true),
        "/api/two-lengths" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            true,
        ),
        "/api/short" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec(),
            true,
        ),
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            false,
        ),
    }));
    let edge = start_edge(&[("WXEDGE_BACKEND", &backend.url())]);
    // The client's connection stays after a 502 (as nginx's does).
    let mut c = Client::connect(edge.addr());
    for path in ["/api/garbage", "/api/two-lengths"] {
        let r = c.send(&get(path));
        assert_eq!(r.status, 502, "{path}");
        assert!(r.text().contains("bad_gateway"), "{path}: {}", r.text());
        assert_eq!(r.header("connection"), None, "{path}");
    }
    // Still usable after the 502s.
    assert_eq!(c.send(&get("/api/fine")).text(), "ok");
    let mut c = Client::connect(edge.addr());
    c.sock.write_all(&get("/api/short")).unwrap();
    let mut got = Vec::new();
    let _ = c.sock.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("only this"),
        "what came is relayed, then the connection is closed: {text}"
    );
}

#[test]
fn the_backend_head_is_judged_once_whole_and_never_waited_for_when_it_cannot_be_one() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let after = |interim: &[u8]| [interim, OK].concat();
    let backend = ScriptedBackend::start(Arc::new(move |_m: &str, target: &str| match target {
        // Not HTTP, no empty line, and the connection stays open: nothing more could help.
        "/api/not-http" => (b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(), false),
        // A bare CR ends no line (RFC 9112 §2.2): no head can follow, and the backend
        // keeps the connection open.
        "/api/bare-cr" => (
            b"HTTP/1.1 200 OK\rContent-Length: 2\r\r\nok".to_vec(),
            false,
        ),
        // Bare LF line ends, as httparse (and nginx) accept them.
        "/api/lf" => (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok".to_vec(), false),
        // An interim answer that is not a well-formed head.
        "/api/bad-interim" => (after(b"HTTP/1.1 103 Early Hints\r\nno colon\r\n\r\n"), true),
        // A good one, then the answer.
        "/api/hints" => (
            after(b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n"),
            false,
        ),
        _ => (OK.to_vec(), false),
    }));
    let edge = start_edge(&[("WXEDGE_BACKEND", &backend.url())]);
    let started = std::time::Instant::now();
    let r = Client::connect(edge.addr()).send(&get("/api/not-http"));
    assert_eq!(r.status, 502);
    // Not after the backend read timeout (60 s).
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let started = std::time::Instant::now();
    let r = Client::connect(edge.addr()).send(&get("/api/bare-cr"));
    assert_eq!(r.status, 502);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let r = Client::connect(edge.addr()).send(&get("/api/lf"));
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = Client::connect(edge.addr()).send(&get("/api/bad-interim"));
    assert_eq!(r.status, 502, "{}", r.text());
    let r = Client::connect(edge.addr()).send(&get("/api/hints"));
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("link"), None, "interim answers are not relayed");
}

/// Ten POSTs on one client connection, bodies `{"n":0}` to `{"n":9}`: each must be `200 ok`.
fn ten_saves_answered_ok(edge: SocketAddr) {
    let mut c = Client::connect(edge);
    for i in 0..10 {
        let body = format!("{{\"n\":{i}}}");
        let req = format!(
            "POST /api/save HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = c.send(req.as_bytes());
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
    }
}

#[test]
fn a_pooled_connection_the_backend_dropped_is_retried_once_on_a_fresh_one() {
    // The backend closes every connection after one answer without saying so, as a backend
    // with a short keep-alive timeout does: the edge pools each and finds it dead next time.
    let backend = ScriptedBackend::answering("ok", true);
    let edge = start_edge(&[("WXEDGE_BACKEND", &backend.url())]);
    ten_saves_answered_ok(edge.addr());
    let seen = backend.requests();
    assert_eq!(
        seen.len(),
        10,
        "each request reached the backend exactly once"
    );
    for (i, (_, body)) in seen.iter().enumerate() {
        assert_eq!(body, format!("{{\"n\":{i}}}").as_bytes());
    }
}

#[test]
fn a_pooled_connection_closed_as_the_request_arrives_is_retried_on_the_same_backend() {
    // The race behind the test above, made certain: the backend answers the first request of
    // each connection, then reads the next one and closes without a word (its keep-alive
    // timer fired as the request crossed it). It never acted on that request, so the edge
    // sends it again on a fresh connection, whatever the method, to the same backend.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let answered: Received = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (a, d) = (answered.clone(), dropped.clone());
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            let (a, d) = (a.clone(), d.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some((_, _, head, body)) = read_request(&mut sock, &mut buf) {
                    a.lock().unwrap().push((head, body));
                    let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
                if read_request(&mut sock, &mut buf).is_some() {
                    d.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let edge = start_edge(&[("WXEDGE_BACKEND", &format!("http://{backend}"))]);
    ten_saves_answered_ok(edge.addr());
    let seen = answered.lock().unwrap().clone();
    let bodies: Vec<String> = seen
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(bodies, expected, "each request answered once, in order");
    assert!(
        dropped.load(Ordering::SeqCst) >= 1,
        "the edge reused a pooled connection at least once (else this tests nothing)"
    );
}

#[test]
fn one_connection_carries_files_replies_and_api_calls_in_turn() {
    let backend = ScriptedBackend::answering("pong", false);
    let edge = start_edge(&[("WXEDGE_BACKEND", &backend.url())]);
    let index = std::fs::read(fixture_dist().join("index.html")).unwrap();
    let mut c = Client::connect(edge.addr());
    for _ in 0..2 {
        let r = c.send(&get("/index.html"));
        assert_eq!((r.status, &r.body), (200, &index));
        let r = c.send(&get("/_wxedge/healthz"));
        assert_eq!(r.status, 200, "an ops reply on the same connection");
        let r = c.send(&get("/api/ping"));
        assert_eq!(r.text(), "pong");
        let r = c.send(b"GET /index.html HTTP/1.1\r\nHost: h\r\nRange: bytes=0-4\r\n\r\n");
        assert_eq!((r.status, &r.body[..]), (206, &index[..5]));
        let r = c.send(&get("/nope.js"));
        assert_eq!(r.status, 404);
    }
    // Pipelined: three requests in one write, three answers in order.
    let mut three = get("/index.html");
    three.extend_from_slice(&get("/api/ping"));
    three.extend_from_slice(b"GET /_wxedge/healthz HTTP/1.1\r\nHost: h\r\n\r\n");
    c.sock.write_all(&three).unwrap();
    assert_eq!(c.read(false).body, index);
    assert_eq!(c.read(false).text(), "pong");
    assert_eq!(c.read(false).status, 200);
}

#[test]
fn http10_and_http11_clients_get_a_file_with_the_same_headers() {
    let edge = start_edge(&[]);
    let strip = |r: &RawResponse| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .filter(|(k, _)| !["date", "x-request-id", "connection"].contains(&k.as_str()))
            .collect();
        h.sort();
        h
    };
    for (path, extra) in [
        ("/index.html", ""),
        ("/assets/index-bydhfUo3.js", "Accept-Encoding: gzip\r\n"),
        (
            "/assets/index-bydhfUo3.js",
            "Accept-Encoding: gzip, deflate, br\r\n",
        ),
        ("/assets/uni.424060a0.css", ""),
        ("/pages/some/route", "Accept: text/html\r\n"),
    ] {
        let short = Client::connect(edge.addr())
            .send(format!("GET {path} HTTP/1.1\r\nHost: h\r\n{extra}\r\n").as_bytes());
        let pingora = raw(
            edge.addr(),
            format!("GET {path} HTTP/1.0\r\nHost: h\r\n{extra}\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(short.status, 200, "{path}");
        assert_eq!(strip(&short), strip(&pingora), "{path} {extra}");
        assert_eq!(short.body, pingora.body, "{path} {extra}");
        // And revalidation, both ways.
        let etag = short.header("etag").unwrap().to_string();
        let revalidate = format!("If-None-Match: {etag}\r\n{extra}");
        let short304 = Client::connect(edge.addr())
            .send(format!("GET {path} HTTP/1.1\r\nHost: h\r\n{revalidate}\r\n").as_bytes());
        let pingora304 = raw(
            edge.addr(),
            format!("GET {path} HTTP/1.0\r\nHost: h\r\n{revalidate}\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!((short304.status, pingora304.status), (304, 304), "{path}");
        assert_eq!(strip(&short304), strip(&pingora304), "{path}");
    }
}

#[test]
fn a_body_on_a_static_get_is_never_read_as_the_next_request() {
    let edge = start_edge(&[]);
    // The "body" is itself a request: taking it for the next one would answer it.
    let smuggled = b"GET /_wxedge/healthz HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut req = format!(
        "GET /index.html HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    )
    .into_bytes();
    req.extend_from_slice(smuggled);
    req.extend_from_slice(b"GET /index.html HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let mut c = Client::connect(edge.addr());
    c.sock.write_all(&req).unwrap();
    let mut got = Vec::new();
    let _ = c.sock.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // Answering the next request or closing are both fine; answering the body is not.
    assert!(
        !text.contains("\"status\":\"ok\""),
        "the body was served as a request: {text}"
    );
    assert!(text.matches("HTTP/1.1 ").count() <= 2, "{text}");
}

#[test]
fn host_lines_rfc_9112_refuses_are_a_400_that_ends_the_connection_on_every_path() {
    let backend = ScriptedBackend::answering("ok", false);
    let edge = start_edge(&[("WXEDGE_BACKEND", &backend.url())]);
    let hosts: [(&str, &[u8]); 4] = [
        ("no Host", b""),
        (
            "two Hosts",
            b"Host: h5.example.com\r\nHost: admin.internal\r\n",
        ),
        ("a space in Host", b"Host: h5.example.com evil\r\n"),
        ("a path in Host", b"Host: h5.example.com/x\r\n"),
    ];
    // A static file, an API call, an ops endpoint.
    for path in ["/index.html", "/api/ping", "/_wxedge/healthz"] {
        for (what, host_lines) in hosts {
            let mut c = Client::connect(edge.addr());
            let mut req = format!("GET {path} HTTP/1.1\r\n").into_bytes();
            req.extend_from_slice(host_lines);
            req.extend_from_slice(b"\r\n");
            // A well-formed request right behind it must not be answered on this connection.
            req.extend_from_slice(&get("/index.html"));
            let r = c.send(&req);
            assert_eq!(r.status, 400, "{what} on {path}: {}", r.text());
            // Pingora refuses two Hosts itself (an empty 400) before the edge sees the request;
            // the edge's own refusals say why in JSON.
            if what != "two Hosts" {
                assert!(r.text().contains("bad_request"), "{what}: {}", r.text());
            }
            assert_eq!(r.header("connection"), Some("close"), "{what} on {path}");
            assert!(c.is_closed(), "{what} on {path}: connection kept open");
        }
    }
    assert!(
        backend.requests().is_empty(),
        "a refused request reached the backend: {:?}",
        backend.requests()
    );

    // What RFC 9112 allows still passes: HTTP/1.0 without Host, an IPv6 literal with a port.
    let mut c = Client::connect(edge.addr());
    let r = c.send(b"GET /index.html HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    let mut c = Client::connect(edge.addr());
    let r = c.send(b"GET /api/ping HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
}

/// nginx's `client_header_timeout` and `client_body_timeout`: a head trickled in byte by byte
/// is cut at the whole-head deadline (every read does not restart it), and a body that stops
/// arriving is cut at the between-reads deadline; neither reaches the backend.
#[test]
fn trickled_heads_and_stalled_bodies_are_cut_at_their_deadlines() {
    let backend = ScriptedBackend::answering("ok", false);
    let edge = start_edge(&[
        ("WXEDGE_BACKEND", &backend.url()),
        ("WXEDGE_CLIENT_HEADER_TIMEOUT_MS", "1000"),
        ("WXEDGE_CLIENT_BODY_TIMEOUT_MS", "700"),
    ]);
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(edge.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let head = b"GET /index.html HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed_at = None;
    for &b in head.iter() {
        if s.write_all(&[b]).is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                closed_at = Some(started.elapsed());
                break;
            }
            Ok(_) => panic!("the trickled head was answered"),
            Err(_) => {} // nothing yet
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let closed_at = closed_at.expect("a head trickled over ~5 s must be cut");
    assert!(
        closed_at >= Duration::from_millis(900) && closed_at < Duration::from_millis(2500),
        "cut after {closed_at:?}, the deadline is 1 s for the whole head"
    );

    let mut s = TcpStream::connect(edge.addr()).unwrap();
    s.write_all(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let waited = started.elapsed();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_millis(3000),
        "a stalled body is cut after the body deadline, not {waited:?}"
    );
    assert!(
        backend.requests.lock().unwrap().is_empty(),
        "nothing reached the backend"
    );
}

/// `Expect: 100-continue`: the client hears `100 Continue` before it sends the body, on the
/// and the backend never sees the expectation.
#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let backend = ScriptedBackend::answering("ok", false);
    let edge = start_edge(&[("WXEDGE_BACKEND", &backend.url())]);
    let mut c = Client::connect(edge.addr());
    c.sock
        .write_all(b"POST /api/upload HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    let interim = c.read(false);
    assert_eq!(interim.status, 100);
    c.sock.write_all(b"hello").unwrap();
    let r = c.read(false);
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let seen = backend.requests.lock().unwrap().clone();
    let (head, body) = seen.last().unwrap();
    assert_eq!(body, b"hello");
    assert!(!head.to_ascii_lowercase().contains("expect"), "{head}");
    // Still one connection, still usable.
    assert_eq!(c.send(&get("/api/again")).text(), "ok");
}

/// HTTP/1.0 clients cannot read chunked framing: a chunked answer reaches them decoded and
/// ended by closing the connection (nginx does the same); a length-framed one keeps a
/// connection the client asked to keep (`Connection: keep-alive` said back, as HTTP/1.0
/// needs), and no framing line of the backend's is relayed.
#[test]
fn http10_clients_get_chunked_answers_decoded_and_keep_alive_said_back() {
    let backend = ScriptedBackend::start(Arc::new(|_m: &str, target: &str| {
        let answer: &[u8] = match target {
            "/api/chunked" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        };
        (answer.to_vec(), false)
    }));
    let edge = start_edge(&[("WXEDGE_BACKEND", &backend.url())]);
    let get10 = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.0\r\nHost: h\r\n{extra}\r\n").into_bytes()
    };
    // Chunked, the client asked to keep the connection: decoded, then closed.
    let mut c = Client::connect(edge.addr());
    c.sock
        .write_all(&get10("/api/chunked", "Connection: keep-alive\r\n"))
        .unwrap();
    let mut got = Vec::new();
    c.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.sock.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert_eq!(body, "hello world", "{text}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // A length: kept alive on request, said back, and the connection serves the next one.
    let mut c = Client::connect(edge.addr());
    for _ in 0..2 {
        let r = c.send(&get10("/api/len", "Connection: keep-alive\r\n"));
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // Without asking, HTTP/1.0 closes after the answer.
    let r = c.send(&get10("/api/len", ""));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
    // The backend heard HTTP/1.1 with the edge's own framing lines each time.
    for (head, _) in backend.requests() {
        assert!(head.contains(" HTTP/1.1\r\n"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("keep-alive"), "{head}");
    }
}

/// A WebSocket-style backend: `/ws/echo` switches (saying something first) and echoes until
/// the client stops sending, then says `bye` and closes; `/ws/declined` refuses the upgrade;
/// `/ws/no-protocol` switches to no named protocol, `/ws/h2c` to one nobody asked for;
/// `/ws/quiet` switches and says nothing.
fn upgrade_backend() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Received = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let Some((_, target, head, _)) = read_request(&mut sock, &mut buf) else {
                    return;
                };
                let switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                let mut after = Vec::new();
                match target.as_str() {
                    "/api/ws/echo" => {
                        sock.write_all(switch).unwrap();
                        sock.write_all(b"[hello]").unwrap();
                        after.extend_from_slice(&buf);
                        sock.write_all(&buf).unwrap();
                        let mut chunk = [0u8; 4096];
                        loop {
                            match sock.read(&mut chunk) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    after.extend_from_slice(&chunk[..n]);
                                    sock.write_all(&chunk[..n]).unwrap();
                                }
                            }
                        }
                        let _ = sock.write_all(b"[bye]");
                    }
                    "/api/ws/declined" => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno");
                        std::thread::sleep(Duration::from_secs(5));
                    }
                    "/api/ws/no-protocol" => {
                        let _ = sock.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
                        );
                        std::thread::sleep(Duration::from_secs(5));
                    }
                    "/api/ws/h2c" => {
                        let _ = sock.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
                        std::thread::sleep(Duration::from_secs(5));
                    }
                    _ => {
                        let _ = sock.write_all(switch);
                        let mut chunk = [0u8; 64];
                        let _ = sock.read(&mut chunk);
                    }
                }
                log.lock().unwrap().push((head, after));
            });
        }
    });
    (addr, seen)
}

fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-WX-OpenID: evil\r\n\r\n"
    )
    .into_bytes()
}

/// Upgrades are tunnelled by the front door: the backend's `101` and its `Upgrade` reach the
/// client, bytes flow both ways as they come (what the client sent right behind its request
/// first; what the backend said right after its head too), a half-close travels through and
/// the other side can still finish; an upgrade the backend declines is an ordinary answer
/// after which the connection closes; a `101` naming no protocol or another one is a 502; and a tunnel
/// where nothing moves for the backend read timeout is closed.
#[test]
fn upgrades_become_tunnels_both_ways_until_both_sides_are_done() {
    let (backend, seen) = upgrade_backend();
    let edge = start_edge(&[
        ("WXEDGE_BACKEND", &format!("http://{backend}")),
        ("WXEDGE_READ_TIMEOUT_MS", "1500"),
    ]);
    // Early bytes ride with the request, in one write.
    let mut c = Client::connect(edge.addr());
    let mut first = upgrade_request("/api/ws/echo");
    first.extend_from_slice(b"[early]");
    c.sock.write_all(&first).unwrap();
    let r = c.read(true);
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(r.header("connection"), Some("upgrade"));
    assert!(r.header("sec-websocket-accept").is_some());
    assert!(r.header("x-request-id").is_some());
    c.sock.write_all(b"[ping]").unwrap();
    let want = b"[hello][early][ping]";
    let mut got = std::mem::take(&mut c.buf);
    c.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while got.len() < want.len() {
        let mut chunk = [0u8; 64];
        let n = c.sock.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "the tunnel closed early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, want);
    // The client is done sending; the backend hears it and still has its last word.
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.sock.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"[bye]");
    let logged = seen.lock().unwrap().clone();
    let (head, after) = &logged[0];
    assert_eq!(after, b"[early][ping]");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    assert!(head.contains("sec-websocket-key: "), "{head}");
    assert!(
        !head.contains("evil"),
        "a forged identity went through the upgrade: {head}"
    );

    // Declined: relayed, then the connection closes.
    let r = raw(edge.addr(), &upgrade_request("/api/ws/declined")).unwrap();
    assert_eq!((r.status, r.text().as_str()), (403, "no"));
    assert_eq!(r.header("connection"), Some("close"));
    // A switch to nothing, or to another protocol than WebSocket.
    for path in ["/api/ws/no-protocol", "/api/ws/h2c"] {
        let r = raw(edge.addr(), &upgrade_request(path)).unwrap();
        assert_eq!(r.status, 502, "{path}");
    }
    // Quiet both ways: closed after the read timeout, not held.
    let started = std::time::Instant::now();
    let mut c = Client::connect(edge.addr());
    c.sock.write_all(&upgrade_request("/api/ws/quiet")).unwrap();
    assert_eq!(c.read(true).status, 101);
    let mut rest = Vec::new();
    c.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.sock.read_to_end(&mut rest).unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(6),
        "a quiet tunnel closes after the read timeout, not {waited:?}"
    );
}
