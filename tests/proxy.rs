//! Proxying to a real backend stand-in through the real binary.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwards_with_nginx_style_headers_and_strips_spoofed_identity() {
    let backend = Backend::start("b1").await;
    let url = backend.url();
    let edge = blocking(move || start_edge(&[("WXEDGE_BACKEND", &url)]))
        .await
        .unwrap();
    let r = blocking({
        let addr = edge.addr();
        move || {
            raw(
                addr,
                b"POST /api/user/bind-phone?x=1 HTTP/1.1\r\nHost: h5.example.com\r\nX-Forwarded-For: 203.0.113.9\r\n\
X-WX-OpenID: forged\r\nx-wx-openid: forged2\r\nX_WX_OpenID: forged3\r\nX-Wx-Unionid: forged4\r\nX_Custom: dropped\r\n\
X-Request-ID: req-abc-1\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"phone\":\"13800\"}",
            )
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-backend"), Some("b1"));
    assert_eq!(r.header("x-request-id"), Some("req-abc-1"));
    let seen = backend.seen();
    let s = seen.last().unwrap();
    assert_eq!(
        (s.method.as_str(), s.target.as_str()),
        ("POST", "/api/user/bind-phone?x=1")
    );
    assert_eq!(s.body, b"{\"phone\":\"13800\"}");
    assert_eq!(
        s.header("host"),
        Some("h5.example.com"),
        "Host passes through like proxy_set_header Host $host"
    );
    // No trusted proxy is configured: the client's own X-Forwarded-For is not believed, nor
    // passed on (the real-address test below covers trusted load balancers).
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-forwarded-host"), Some("h5.example.com"));
    assert_eq!(s.header("x-request-id"), Some("req-abc-1"));
    for (k, v) in &s.headers {
        assert!(
            !k.replace('_', "-").starts_with("x-wx-"),
            "spoofed identity header reached the backend: {k}: {v}"
        );
        assert!(
            !k.contains('_'),
            "underscore header reached the backend: {k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_override_and_keepalive_to_the_backend() {
    let backend = Backend::start("b1").await;
    let url = backend.url();
    let edge = blocking(move || {
        start_edge(&[
            ("WXEDGE_BACKEND", &url),
            ("WXEDGE_PROXY_HOST", "backend.internal"),
            // The backend's connections are counted: no active health check's among them.
            ("WXEDGE_HEALTH_CHECK_INTERVAL_MS", "0"),
        ])
    })
    .await
    .unwrap();
    let addr = edge.addr();
    blocking(move || {
        for _ in 0..20 {
            assert_eq!(
                raw(
                    addr,
                    b"GET /api/ping HTTP/1.1\r\nHost: h5\r\nConnection: close\r\n\r\n"
                )
                .unwrap()
                .status,
                200
            );
        }
    })
    .await
    .unwrap();
    assert_eq!(
        backend.seen().last().unwrap().header("host"),
        Some("backend.internal")
    );
    let conns = backend
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        conns <= 3,
        "20 requests used {conns} upstream connections: keep-alive is not working"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_skips_a_dead_backend_and_readiness_reports_it() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let list = format!("{},{},{}", b1.url(), dead, b2.url());
    let edge = blocking(move || start_edge(&[("WXEDGE_BACKEND", &list)]))
        .await
        .unwrap();
    let addr = edge.addr();
    let names = blocking(move || {
        (0..12)
            .map(|_| {
                let r = raw(
                    addr,
                    b"GET /api/who HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
                assert_eq!(
                    r.status, 200,
                    "a refused backend must be skipped, not surface as an error"
                );
                r.header("x-backend").unwrap().to_string()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        names.iter().any(|n| n == "b1") && names.iter().any(|n| n == "b2"),
        "{names:?}"
    );
    let ready = get_timed(addr, "/_wxedge/readyz").await.0;
    assert_eq!(ready.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&ready.body).unwrap();
    assert_eq!(
        (v["backends_total"].as_u64(), v["backends_healthy"].as_u64()),
        (Some(3), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_down_is_a_fast_json_502_and_slow_is_a_504() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let edge = blocking(move || start_edge(&[("WXEDGE_BACKEND", &dead)]))
        .await
        .unwrap();
    let addr = edge.addr();
    let (r, took) = get_timed(addr, "/api/x").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "bad_gateway");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let ready = get_timed(addr, "/_wxedge/readyz").await.0;
    assert_eq!(ready.status, 503);

    let slow = Backend::start("slow").await;
    let url = slow.url();
    let edge = blocking(move || {
        start_edge(&[("WXEDGE_BACKEND", &url), ("WXEDGE_READ_TIMEOUT_MS", "300")])
    })
    .await
    .unwrap();
    let addr = edge.addr();
    let (r, took) = get_timed(addr, "/api/slow?ms=3000").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let none = blocking(|| start_edge(&[])).await.unwrap();
    let addr = none.addr();
    let r = get_timed(addr, "/api/x").await.0;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("no backend"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn body_limit_is_413_for_declared_and_chunked_bodies() {
    let backend = Backend::start("b1").await;
    let url = backend.url();
    let edge = blocking(move || {
        start_edge(&[("WXEDGE_BACKEND", &url), ("WXEDGE_MAX_BODY_BYTES", "1000")])
    })
    .await
    .unwrap();
    let addr = edge.addr();
    let (declared, chunked, fine) = blocking(move || {
        let body = vec![b'x'; 2000];
        let mut req = format!("POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(&body);
        let declared = raw(addr, &req).unwrap();
        let mut req = b"POST /api/upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for _ in 0..4 {
            req.extend_from_slice(format!("{:x}\r\n", 500).as_bytes());
            req.extend_from_slice(&[b'y'; 500]);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let chunked = raw(addr, &req).unwrap();
        let fine = raw(addr, b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").unwrap();
        (declared, chunked, fine)
    })
    .await
    .unwrap();
    assert_eq!(declared.status, 413);
    assert_eq!(chunked.status, 413);
    assert_eq!(fine.status, 200);
    assert!(
        backend.seen().iter().all(|s| s.body.len() <= 1000),
        "an oversized body reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_upgrade_is_proxied() {
    let backend = Backend::start("ws").await;
    let url = backend.url();
    let edge = blocking(move || start_edge(&[("WXEDGE_BACKEND", &url)]))
        .await
        .unwrap();
    let addr = edge.addr();
    let echoed = blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /api/ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"ping-frame-bytes").unwrap();
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).unwrap();
        buf.to_vec()
    })
    .await
    .unwrap();
    assert_eq!(echoed, b"ping-frame-bytes");
    let seen = backend.seen();
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
}

/// Real client addresses (nginx's `set_real_ip_from`, `real_ip_header`, PROXY protocol): a
/// trusted load balancer's `X-Forwarded-For` is walked right to left to the first untrusted
/// address, which the backend gets as `X-Real-IP` and the access log shows; the chain goes on
/// extended. A PROXY protocol listener takes the client from the header (v1 and v2), refuses
/// connections without one, and believes no forwarding header from the client it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_client_addresses_behind_trusted_proxies_and_proxy_protocol() {
    let backend = Backend::start("b1").await;
    let url = backend.url();
    let pp_port = free_port();
    let pp_listen = format!("127.0.0.1:{pp_port}");
    let edge = blocking(move || {
        start_edge(&[
            ("WXEDGE_BACKEND", &url),
            ("WXEDGE_REAL_IP_TRUSTED", "127.0.0.1, 10.0.0.0/8"),
            ("WXEDGE_LISTEN_PROXY_PROTOCOL", &pp_listen),
        ])
    })
    .await
    .unwrap();
    let addr = edge.addr();
    let send = |to: std::net::SocketAddr, bytes: Vec<u8>| blocking(move || raw(to, &bytes));
    let get = |xff: &str| {
        format!(
            "GET /api/who HTTP/1.1\r\nHost: h5\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    };

    // Behind a trusted load balancer (loopback here): the client forged the leftmost entry.
    let r = send(addr, get("6.6.6.6, 198.51.100.7, 10.1.2.3"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    let s = backend.seen().last().unwrap().clone();
    assert_eq!(s.header("x-real-ip"), Some("198.51.100.7"));
    assert_eq!(
        s.header("x-forwarded-for"),
        Some("6.6.6.6, 198.51.100.7, 10.1.2.3, 127.0.0.1")
    );

    // PROXY protocol v1 from the trusted balancer: the header's source is the client, and
    // that client's own X-Forwarded-For is not believed.
    let pp = std::net::SocketAddr::from(([127, 0, 0, 1], pp_port));
    let mut v1 = b"PROXY TCP4 198.51.100.9 10.0.0.1 55555 443\r\n".to_vec();
    v1.extend_from_slice(&get("6.6.6.6"));
    let r = send(pp, v1).await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let s = backend.seen().last().unwrap().clone();
    assert_eq!(s.header("x-real-ip"), Some("198.51.100.9"));
    assert_eq!(s.header("x-forwarded-for"), Some("198.51.100.9"));

    // v2 (binary), IPv6 source.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0x00, 36]);
    let src: std::net::Ipv6Addr = "2001:db8::42".parse().unwrap();
    let dst: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    v2.extend_from_slice(&src.octets());
    v2.extend_from_slice(&dst.octets());
    v2.extend_from_slice(&55555u16.to_be_bytes());
    v2.extend_from_slice(&443u16.to_be_bytes());
    v2.extend_from_slice(&get("6.6.6.6"));
    let r = send(pp, v2).await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        backend.seen().last().unwrap().header("x-real-ip"),
        Some("2001:db8::42")
    );

    // No header on a PROXY listener: closed without an answer, nothing reaches the backend.
    let before = backend.seen().len();
    let r = send(pp, get("198.51.100.7")).await.unwrap();
    assert!(r.is_err(), "answered without a PROXY header");
    assert_eq!(backend.seen().len(), before);

    // The access log shows the real client (lines are written at least once a second).
    let shows = |log: &str| {
        log.lines()
            .any(|l| l.starts_with("198.51.100.9 - - [") && l.contains("GET /api/who"))
    };
    let started = std::time::Instant::now();
    while !shows(&edge.stdout()) && started.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(shows(&edge.stdout()), "{}", edge.stdout());
}

/// A PROXY protocol listener only takes connections from trusted load balancers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_protocol_from_an_untrusted_peer_is_refused() {
    let backend = Backend::start("b1").await;
    let url = backend.url();
    let pp_port = free_port();
    let pp_listen = format!("127.0.0.1:{pp_port}");
    let _edge = blocking(move || {
        start_edge(&[
            ("WXEDGE_BACKEND", &url),
            ("WXEDGE_REAL_IP_TRUSTED", "10.0.0.0/8"),
            ("WXEDGE_LISTEN_PROXY_PROTOCOL", &pp_listen),
        ])
    })
    .await
    .unwrap();
    let pp = std::net::SocketAddr::from(([127, 0, 0, 1], pp_port));
    let r = blocking(move || {
        raw(
            pp,
            b"PROXY TCP4 198.51.100.9 10.0.0.1 55555 443\r\nGET /api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert!(r.is_err(), "answered a PROXY header from an untrusted peer");
    assert!(backend.seen().is_empty());
}
