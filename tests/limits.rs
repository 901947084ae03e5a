//! Limits through the real binary, against a WeChat stand-in that counts its calls: a flood of
//! forged codes from one client address costs a few WeChat calls a second while people beside
//! it sign in as usual, and a full bound on WeChat calls in flight answers "busy, retry" at
//! once, leaving the code unspent.

mod common;

use common::wechat::{token, FakeWechat, Reply, APPID, SECRET};
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

async fn edge_with(wx: &FakeWechat, metrics: SocketAddr, extra: &[(&str, &str)]) -> EdgeProc {
    let mut env: Vec<(String, String)> = [
        ("WX_APPID", APPID.to_string()),
        ("WX_SECRET", SECRET.to_string()),
        ("WX_API_BASE", wx.base()),
        ("WXEDGE_SESSION_KEY", KEY.to_string()),
        ("WXEDGE_COOKIE_SECURE", "false".to_string()),
        ("WX_TIMEOUT_MS", "3000".to_string()),
        // The test's clients all connect from 127.0.0.1, a trusted proxy here: each says which
        // client it is in X-Forwarded-For, as a load balancer would.
        ("WXEDGE_REAL_IP_TRUSTED", "127.0.0.1".to_string()),
        ("WXEDGE_METRICS_LISTEN", metrics.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    blocking(move || {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start_edge(&e)
    })
    .await
    .unwrap()
}

/// A page load (a navigation) by the client at `ip`, and how long its answer took.
async fn page_load(addr: SocketAddr, target: String, ip: String) -> (RawResponse, Duration) {
    blocking(move || {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: h5.test\r\nAccept: text/html\r\n\
X-Forwarded-For: {ip}\r\nConnection: close\r\n\r\n"
        );
        let t = Instant::now();
        let r = raw(addr, req.as_bytes()).unwrap();
        (r, t.elapsed())
    })
    .await
    .unwrap()
}

fn metrics_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_forged_codes_costs_a_few_wechat_calls_while_people_sign_in() {
    let wx = FakeWechat::start().await;
    for i in 0..20 {
        // WeChat answers in 50 ms.
        let answer = Reply::Delay(50, Box::new(token(&format!("o-user-{i}"))));
        wx.script(&format!("REAL{i}"), vec![answer]);
    }
    let metrics = metrics_addr();
    let edge = edge_with(&wx, metrics, &[]).await; // the default limits
    let addr = edge.addr();
    let started = Instant::now();
    // One address sends 500 page loads with made-up codes, 10 at a time, as fast as it can.
    let flood = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for batch in 0..50 {
            let loads: Vec<_> = (0..10)
                .map(|i| {
                    let target = format!("/?code=FORGED{}&state=s", batch * 10 + i);
                    tokio::spawn(page_load(addr, target, "203.0.113.66".into()))
                })
                .collect();
            for l in loads {
                statuses.push(l.await.unwrap().0);
            }
        }
        statuses
    });
    // Meanwhile 20 people, each from an address of their own, come back from WeChat.
    let mut people = Vec::new();
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let target = format!("/?code=REAL{i}&state=s");
        people.push(tokio::spawn(page_load(
            addr,
            target,
            format!("198.51.100.{i}"),
        )));
    }
    let mut slowest = Duration::ZERO;
    for p in people {
        let (r, took) = p.await.unwrap();
        assert_eq!(r.status, 200, "a person's login: {}", r.text());
        assert!(r
            .header("set-cookie")
            .is_some_and(|c| c.contains("wxedge_session=")));
        slowest = slowest.max(took);
    }
    let flood = flood.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    // WeChat was asked about at most the burst (20) and 5 a second of the forged codes.
    let forged_calls: usize = (0..500).map(|i| wx.calls(&format!("FORGED{i}"))).sum();
    let allowed = 20.0 + 5.0 * elapsed.ceil() + 2.0;
    println!(
        "flood: {forged_calls} WeChat calls in {elapsed:.1} s (at most {allowed}); slowest login {slowest:?}"
    );
    assert!(
        (forged_calls as f64) <= allowed,
        "{forged_calls} WeChat calls for forged codes in {elapsed:.1} s"
    );
    let limited: Vec<_> = flood.iter().filter(|r| r.status == 429).collect();
    assert!(
        limited.len() >= 400,
        "only {} of 500 were limited",
        limited.len()
    );
    for r in &limited {
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=1).contains(&retry), "Retry-After {retry}");
        assert!(r.text().contains("wxedge-busy"), "a navigation gets a page");
    }
    // The page's retry link is the normalised path: a target of `//host/` cannot make it
    // another site's.
    let mut page = None;
    for _ in 0..30 {
        let target = "//evil.test/?code=FORGEDX&state=s".to_string();
        let (r, _) = page_load(addr, target, "203.0.113.66".into()).await;
        if r.status == 429 {
            page = Some(r.text());
            break;
        }
    }
    let page = page.expect("still limited");
    assert!(page.contains("href=\"/evil.test/?code=FORGEDX"), "{page}");
    assert!(!page.contains("href=\"//"), "{page}");
    // People's logins went at their usual pace (WeChat's 50 ms and the edge's own work).
    assert!(
        slowest < Duration::from_secs(1),
        "the slowest login took {slowest:?}"
    );

    // API-style calls from the flooding address get JSON (the first few may fit in what the
    // rate gave back since the flood).
    let r = blocking(move || {
        let call = b"GET /_wxedge/session HTTP/1.1\r\nHost: h5.test\r\nX-Forwarded-For: 203.0.113.66\r\nConnection: close\r\n\r\n";
        (0..30)
            .map(|_| raw(addr, call).unwrap())
            .find(|r| r.status != 200)
            .expect("the rate holds for API calls too")
    })
    .await
    .unwrap();
    assert_eq!(r.status, 429);
    assert!(r.text().contains("\"too_many_requests\""), "{}", r.text());
    let counted =
        blocking(move || scrape(metrics, "wxedge_limited_requests_total{limit=\"login\"}"));
    assert!(counted.await.unwrap() >= limited.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_bound_on_wechat_calls_answers_busy_at_once_and_spends_no_code() {
    let wx = FakeWechat::start().await;
    for i in 0..8 {
        let slow = Reply::Delay(1500, Box::new(token(&format!("o-{i}"))));
        wx.script(&format!("SLOW{i}"), vec![slow]);
    }
    let metrics = metrics_addr();
    let edge = edge_with(
        &wx,
        metrics,
        &[
            ("WXEDGE_LIMIT_WECHAT_IN_FLIGHT", "2"),
            ("WXEDGE_LIMIT_WECHAT_QUEUE", "2"),
            ("WXEDGE_LIMIT_WECHAT_QUEUE_MS", "300"),
        ],
    )
    .await;
    let addr = edge.addr();
    let loads: Vec<_> = (0..8)
        .map(|i| {
            let target = format!("/?code=SLOW{i}&state=s");
            tokio::spawn(page_load(addr, target, format!("198.51.100.{i}")))
        })
        .collect();
    let mut answered = Vec::new();
    for (i, l) in loads.into_iter().enumerate() {
        let (r, took) = l.await.unwrap();
        answered.push((i, r, took));
    }
    let signed_in = answered.iter().filter(|(_, r, _)| r.status == 200).count();
    let busy: Vec<_> = answered
        .iter()
        .filter(|(_, r, _)| r.status == 503)
        .collect();
    assert_eq!(signed_in, 2, "two calls at once");
    assert_eq!(busy.len(), 6);
    for (_, r, took) in &busy {
        // Turned away at once (queue full) or after the queue's 300 ms, never after WeChat's 1.5 s.
        assert!(*took < Duration::from_millis(1000), "busy after {took:?}");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.text().contains("data-reason=\"busy\""), "{}", r.text());
        assert!(
            r.header("set-cookie").is_none(),
            "nothing spent, nothing cleared"
        );
    }
    let called: usize = (0..8).map(|i| wx.calls(&format!("SLOW{i}"))).sum();
    assert_eq!(called, 2, "WeChat saw only the calls that had a place");
    let counted = blocking(move || {
        scrape(
            metrics,
            "wxedge_limited_requests_total{limit=\"wechat_in_flight\"}",
        )
    });
    assert_eq!(counted.await.unwrap(), 6.0);
    // The busy page's retry works: the code was never spent.
    let (i, _, _) = busy[0];
    let (r, _) = page_load(
        addr,
        format!("/?code=SLOW{i}&state=s"),
        format!("198.51.100.{i}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.contains("wxedge_session=")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_per_client_address_are_bounded_at_the_door() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wx = FakeWechat::start().await;
    let metrics = metrics_addr();
    let edge = edge_with(
        &wx,
        metrics,
        &[
            ("WXEDGE_LIMIT_CONNECTIONS_PER_CLIENT", "5"),
            // The test's own address is a trusted proxy in `edge_with`: not here.
            ("WXEDGE_REAL_IP_TRUSTED", ""),
        ],
    )
    .await;
    let addr = edge.addr();
    let connect_from = |ip: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    };
    let get = b"GET /_wxedge/healthz HTTP/1.1\r\nHost: h5.test\r\n\r\n";
    // Five idle connections from one address are its bound.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut c = connect_from("127.0.0.1").await;
        c.write_all(get).await.unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    // The sixth is closed unread; another address is served as ever.
    let mut sixth = connect_from("127.0.0.1").await;
    let _ = sixth.write_all(get).await;
    let mut buf = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(5), sixth.read_to_end(&mut buf)).await;
    assert!(
        matches!(got, Ok(Ok(0)) | Ok(Err(_))),
        "the sixth connection was served: {got:?}"
    );
    let mut other = connect_from("127.0.0.2").await;
    other.write_all(get).await.unwrap();
    let mut head = [0u8; 12];
    other.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // A closed connection gives its place back.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from("127.0.0.1").await;
    again.write_all(get).await.unwrap();
    again.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let counted = blocking(move || {
        scrape(
            metrics,
            "wxedge_limited_requests_total{limit=\"connections\"}",
        )
    });
    assert_eq!(counted.await.unwrap(), 1.0);
}
