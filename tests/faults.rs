//! Faults around the edge, each against the real binary: a backend that dies mid-answer, stalls,
//! answers garbage or closes its pooled connections; WeChat slow, down or answering garbage
//! under a login load; a log pipe that closes; a body directory that goes away; the open-file
//! limit. For each: what the client gets, that clients beside it are unaffected, that memory
//! stays bounded, and that nothing is lost (access-log lines + dropped lines = answers).

mod common;

use common::wechat::{FakeWechat, Reply, APPID, SECRET};
use common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

/// How a backend stand-in misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Sends a head announcing 1000 bytes, 100 of them, then closes.
    DiesMidAnswer,
    /// Accepts connections and never reads or answers (what a `SIGSTOP`ped backend looks like
    /// from the network: the kernel still completes the handshake).
    Stalls,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Answers one request well on each connection, keep-alive, then closes it unannounced.
    ClosesPooledConnections,
}

async fn faulty_backend(fault: Fault) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            if fault == Fault::Stalls {
                held.push(s); // never read, never answered
                continue;
            }
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let answer: &[u8] = match fault {
                    Fault::DiesMidAnswer => {
                        let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
                        a.extend_from_slice(&[b'x'; 100]);
                        let _ = s.write_all(&a).await;
                        return;
                    }
                    Fault::Garbage => b"SSH-2.0-OpenSSH_9.6\r\n\r\n\x00\x01garbage",
                    _ => b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}",
                };
                let _ = s.write_all(answer).await;
                // Closes the connection (the pooled one, for ClosesPooledConnections).
            });
        }
    });
    (addr, task)
}

/// A request on a fresh connection: the status (0 when no head came), the body as far as it
/// came, and whether the body was complete.
async fn call(addr: SocketAddr, target: &str) -> (u16, Vec<u8>, bool) {
    let target = target.to_string();
    blocking(move || {
        let req = format!("GET {target} HTTP/1.1\r\nHost: h5.test\r\nConnection: close\r\n\r\n");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut all);
        let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
            return (0, all, false);
        };
        let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = all[end + 4..].to_vec();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let whole = length.is_none_or(|n| n == body.len());
        (status, body, whole)
    })
    .await
    .unwrap()
}

/// Static page loads beside the fault: all must be answered whole, each quickly.
fn bystanders(addr: SocketAddr, count: usize) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        for _ in 0..count {
            let t = Instant::now();
            let (status, _, whole) = call(addr, "/index.html").await;
            assert!(status == 200 && whole, "a bystander got {status}");
            slowest = slowest.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest
    })
}

/// `n` page loads, one connection each, all answered 200.
fn load_index(addr: SocketAddr, n: usize) {
    for _ in 0..n {
        let page = b"GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        assert_eq!(raw(addr, page).unwrap().status, 200);
    }
}

/// Access-log lines written so far (JSON lines on the edge's stdout).
fn logged(edge: &EdgeProc) -> usize {
    edge.stdout().lines().filter(|l| l.starts_with('{')).count()
}

/// Wait until the access log holds `want` lines, or fail: nothing may be lost.
async fn wait_logged(edge: &EdgeProc, want: usize, metrics: SocketAddr) {
    let t = Instant::now();
    loop {
        let dropped = blocking(move || scrape(metrics, "wxedge_access_log_dropped_lines_total"));
        let dropped = dropped.await.unwrap() as usize;
        let lines = logged(edge);
        if lines + dropped == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{lines} access-log lines + {dropped} dropped, {want} answers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn edge_with(env: Vec<(String, String)>) -> (EdgeProc, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let edge = blocking(move || {
        let m = metrics.to_string();
        let mut e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        e.extend([
            ("WXEDGE_METRICS_LISTEN", m.as_str()),
            ("WXEDGE_ACCESS_LOG", "json"),
        ]);
        start_edge(&e)
    })
    .await
    .unwrap();
    (edge, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_faults_get_clear_answers_and_leave_other_clients_alone() {
    for fault in [
        Fault::DiesMidAnswer,
        Fault::Stalls,
        Fault::Garbage,
        Fault::ClosesPooledConnections,
    ] {
        let (backend, _task) = faulty_backend(fault).await;
        let (edge, metrics) = edge_with(vec![
            ("WXEDGE_BACKEND".into(), format!("http://{backend}")),
            ("WXEDGE_READ_TIMEOUT_MS".into(), "500".into()),
            // Each fault is met by requests, not by a health check first.
            ("WXEDGE_HEALTH_CHECK_INTERVAL_MS".into(), "0".into()),
        ])
        .await;
        let addr = edge.addr();
        let before_lines = logged(&edge);
        let rss_before = rss_kib(&edge);
        let beside = bystanders(addr, 40);
        let mut answers = Vec::new();
        for round in 0..10 {
            let calls: Vec<_> = (0..10)
                .map(|i| {
                    let target = format!("/api/fault/{round}/{i}");
                    tokio::spawn(async move { call(addr, &target).await })
                })
                .collect();
            for c in calls {
                answers.push(c.await.unwrap());
            }
        }
        let slowest = beside.await.unwrap();
        for (status, body, whole) in &answers {
            let text = String::from_utf8_lossy(body);
            match fault {
                // The head was relayed; the body stops where the backend's did, and the
                // connection closes so the client knows it is incomplete.
                Fault::DiesMidAnswer => assert!(
                    *status == 200 && !whole && body.len() == 100,
                    "{fault:?}: {status} {}",
                    body.len()
                ),
                Fault::Stalls => assert!(
                    *status == 504 && text.contains("gateway_timeout"),
                    "{fault:?}: {status} {text}"
                ),
                Fault::Garbage => assert!(
                    *status == 502 && text.contains("bad_gateway"),
                    "{fault:?}: {status} {text}"
                ),
                // A pooled connection the backend closed is retried on a fresh one.
                Fault::ClosesPooledConnections => {
                    assert!(*status == 200 && *whole, "{fault:?}: {status} {text}")
                }
            }
        }
        assert!(
            slowest < Duration::from_secs(1),
            "{fault:?}: a bystander waited {slowest:?}"
        );
        let grew = rss_kib(&edge).saturating_sub(rss_before) / 1024;
        assert!(grew < 16, "{fault:?}: memory grew {grew} MiB");
        // 100 faulty calls and 40 bystanders: 140 lines.
        wait_logged(&edge, before_lines + 140, metrics).await;
        println!("{fault:?}: answered as expected; slowest bystander {slowest:?}; +{grew} MiB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_faults_under_a_login_load_end_in_a_retry_and_nothing_hangs() {
    let wx = FakeWechat::start().await;
    let dead_port = free_port(); // nothing listens there: WeChat is down
    for (name, api_base) in [
        ("slow", wx.base()),
        ("garbage", wx.base()),
        ("down", format!("http://127.0.0.1:{dead_port}")),
    ] {
        for i in 0..30 {
            let reply = match name {
                "slow" => Reply::Delay(3000, Box::new(common::wechat::token("o-late"))),
                _ => Reply::Raw(200, "<html>502 Bad Gateway</html>"),
            };
            wx.script(&format!("{name}{i}"), vec![reply]);
        }
        let (edge, metrics) = edge_with(vec![
            ("WX_APPID".into(), APPID.into()),
            ("WX_SECRET".into(), SECRET.into()),
            ("WX_API_BASE".into(), api_base),
            ("WX_TIMEOUT_MS".into(), "500".into()),
            ("WXEDGE_COOKIE_SECURE".into(), "false".into()),
            // Thirty people's logins from the test's one address.
            ("WXEDGE_LIMIT_LOGIN_RATE".into(), "0".into()),
        ])
        .await;
        let addr = edge.addr();
        let before_lines = logged(&edge);
        let beside = bystanders(addr, 30);
        let loads: Vec<_> = (0..30)
            .map(|i| {
                let target = format!("/pages/index/index?code={name}{i}&state=s");
                tokio::spawn(async move {
                    let t = Instant::now();
                    (call(addr, &target).await, t.elapsed())
                })
            })
            .collect();
        for l in loads {
            let ((status, body, _), took) = l.await.unwrap();
            // The page reloads once without the spent code, so the frontend asks WeChat again.
            assert_eq!(status, 302, "{name}: {}", String::from_utf8_lossy(&body));
            assert!(
                took < Duration::from_secs(2),
                "{name}: a login waited {took:?}"
            );
        }
        let slowest = beside.await.unwrap();
        assert!(
            slowest < Duration::from_secs(1),
            "{name}: a bystander waited {slowest:?}"
        );
        wait_logged(&edge, before_lines + 60, metrics).await;
        let errors = blocking(move || {
            let text = metrics_text(metrics);
            text.lines()
                .filter(|l| {
                    l.starts_with("wxedge_wechat_exchanges_total{")
                        && l.contains("result=\"error\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        });
        assert_eq!(
            errors.await.unwrap(),
            30.0,
            "{name}: each failed exchange counted once"
        );
    }
}

#[test]
fn a_closed_log_pipe_loses_no_answers_and_counts_the_lines() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut cmd, _dir) = command(
        &[
            ("WXEDGE_LISTEN", &listen),
            ("WXEDGE_METRICS_LISTEN", &metrics),
            ("WXEDGE_ACCESS_LOG", "json"),
        ],
        &[],
    );
    cmd.stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut log = BufReader::new(child.stdout.take().unwrap());
    let addr: SocketAddr = listen.parse().unwrap();
    let t = Instant::now();
    let page = b"GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    while raw(addr, page).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the edge did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut line = String::new();
    log.read_line(&mut line).unwrap();
    assert!(line.starts_with('{'), "an access-log line: {line}");
    // Whoever read the log goes away: the pipe has no reader.
    drop(log);
    let metrics: SocketAddr = metrics.parse().unwrap();
    let dropped_before = scrape(metrics, "wxedge_access_log_dropped_lines_total");
    load_index(addr, 100);
    let t = Instant::now();
    loop {
        let dropped = scrape(metrics, "wxedge_access_log_dropped_lines_total") - dropped_before;
        if dropped >= 100.0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "only {dropped} of 100 lines counted as dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the edge died with its log pipe"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_directory_that_goes_away_is_a_500_for_large_bodies_only() {
    let backend = Backend::start("b").await;
    let dir = temp_dir("bodies");
    let (edge, _metrics) = edge_with(vec![
        ("WXEDGE_BACKEND".into(), backend.url()),
        ("WXEDGE_BODY_TEMP_DIR".into(), dir.display().to_string()),
    ])
    .await;
    std::fs::remove_dir_all(&dir).unwrap(); // checked at start-up; gone now
    let addr = edge.addr();
    let post = |len: usize| {
        let mut req = format!("POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").into_bytes();
        req.extend(std::iter::repeat_n(b'z', len));
        blocking(move || raw(addr, &req).unwrap())
    };
    let big = post(100 * 1024).await.unwrap();
    assert_eq!(big.status, 500);
    assert!(big.text().contains("could not be stored"), "{}", big.text());
    assert!(big.text().contains("\"internal_error\""), "{}", big.text());
    let small = post(1024).await.unwrap();
    assert_eq!(
        small.status, 200,
        "a body inside the memory buffer needs no file"
    );
    assert_eq!(backend.seen().len(), 1);
    assert!(
        edge.stderr().contains("cannot create a temporary file"),
        "the cause is logged"
    );
}

#[test]
fn at_the_open_file_limit_new_connections_are_closed_at_once_and_the_edge_goes_on() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (cmd, _dir) = command(&[("WXEDGE_LISTEN", &listen)], &[]);
    // The same program under a low open-file limit (soft and hard): max_connections comes out
    // at its floor, 64 ((200 - 128) / 2 is less).
    let mut shell = std::process::Command::new("sh");
    shell
        .arg("-c")
        .arg("ulimit -n 200 && exec \"$0\"")
        .arg(cmd.get_program())
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = shell.spawn().unwrap();
    let addr: SocketAddr = listen.parse().unwrap();
    let get = b"GET /_wxedge/healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let t = Instant::now();
    while raw(
        addr,
        b"GET /_wxedge/healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the edge did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    // 90 clients stay connected: the first 64 are served, the rest closed at once.
    let served = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::new();
    for _ in 0..90 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = std::io::Write::write_all(&mut s, get);
        let mut head = [0u8; 12];
        if std::io::Read::read_exact(&mut s, &mut head).is_ok() && &head == b"HTTP/1.1 200" {
            served.fetch_add(1, Ordering::Relaxed);
            held.push(s);
        }
    }
    let n = served.load(Ordering::Relaxed);
    assert_eq!(n, 64, "connections served at a limit of 64");
    // When they go, new clients are served again: nothing leaked, nothing stuck.
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    load_index(addr, 50);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the edge is still running"
    );
    let _ = child.kill();
    let _ = child.wait();
}
