//! Active backend health checks (`proxy.health_check`) through the real binary: a backend whose
//! checks fail leaves the rotation before requests meet it, and comes back when they pass;
//! `/_wxedge/readyz` and the metrics show each backend's state.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Checks every 100 ms: a backend is out within ~0.3 s of failing, back as fast.
const FAST_CHECKS: [(&str, &str); 4] = [
    ("WXEDGE_HEALTH_CHECK_INTERVAL_MS", "100"),
    ("WXEDGE_HEALTH_CHECK_TIMEOUT_MS", "500"),
    ("WXEDGE_HEALTH_CHECK_FAILS", "2"),
    ("WXEDGE_HEALTH_CHECK_PASSES", "2"),
];

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

/// A backend whose `/healthz` answers 200 or 503 as its switch says; any other request gets
/// the harness's answer naming the backend (`X-Backend`).
async fn switchable(name: &str) -> (Backend, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let switch = healthy.clone();
    let backend = Backend::start_with(
        name,
        Arc::new(move |s: &Seen| {
            (s.target == "/healthz").then(|| {
                if switch.load(Ordering::SeqCst) {
                    (200, "{\"ok\":true}".to_string())
                } else {
                    (503, "{\"ok\":false}".to_string())
                }
            })
        }),
    )
    .await;
    (backend, healthy)
}

/// Requests of the application (not the checks) a backend received.
fn api_calls(b: &Backend) -> usize {
    b.seen()
        .iter()
        .filter(|s| s.target.starts_with("/api/"))
        .count()
}

async fn readyz(addr: SocketAddr) -> (u16, Value) {
    let r = get_timed(addr, "/_wxedge/readyz").await.0;
    let v = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    (r.status, v)
}

/// Poll `/_wxedge/readyz` until `done` holds for it, up to 10 s; its last answer.
async fn wait_for(addr: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> (u16, Value) {
    let t = Instant::now();
    loop {
        let (status, v) = readyz(addr).await;
        if done(&v) {
            return (status, v);
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "waited 10 s for {what}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` API calls, each answered 200; who answered each.
async fn who(addr: SocketAddr, n: usize) -> Vec<String> {
    blocking(move || {
        (0..n)
            .map(|i| {
                let req =
                    format!("GET /api/who?n={i} HTTP/1.1\r\nHost: h5\r\nConnection: close\r\n\r\n");
                let r = raw(addr, req.as_bytes()).unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                r.header("x-backend").unwrap_or("?").to_string()
            })
            .collect()
    })
    .await
    .unwrap()
}

async fn metrics(addr: SocketAddr) -> String {
    blocking(move || {
        raw(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .text()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_failing_its_checks_leaves_the_rotation_and_comes_back() {
    let (a, _) = switchable("a").await;
    let (b, b_healthy) = switchable("b").await;
    let (a_name, b_name) = (a.addr.to_string(), b.addr.to_string());
    let list = format!("{},{}", a.url(), b.url());
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let m = metrics_addr.to_string();
    let edge = blocking(move || {
        let mut env = vec![
            ("WXEDGE_BACKEND", list.as_str()),
            ("WXEDGE_HEALTH_CHECK_PATH", "/healthz"),
            ("WXEDGE_METRICS_LISTEN", m.as_str()),
        ];
        env.extend(FAST_CHECKS);
        start_edge(&env)
    })
    .await
    .unwrap();
    let addr = edge.addr();
    assert!(
        edge.stderr().contains(
            "health checks every 100 ms (GET /healthz), out after 2 failed, back after 2 passed"
        ),
        "{}",
        edge.stderr()
    );

    // Both in: readyz lists them in the configured order, checks passing.
    let (status, v) = wait_for(addr, "both backends checked", |v| {
        v["backends"]
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|b| b["active_check"] == "passing"))
    })
    .await;
    assert_eq!(status, 200);
    for (i, name) in [&a_name, &b_name].into_iter().enumerate() {
        let s = &v["backends"][i];
        assert_eq!(s["backend"], name.as_str(), "{v:#}");
        assert_eq!(s["healthy"], true, "{v:#}");
        assert_eq!(s["consecutive_failures"], 0, "{v:#}");
        assert!(s["last_error"].is_null(), "{v:#}");
    }
    // The checks are GETs of the path, named as the backend (no proxy.host here).
    let check = b
        .seen()
        .into_iter()
        .find(|s| s.target == "/healthz")
        .unwrap();
    assert_eq!(check.method, "GET");
    assert_eq!(check.header("host"), Some(b_name.as_str()));
    assert_eq!(check.header("user-agent"), Some("wxedge-health-check"));
    let names = who(addr, 10).await;
    assert!(
        names.contains(&"a".to_string()) && names.contains(&"b".to_string()),
        "{names:?}"
    );

    // B's checks fail: the edge notices, and no request goes to B from then on.
    b_healthy.store(false, Ordering::SeqCst);
    let (status, v) = wait_for(addr, "b out of the rotation", |v| {
        v["backends"][1]["active_check"] == "failing"
    })
    .await;
    assert_eq!(status, 200, "a is still there: {v:#}");
    let s = &v["backends"][1];
    assert_eq!(s["healthy"], false, "{v:#}");
    assert!(s["consecutive_failures"].as_u64().unwrap() >= 2, "{v:#}");
    assert_eq!(s["last_error"], "GET /healthz answered 503", "{v:#}");
    assert_eq!(v["backends"][0]["healthy"], true, "{v:#}");
    assert_eq!(v["backends_healthy"], 1, "{v:#}");
    let before = api_calls(&b);
    let names = who(addr, 20).await;
    assert!(names.iter().all(|n| n == "a"), "{names:?}");
    assert_eq!(api_calls(&b), before, "a request reached b while it failed");
    let text = metrics(metrics_addr).await;
    for line in [
        format!("wxedge_backend_healthy{{backend=\"{a_name}\"}} 1"),
        format!("wxedge_backend_healthy{{backend=\"{b_name}\"}} 0"),
        format!("wxedge_backend_health_checks_total{{backend=\"{b_name}\",result=\"fail\"}}"),
        format!("wxedge_backend_health_checks_total{{backend=\"{b_name}\",result=\"pass\"}}"),
    ] {
        assert!(text.contains(&line), "no {line} in\n{text}");
    }

    // B passes again: back in the rotation.
    b_healthy.store(true, Ordering::SeqCst);
    let (_, v) = wait_for(addr, "b back in the rotation", |v| {
        v["backends"][1]["healthy"] == true
    })
    .await;
    assert_eq!(v["backends"][1]["active_check"], "passing", "{v:#}");
    assert_eq!(v["backends"][1]["consecutive_failures"], 0, "{v:#}");
    let names = who(addr, 10).await;
    assert!(names.contains(&"b".to_string()), "{names:?}");
    assert!(api_calls(&b) > before);
    let text = metrics(metrics_addr).await;
    let line = format!("wxedge_backend_healthy{{backend=\"{b_name}\"}} 1");
    assert!(text.contains(&line), "no {line} in\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_backend_failing_requests_still_go_to_one() {
    let (a, a_healthy) = switchable("a").await;
    let (b, b_healthy) = switchable("b").await;
    let list = format!("{},{}", a.url(), b.url());
    let edge = blocking(move || {
        let mut env = vec![
            ("WXEDGE_BACKEND", list.as_str()),
            ("WXEDGE_HEALTH_CHECK_PATH", "/healthz"),
        ];
        env.extend(FAST_CHECKS);
        start_edge(&env)
    })
    .await
    .unwrap();
    let addr = edge.addr();
    a_healthy.store(false, Ordering::SeqCst);
    b_healthy.store(false, Ordering::SeqCst);
    let (status, v) = wait_for(addr, "both out", |v| {
        v["backends"]
            .as_array()
            .is_some_and(|l| l.iter().all(|b| b["active_check"] == "failing"))
    })
    .await;
    assert_eq!(status, 503, "{v:#}");
    assert_eq!(v["ready"], false);
    // A health check is no reason to fail a request the backends can still answer.
    let names = who(addr, 6).await;
    assert!(names.iter().all(|n| n == "a" || n == "b"), "{names:?}");
    a_healthy.store(true, Ordering::SeqCst);
    let (status, _) = wait_for(addr, "a back", |v| v["backends"][0]["healthy"] == true).await;
    assert_eq!(status, 200);
    let names = who(addr, 6).await;
    assert!(names.iter().all(|n| n == "a"), "{names:?}");
}

/// A backend that starts late: until it listens, the TCP check keeps it out; then it is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_checks_keep_a_closed_port_out_until_it_listens() {
    let a = Backend::start("a").await;
    let late_port = free_port();
    let late_name = format!("127.0.0.1:{late_port}");
    let list = format!("{},http://{late_name}", a.url());
    let edge = blocking(move || {
        let mut env = vec![("WXEDGE_BACKEND", list.as_str())];
        env.extend(FAST_CHECKS);
        start_edge(&env)
    })
    .await
    .unwrap();
    let addr = edge.addr();
    let (status, v) = wait_for(addr, "the closed port out", |v| {
        v["backends"][1]["active_check"] == "failing"
    })
    .await;
    assert_eq!(status, 200);
    let s = &v["backends"][1];
    assert_eq!(s["backend"], late_name.as_str());
    assert!(
        s["last_error"].as_str().unwrap().contains("ConnectRefused"),
        "{v:#}"
    );
    assert!(who(addr, 6).await.iter().all(|n| n == "a"));

    let listener = tokio::net::TcpListener::bind(&late_name).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nX-Backend: late\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                    .await;
            });
        }
    });
    let (_, v) = wait_for(addr, "the late backend in", |v| {
        v["backends"][1]["healthy"] == true
    })
    .await;
    assert_eq!(v["backends"][1]["active_check"], "passing", "{v:#}");
    let names = who(addr, 6).await;
    assert!(names.contains(&"late".to_string()), "{names:?}");
}

/// `wxedge -t` checks the configuration and exits: it does not check backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_configuration_test_runs_no_checks() {
    let (b, _) = switchable("b").await;
    let url = b.url();
    let out = blocking(move || {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut env = vec![
            ("WXEDGE_LISTEN", listen.as_str()),
            ("WXEDGE_BACKEND", url.as_str()),
            ("WXEDGE_HEALTH_CHECK_PATH", "/healthz"),
        ];
        env.extend(FAST_CHECKS);
        command(&env, &["-t"]).0.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("health checks every 100 ms (GET /healthz)"),
        "{stdout}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.seen().is_empty(), "{:?}", b.seen());
}
