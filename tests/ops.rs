//! What ops see: access logs, request ids, metrics, health.

mod common;

use common::wechat::{token, FakeWechat, Reply, APPID, SECRET};
use common::*;
use std::time::{Duration, Instant};

fn wait_for(edge: &EdgeProc, needle: &str) -> String {
    let t = Instant::now();
    loop {
        let out = edge.stdout();
        if out.contains(needle) || t.elapsed() > Duration::from_secs(5) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn combined_access_log_redacts_codes_and_skips_health() {
    let edge = start_edge(&[]);
    let r = get(
        &edge,
        "/pages/index/index?from=share&code=SECRETCODE123&state=STATE",
        &[
            ("User-Agent", "test-agent/1"),
            ("Referer", "http://h5.test/?code=REFCODE"),
        ],
    );
    assert!(r.status == 200 || r.status == 302, "{}", r.status);
    get(&edge, "/_wxedge/healthz", &[]);
    get(&edge, "/_wxedge/readyz", &[]);
    get(
        &edge,
        "/assets/missing.js",
        &[("Cookie", "wxedge_session=SESSIONVALUE; other=1")],
    );
    let log = wait_for(&edge, "/assets/missing.js");
    let line = log
        .lines()
        .find(|l| l.contains("/pages/index/index"))
        .expect("the page load is logged");
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("\"GET /pages/index/index?from=share&code=REDACTED&state=STATE HTTP/1.1\""),
        "{line}"
    );
    assert!(
        line.ends_with("\"http://h5.test/?code=REDACTED\" \"test-agent/1\""),
        "{line}"
    );
    assert!(
        log.contains("\"GET /assets/missing.js HTTP/1.1\" 404 "),
        "{log}"
    );
    for secret in [
        "SECRETCODE123",
        "REFCODE",
        "SESSIONVALUE",
        "healthz",
        "readyz",
    ] {
        assert!(
            !log.contains(secret),
            "{secret} must not be in the access log:\n{log}"
        );
    }
}

#[test]
fn header_bytes_that_are_not_utf8_are_logged_escaped_not_dropped() {
    // obs-text (RFC 9110 allows it in field values): an old client's Latin-1 User-Agent, a
    // Referer with raw UTF-8 and a stray byte. Lines stay UTF-8; nothing is lost or forged.
    let edge = start_edge(&[]);
    let r = raw(
        edge.addr(),
        b"GET /index.html HTTP/1.1\r\nHost: h\r\nUser-Agent: caf\xe9 \"1\"\r\n\
          Referer: http://h5.test/\xe5\x8c\x97\xff?code=X1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let log = wait_for(&edge, "GET /index.html");
    let line = log
        .lines()
        .find(|l| l.contains("GET /index.html"))
        .expect("logged");
    assert!(
        line.ends_with("\"http://h5.test/北\\xFF?code=REDACTED\" \"caf\\xE9 \\\"1\\\"\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_access_log_request_ids_and_metrics() {
    let wx = FakeWechat::start().await;
    wx.script("M1", vec![token("o-metrics")]);
    wx.script("M2", vec![Reply::Err(40163, "code been used")]);
    let backend = Backend::start("b").await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (wxb, bu) = (wx.base(), backend.url());
    let env: Vec<(String, String)> = vec![
        ("WXEDGE_ACCESS_LOG".into(), "json".into()),
        ("WXEDGE_METRICS_LISTEN".into(), metrics.clone()),
        ("WXEDGE_BACKEND".into(), format!("{bu},{dead}")),
        ("WX_APPID".into(), APPID.into()),
        ("WX_SECRET".into(), SECRET.into()),
        ("WX_API_BASE".into(), wxb),
    ];
    let (edge, metrics_text) = tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let edge = start_edge(&e);
        let html = [("Accept", "text/html")];
        get(&edge, "/pages/a?code=M1&state=STATE", &html);
        get(&edge, "/pages/a?code=M1&state=STATE", &html);
        get(&edge, "/pages/a?code=M2&state=STATE", &html);
        for _ in 0..4 {
            get(&edge, "/api/ping", &[("Accept-Encoding", "identity")]);
        }
        let r = get(&edge, "/api/ping", &[("X-Request-ID", "client-rid-42")]);
        assert_eq!(r.header("x-request-id"), Some("client-rid-42"));
        let r = get(
            &edge,
            "/assets/uni.424060a0.css",
            &[("Accept-Encoding", "gzip")],
        );
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        let rid = r.header("x-request-id").unwrap().to_string();
        assert_eq!(rid.len(), 32);
        get(
            &edge,
            "/assets/index-bydhfUo3.js",
            &[("Accept-Encoding", "br")],
        );
        // Three idle keep-alive clients: the gauge must see them.
        let idle: Vec<std::net::TcpStream> = (0..3)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(edge.addr()).unwrap();
                std::io::Write::write_all(&mut c, b"GET /index.html HTTP/1.1\r\nHost: h\r\n\r\n")
                    .unwrap();
                let mut buf = [0u8; 1024];
                let _ = std::io::Read::read(&mut c, &mut buf).unwrap();
                c
            })
            .collect();
        let m = raw(
            metrics.parse().unwrap(),
            b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(m.status, 200);
        assert_eq!(
            get(&edge, "/metrics", &[("Accept", "application/json")]).status,
            404,
            "not on the public listener"
        );
        drop(idle);
        (edge, m.text())
    })
    .await
    .unwrap();

    let seen = backend.seen();
    assert!(
        seen.iter()
            .any(|s| s.header("x-request-id") == Some("client-rid-42")),
        "the request id goes upstream"
    );
    assert!(seen.iter().all(|s| s.header("x-request-id").is_some()));

    let log = wait_for(&edge, "index-bydhfUo3");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(lines.len() >= 8, "{log}");
    let ping = lines
        .iter()
        .find(|v| v["request_id"] == "client-rid-42")
        .expect("json line for the ping");
    assert_eq!(ping["method"], "GET");
    assert_eq!(ping["status"], 200);
    assert_eq!(ping["route"], "proxy");
    assert!(ping["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(ping["duration_ms"].is_number() && ping["bytes"].as_u64().unwrap() > 0);
    assert!(
        !log.contains("M1") && !log.contains("M2"),
        "codes are never logged"
    );

    let active: i64 = metrics_text
        .lines()
        .find_map(|l| l.strip_prefix("wxedge_active_connections "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the connections gauge");
    assert!(
        active >= 3,
        "three idle keep-alive clients, gauge says {active}"
    );
    for needle in [
        "wxedge_requests_total{route=\"proxy\",status=\"200\"} 5",
        "wxedge_static_responses_total{encoding=\"gzip\"}",
        "wxedge_static_responses_total{encoding=\"br\"}",
        "wxedge_wechat_exchanges_total{errcode=\"0\",result=\"ok\"} 1",
        "wxedge_wechat_exchanges_total{errcode=\"40163\",result=\"error\"} 1",
        "wxedge_code_cache_hits_total 1",
        "wxedge_backend_errors_total{kind=\"connect\"}",
        "wxedge_request_duration_seconds_bucket{route=\"static\",le=\"0.005\"}",
        "wxedge_requests_in_flight",
        "wxedge_active_connections",
    ] {
        assert!(
            metrics_text.contains(needle),
            "missing {needle}:\n{metrics_text}"
        );
    }
}

/// Every request served is one whole access-log line, with nothing lost at SIGTERM: lines are
/// buffered per thread and written in blocks, and the drain writes out the rest before exit.
/// Once to stdout (the container default), once to a file (`WXEDGE_ACCESS_LOG_PATH`).
#[test]
fn every_request_is_one_whole_log_line_even_across_sigterm() {
    let dir = temp_dir("access-log");
    let file = dir.join("access.log");
    let file_setting = file.to_str().unwrap().to_string();
    for to_file in [false, true] {
        let mut env = vec![("WXEDGE_THREADS", "2")];
        if to_file {
            env.push(("WXEDGE_ACCESS_LOG_PATH", file_setting.as_str()));
        }
        let mut edge = start_edge(&env);
        let addr = edge.addr();
        const CLIENTS: usize = 8;
        const EACH: usize = 150;
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    let mut pending = Vec::new();
                    for i in 0..EACH {
                        pending.extend_from_slice(
                            format!("GET /index.html?c={c}&i={i} HTTP/1.1\r\nHost: t\r\n\r\n")
                                .as_bytes(),
                        );
                    }
                    use std::io::{Read, Write};
                    s.write_all(&pending).unwrap();
                    // Read until every answer arrived (each ends with index.html's body).
                    let body = std::fs::read(fixture_dist().join("index.html")).unwrap();
                    let mut got = Vec::new();
                    let mut buf = [0u8; 65536];
                    while got
                        .windows(body.len().min(64))
                        .filter(|w| *w == &body[body.len() - body.len().min(64)..])
                        .count()
                        < EACH
                    {
                        let n = s.read(&mut buf).unwrap();
                        assert!(n > 0, "closed early");
                        got.extend_from_slice(&buf[..n]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        edge.signal("TERM");
        assert!(
            edge.wait_exit(Duration::from_secs(15)).is_some(),
            "the edge did not exit after SIGTERM"
        );
        let log = if to_file {
            std::fs::read_to_string(&file).unwrap()
        } else {
            // The harness pumps stdout on its own thread: give it a moment after the exit.
            std::thread::sleep(Duration::from_millis(300));
            edge.stdout()
        };
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("GET /index.html?c="))
            .collect();
        assert_eq!(
            lines.len(),
            CLIENTS * EACH,
            "one line per request served (to_file: {to_file})"
        );
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("127.0.0.1 - - [") && l.ends_with('"')),
            "no torn or interleaved line"
        );
        let mut seen = std::collections::HashSet::new();
        for l in &lines {
            let target = l.split('"').nth(1).unwrap();
            assert!(seen.insert(target.to_string()), "logged twice: {target}");
        }
    }
}

/// A log nobody reads (a stalled pipe) never holds a request up: every request is answered
/// while the pipe is full, the lines that did not fit are counted in
/// `wxedge_access_log_dropped_lines_total`, and once the pipe drains, the lines that come out
/// plus that count are exactly the requests served: none is lost without being counted.
#[test]
fn a_stalled_log_pipe_never_blocks_a_request_and_counts_every_line_it_drops() {
    use std::io::{BufRead, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const CLIENTS: usize = 4;
    const EACH: usize = 1000;
    const BATCH: usize = 50;
    // ~3 KB lines: 12 MB of log, well past what can wait (the 64 KiB pipe, the writer's batch
    // of 1 MiB and 64 queued blocks of 64 KiB).
    let pad = "p".repeat(3000);

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{}", free_port());
    let (mut cmd, dir) = command(
        &[
            ("WXEDGE_LISTEN", listen.as_str()),
            ("WXEDGE_METRICS_LISTEN", metrics.as_str()),
            ("WXEDGE_THREADS", "2"),
        ],
        &[],
    );
    cmd.stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("wxedge binary");
    // Not read until every request is answered.
    let log_pipe = child.stdout.take().unwrap();
    let edge = EdgeProc {
        port,
        child,
        dir,
        stdout: Default::default(),
        stderr: Default::default(),
    };
    wait_healthy(&edge);
    let addr = edge.addr();

    let body = std::fs::read(fixture_dist().join("index.html")).unwrap();
    let tail = body[body.len() - body.len().min(64)..].to_vec();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (pad, tail) = (pad.clone(), tail.clone());
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                // A request held up by the log would stall here: fail instead of hanging.
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut buf = vec![0u8; 65536];
                for batch in 0..EACH / BATCH {
                    let mut requests = Vec::new();
                    for i in 0..BATCH {
                        let i = batch * BATCH + i;
                        requests.extend_from_slice(
                            format!(
                                "GET /index.html?c={c}&i={i}&pad={pad} HTTP/1.1\r\nHost: t\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                    }
                    s.write_all(&requests).unwrap();
                    let mut got = Vec::new();
                    while got.windows(tail.len()).filter(|w| *w == &tail[..]).count() < BATCH {
                        let n = s
                            .read(&mut buf)
                            .expect("an answer while the log is stalled");
                        assert!(n > 0, "closed early");
                        got.extend_from_slice(&buf[..n]);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }

    let metrics_addr: std::net::SocketAddr = metrics.parse().unwrap();
    let dropped = || -> usize {
        let r = raw(
            metrics_addr,
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(r.body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("wxedge_access_log_dropped_lines_total "))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    assert!(dropped() > 0, "12 MB of lines cannot all wait in memory");

    // Drain the pipe: what comes out plus what was counted is every request served.
    let logged = Arc::new(AtomicUsize::new(0));
    let counter = logged.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(log_pipe).lines() {
            let Ok(line) = line else { break };
            if line.contains("&pad=") {
                assert!(
                    line.starts_with("127.0.0.1 - - [") && line.ends_with('"'),
                    "a whole line"
                );
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let t = Instant::now();
    let mut seen = (0, 0);
    while t.elapsed() < Duration::from_secs(30) {
        seen = (logged.load(Ordering::Relaxed), dropped());
        if seen.0 + seen.1 == CLIENTS * EACH {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        seen.0 + seen.1,
        CLIENTS * EACH,
        "lines logged {} + lines counted as dropped {} = requests served",
        seen.0,
        seen.1
    );
}

/// `max_connections` (nginx's `worker_connections`): past it, a new client connection is
/// closed at once and counted, the open ones keep working, and a place that frees up is
/// taken again. The start-up log reports the limit and the open-file limits.
#[test]
fn connections_past_max_connections_are_closed_cleanly() {
    use std::io::{Read, Write};
    let metrics = format!("127.0.0.1:{}", free_port());
    let edge = start_edge(&[
        ("WXEDGE_MAX_CONNECTIONS", "3"),
        ("WXEDGE_METRICS_LISTEN", metrics.as_str()),
        // One thread, so connections are not passed between threads while counted.
        ("WXEDGE_THREADS", "1"),
    ]);
    assert!(
        edge.stderr()
            .contains("connections: at most 3 (open files: soft limit"),
        "{}",
        edge.stderr()
    );
    let ask = |s: &mut std::net::TcpStream| -> bool {
        if s.write_all(b"GET /_wxedge/healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .is_err()
        {
            return false;
        }
        // The whole answer (head and body may come in separate segments).
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"{\"status\":\"ok\"}") {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return false,
            }
        }
        got.starts_with(b"HTTP/1.1 200")
    };
    // wait_healthy's own connection is closed; give the edge a moment to count it out.
    std::thread::sleep(Duration::from_millis(200));
    let mut open: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(edge.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            assert!(ask(&mut s));
            s
        })
        .collect();
    let mut extra = std::net::TcpStream::connect(edge.addr()).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(!ask(&mut extra), "the fourth connection is closed");
    assert!(open.iter_mut().all(ask), "the three open ones keep working");
    drop(open.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = std::net::TcpStream::connect(edge.addr()).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(ask(&mut again), "a freed place is taken again");
    let text = raw(
        metrics.parse().unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    )
    .unwrap()
    .text();
    assert!(
        text.contains("wxedge_connections_refused_total 1"),
        "{}",
        text.lines()
            .filter(|l| l.contains("refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
