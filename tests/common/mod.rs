//! Test harness: the real `wxedge` binary on a loopback port, a real HTTP/1.1 backend
//! stand-in, and a raw client for requests no well-behaved client library would send.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub mod nginx;
pub mod redis_server;
pub mod relay;
pub mod wechat;

/// A loopback port for a server the test starts (the edge, nginx, Redis), which binds it later.
///
/// Not a port from `bind(":0")`: those come from the kernel's ephemeral range, the same range
/// outgoing connections take their local ports from, so between our probe and the server's
/// bind another test's connection to a backend may take it (CI saw "Address already in use").
/// Ports below the ephemeral range are never taken that way; a per-process counter starting at
/// an offset from the pid keeps parallel tests (and test binaries) apart, and each candidate is
/// probed before it is handed out.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let Some((low, high)) = below_ephemeral_range() else {
        let probe = StdListener::bind("127.0.0.1:0").unwrap();
        return probe.local_addr().unwrap().port();
    };
    let span = high - low;
    let start = std::process::id() as usize * 997;
    for _ in 0..span {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if StdListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// The ports from 10000 up to the kernel's ephemeral range (32768 by default), if there is room.
fn below_ephemeral_range() -> Option<(usize, usize)> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    (ephemeral_low > 12000).then_some((10000, ephemeral_low))
}

/// The edge's resident memory, KiB.
pub fn rss_kib(edge: &EdgeProc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", edge.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The metrics listener's whole text.
pub fn metrics_text(metrics: SocketAddr) -> String {
    let get = b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n";
    raw(metrics, get).unwrap().text()
}

/// One metric's value (name with its labels, as printed) from the metrics listener.
pub fn scrape(metrics: SocketAddr, name: &str) -> f64 {
    metrics_text(metrics)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in the metrics"))
}

/// Wait until the metric `name` is `want` (polling), or fail after `limit`.
pub async fn wait_for_metric(metrics: SocketAddr, name: &'static str, want: f64, limit: Duration) {
    let start = Instant::now();
    loop {
        let got = tokio::task::spawn_blocking(move || scrape(metrics, name))
            .await
            .unwrap();
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{name} is {got}, not {want}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn fixture_dist() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/uniapp-h5/dist");
    assert!(
        p.join("index.html").is_file(),
        "the uni-app fixture is missing at {}",
        p.display()
    );
    p.canonicalize().unwrap()
}

pub fn repo_dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist")
}

/// A self-signed certificate for `name` and its key, as PEM files in `dir`: their paths, and the
/// key's public half (DER) for tests that pin it.
pub fn self_signed_certificate(dir: &Path, name: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (
        c.display().to_string(),
        k.display().to_string(),
        key.public_key_der(),
    )
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "wxedge-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running edge; killed when dropped.
pub struct EdgeProc {
    pub port: u16,
    pub child: Child,
    pub dir: PathBuf,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

impl EdgeProc {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    /// Wait for exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pump(mut r: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

pub fn command(env: &[(&str, &str)], args: &[&str]) -> (Command, PathBuf) {
    let dir = temp_dir("edge");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxedge"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("WXEDGE_PID_FILE", dir.join("wxedge.pid"))
        .env("WXEDGE_UPGRADE_SOCK", dir.join("upgrade.sock"))
        .env("WXEDGE_DIST", fixture_dist())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd, dir)
}

/// Start the edge with these variables on a fresh port and wait until it answers.
pub fn start_edge(env: &[(&str, &str)]) -> EdgeProc {
    start_edge_args(env, &[])
}

pub fn start_edge_args(env: &[(&str, &str)], args: &[&str]) -> EdgeProc {
    let edge = spawn_edge(env, args);
    wait_healthy(&edge);
    // The suites compare encoded answers: start them once every variant exists (the
    // background compression itself is tested in tests/static_files.rs).
    wait_compressed(&edge);
    edge
}

/// Start the edge on a fresh port without waiting for anything.
pub fn spawn_edge(env: &[(&str, &str)], args: &[&str]) -> EdgeProc {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all: Vec<(&str, &str)> = vec![("WXEDGE_LISTEN", listen.as_str())];
    all.extend_from_slice(env);
    let (mut cmd, dir) = command(&all, args);
    let mut child = cmd.spawn().expect("wxedge binary");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    pump(child.stdout.take().unwrap(), stdout.clone());
    pump(child.stderr.take().unwrap(), stderr.clone());
    EdgeProc {
        port,
        child,
        dir,
        stdout,
        stderr,
    }
}

/// Wait until the edge's background compression of the dist is done (`/_wxedge/readyz`
/// counts it), for tests that look at encoded answers.
pub fn wait_compressed(edge: &EdgeProc) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if let Ok(r) = raw(
            edge.addr(),
            b"GET /_wxedge/readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        ) {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if v["compressed_files"].is_u64() && v["compressed_files"] == v["files_to_compress"] {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the dist's compression did not finish; stderr:\n{}",
        edge.stderr()
    );
}

pub fn wait_healthy(edge: &EdgeProc) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if let Ok(r) = raw(
            edge.addr(),
            b"GET /_wxedge/healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        ) {
            if r.status == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("edge did not become healthy; stderr:\n{}", edge.stderr());
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send bytes as they are (the request must carry `Connection: close`) and parse the answer.
pub fn raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf, request.starts_with(b"HEAD "))
}

pub fn parse_response(buf: &[u8], head: bool) -> std::io::Result<RawResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked && !head {
        body = dechunk(&body);
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..pos])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[pos + 2 + size + 2..];
    }
    out
}

/// GET `target` from an async test (the raw client runs on a blocking thread), with its duration.
pub async fn get_timed(addr: SocketAddr, target: &str) -> (RawResponse, Duration) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = raw(addr, req.as_bytes()).unwrap_or_else(|e| panic!("{req}: {e}"));
        (r, t.elapsed())
    })
    .await
    .unwrap()
}

/// GET with extra headers, via the raw client.
pub fn get(edge: &EdgeProc, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    request(edge, "GET", path, headers, b"")
}

pub fn request(
    edge: &EdgeProc,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(edge.addr(), &bytes).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Names lower-cased, in arrival order (duplicates kept).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP/1.1 backend on loopback that records what it receives.
///
/// `/api/slow?ms=N` answers after N ms; `/api/ws` accepts a WebSocket upgrade and echoes
/// bytes; anything else answers 200 JSON naming the backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An application handler: `Some((status, json))` answers the request, `None` falls back to echo.
pub type Handler = Arc<dyn Fn(&Seen) -> Option<(u16, String)> + Send + Sync>;

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_with(name, Arc::new(|_: &Seen| None)).await
    }

    pub async fn start_with(name: &str, handler: Handler) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c, n) = (seen.clone(), connections.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_conn(sock, s.clone(), n.clone(), handler.clone()));
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            seen,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_conn(
    mut sock: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    name: String,
    handler: Handler,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 8192];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < len {
                let mut chunk = [0u8; 8192];
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            body = buf.drain(..len).collect();
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                if let Some(p) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                    let raw: Vec<u8> = buf.drain(..p + 5).collect();
                    body = dechunk(&raw);
                    break;
                }
                let mut chunk = [0u8; 8192];
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
        let request = Seen {
            method: method.clone(),
            target: target.clone(),
            headers: headers.clone(),
            body: body.clone(),
        };
        seen.lock().unwrap().push(request.clone());
        if let Some((status, json)) = handler(&request) {
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                json.len()
            );
            if sock.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }

        if target.starts_with("/api/ws")
            && find("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        {
            let resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: test\r\n\r\n";
            if sock.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            if !buf.is_empty() {
                let _ = sock.write_all(&buf).await;
            }
            let mut chunk = [0u8; 4096];
            while let Ok(n) = sock.read(&mut chunk).await {
                if n == 0 || sock.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
            }
            return;
        }
        if let Some(ms) = target
            .strip_prefix("/api/slow?ms=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let hdrs: HashMap<&str, &str> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let json = serde_json::json!({
            "backend": name, "method": method, "target": target, "headers": hdrs, "body_len": body.len(),
        })
        .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Backend: {name}\r\n\r\n{json}",
            json.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        if find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            return;
        }
    }
}
