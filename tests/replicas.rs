//! Several replicas sharing one real Redis (Debian's `redis-server`, started here on a loopback
//! port): three wxedge processes, the WeChat stand-in that counts its calls, a real backend.
//! One code reaches WeChat once whichever replicas its loads land on; a logout or an admin
//! revocation is refused on every replica within a second; killing Redis under a login load
//! breaks no login, and the replicas use it again once it is back; the JS-SDK's access_token and
//! jsapi_ticket are fetched once for the fleet.

mod common;

use common::redis_server::RedisServer;
use common::wechat::{token, FakeWechat, Reply, APPID, SECRET};
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: &str = "/pages/wxAuthPage/wxAuthPage";
const KEY: &str = "replicas-session-key-0123456789-abcdefghijkl";

struct Replica {
    edge: EdgeProc,
    metrics: SocketAddr,
}

/// `n` replicas against one Redis, one WeChat stand-in and one backend, started in parallel.
async fn replicas(
    n: usize,
    redis_url: &str,
    wx: &FakeWechat,
    backend: &Backend,
    extra: &[(&str, &str)],
) -> Vec<Replica> {
    let mut env: Vec<(String, String)> = [
        ("WX_APPID", APPID),
        ("WX_SECRET", SECRET),
        ("WXEDGE_SESSION_KEY", KEY),
        ("WXEDGE_COOKIE_SECURE", "false"),
        ("WX_TIMEOUT_MS", "2000"),
        ("WXEDGE_REQUIRE_SESSION", "/api/private/"),
        ("WXEDGE_ACCESS_LOG", "off"),
        // Many people's logins, all from the test's one address: the per-client login limit
        // (tests/limits.rs) is off here.
        ("WXEDGE_LIMIT_LOGIN_RATE", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push(("WX_API_BASE".into(), wx.base()));
    env.push(("WXEDGE_BACKEND".into(), backend.url()));
    env.push(("WXEDGE_REDIS_URL".into(), redis_url.into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let starts: Vec<_> = (0..n)
        .map(|_| {
            let mut env = env.clone();
            tokio::task::spawn_blocking(move || {
                let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                env.push(("WXEDGE_METRICS_LISTEN".into(), metrics.to_string()));
                let e: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let edge = spawn_edge(&e, &[]);
                wait_healthy(&edge);
                Replica { edge, metrics }
            })
        })
        .collect();
    let mut out = Vec::new();
    for s in starts {
        out.push(s.await.unwrap());
    }
    out
}

/// One request on a fresh connection (the future owns what it needs: it can be spawned).
fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    cookie: Option<&str>,
) -> impl std::future::Future<Output = RawResponse> + Send + 'static {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: h5.test\r\nConnection: close\r\nAccept: text/html\r\n"
    );
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    async move {
        tokio::task::spawn_blocking(move || {
            raw(addr, req.as_bytes()).unwrap_or_else(|e| panic!("{req}: {e}"))
        })
        .await
        .unwrap()
    }
}

/// `name=value` of the session cookie the answer sets, if any.
fn session_cookie(r: &RawResponse) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.split(';').next().unwrap().trim().to_string())
        .find(|c| c.starts_with("wxedge_session=") && c.len() > "wxedge_session=".len())
}

/// The openid the edge vouches for with `cookie`, as `/_wxedge/session` says.
async fn openid_of(addr: SocketAddr, cookie: &str) -> Option<String> {
    let r = send(addr, "GET", "/_wxedge/session", Some(cookie)).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["openid"].as_str().map(str::to_string)
}

/// Sum of a metric's samples (all label values) whose line starts with `name`.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let r = send(addr, "GET", "/metrics", None).await;
    r.text()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metric_total(rs: &[Replica], name: &str) -> f64 {
    let mut sum = 0.0;
    for r in rs {
        sum += metric(r.metrics, name).await;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_code_over_three_replicas_is_one_wechat_call() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let wx = FakeWechat::start().await;
    let backend = Backend::start("b").await;
    // A bound far above a loopback round trip: this test is about the protocol, and a loaded
    // CI machine must not turn a slow answer into a fallback (the restart test uses the default).
    let rs = replicas(
        3,
        &redis.url(),
        &wx,
        &backend,
        &[("WXEDGE_REDIS_TIMEOUT_MS", "1000")],
    )
    .await;

    // WeChat takes 300 ms: loads of one code arrive at all replicas while the first call runs.
    let codes = ["CODE-A", "CODE-B", "CODE-C"];
    for (i, code) in codes.iter().enumerate() {
        let openid = format!("o-user{i}");
        wx.script(code, vec![Reply::Delay(300, Box::new(token(&openid)))]);
    }
    let mut loads = Vec::new();
    for code in codes {
        for k in 0..9 {
            let addr = rs[k % 3].edge.addr();
            let target = format!("{PAGE}?code={code}&state=STATE");
            loads.push(tokio::spawn(async move {
                (code, send(addr, "GET", &target, None).await)
            }));
        }
    }
    for l in loads {
        let (code, r) = l.await.unwrap();
        assert_eq!(r.status, 200, "{code}: {}", r.text());
        let cookie = session_cookie(&r).unwrap_or_else(|| panic!("{code}: no session"));
        let i = codes.iter().position(|c| *c == code).unwrap();
        assert_eq!(
            openid_of(rs[(i + 1) % 3].edge.addr(), &cookie)
                .await
                .as_deref(),
            Some(format!("o-user{i}").as_str())
        );
    }
    // Later loads (a refresh, the frontend's own use of the code) come from the caches.
    for r in &rs {
        let res = send(
            r.edge.addr(),
            "GET",
            &format!("{PAGE}?code=CODE-A&state=STATE"),
            None,
        )
        .await;
        assert!(session_cookie(&res).is_some());
    }
    for code in codes {
        assert_eq!(wx.calls(code), 1, "{code}: exactly one WeChat call");
    }
    let shared = metric_total(&rs, "wxedge_shared_code_cache_hits_total").await
        + metric_total(&rs, "wxedge_shared_code_waits_total").await;
    assert!(
        shared >= 2.0,
        "other replicas used the shared outcome: {shared}"
    );
    assert_eq!(
        metric_total(&rs, "wxedge_shared_fallbacks_total").await,
        0.0
    );

    // A refused code is shared too: every replica gives the same answer, WeChat sees it once
    // (a second call would have succeeded).
    wx.script(
        "CODE-BAD",
        vec![Reply::Err(40029, "invalid code"), token("o-late")],
    );
    for r in &rs {
        let res = send(
            r.edge.addr(),
            "GET",
            &format!("{PAGE}?code=CODE-BAD&state=STATE"),
            None,
        )
        .await;
        assert_eq!(
            res.status,
            302,
            "the page restarts its login: {}",
            res.text()
        );
        assert!(session_cookie(&res).is_none());
    }
    assert_eq!(wx.calls("CODE-BAD"), 1);

    // Redis holds neither a code nor a token nor an openid in clear.
    let keys = redis.keys("*");
    assert!(
        keys.iter().any(|k| k.starts_with("wxedge:code:")),
        "{keys:?}"
    );
    for k in &keys {
        assert!(!k.contains("CODE-"), "{k}");
        let v = redis.cmd(&["GET", k]).unwrap();
        for secret in ["ACCESS-", "REFRESH-", "o-user", "CODE-"] {
            assert!(!v.contains(secret), "{k} = {v}");
        }
    }
    for r in &rs {
        let log = r.edge.stderr();
        assert!(!log.contains("CODE-A"), "no code in the log: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_and_admin_revocation_hold_on_every_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let wx = FakeWechat::start().await;
    let backend = Backend::start("b").await;
    let rs = replicas(
        3,
        &redis.url(),
        &wx,
        &backend,
        &[("WXEDGE_REDIS_TIMEOUT_MS", "1000")],
    )
    .await;
    let login = |i: usize, code: &'static str, openid: &'static str| {
        wx.script(code, vec![token(openid)]);
        let addr = rs[i].edge.addr();
        async move {
            let r = send(
                addr,
                "GET",
                &format!("{PAGE}?code={code}&state=STATE"),
                None,
            )
            .await;
            session_cookie(&r).unwrap_or_else(|| panic!("login {code}: {}", r.text()))
        }
    };
    let private_status = |i: usize, cookie: String| {
        let addr = rs[i].edge.addr();
        async move {
            send(addr, "GET", "/api/private/me", Some(&cookie))
                .await
                .status
        }
    };

    // Logout on replica 0: a copy of the cookie is refused on 1 and 2 within a second.
    let alice = login(0, "CODE-ALICE", "o-alice").await;
    for i in 0..3 {
        assert_eq!(private_status(i, alice.clone()).await, 200, "replica {i}");
    }
    let r = send(rs[0].edge.addr(), "GET", "/_wxedge/logout", Some(&alice)).await;
    assert_eq!(r.status, 302);
    let logged_out = Instant::now();
    for i in [1, 2, 0] {
        loop {
            if private_status(i, alice.clone()).await == 401 {
                break;
            }
            assert!(
                logged_out.elapsed() < Duration::from_secs(1),
                "replica {i} still accepts the logged-out session"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(openid_of(rs[2].edge.addr(), &alice).await, None);
    // Without the proxy's 401: the backend gets no identity for it either.
    send(rs[1].edge.addr(), "GET", "/api/me", Some(&alice)).await;
    let seen = backend.seen();
    assert_eq!(seen.last().unwrap().header("x-wx-openid"), None);

    // One Redis round trip per request at most, fewer thanks to the local cache: 20 quick
    // requests with one session on one replica.
    let bob = login(1, "CODE-BOB1", "o-bob").await;
    let before = metric(rs[2].metrics, "wxedge_redis_duration_seconds_count").await;
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(private_status(2, bob.clone()).await, 200);
    }
    let trips = metric(rs[2].metrics, "wxedge_redis_duration_seconds_count").await - before;
    let most = 1.0 + (t.elapsed().as_millis() / 500) as f64;
    assert!(
        trips >= 1.0 && trips <= most,
        "{trips} round trips for 20 requests"
    );

    // The admin endpoint on the private listener revokes every session of an openid.
    let bob2 = login(2, "CODE-BOB2", "o-bob").await;
    let carol = login(0, "CODE-CAROL", "o-carol").await;
    // Not on the public listener: there it is just a path of the site.
    let r = send(
        rs[0].edge.addr(),
        "POST",
        "/admin/revoke?openid=o-carol",
        None,
    )
    .await;
    assert_ne!(r.status, 200);
    let r = send(rs[1].metrics, "GET", "/admin/revoke?openid=o-bob", None).await;
    assert_eq!(r.status, 405);
    let r = send(rs[1].metrics, "POST", "/admin/revoke?openid=o%20bob", None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = send(rs[1].metrics, "POST", "/admin/revoke?openid=o-bob", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let revoked = Instant::now();
    for cookie in [&bob, &bob2] {
        for i in 0..3 {
            loop {
                if private_status(i, cookie.clone()).await == 401 {
                    break;
                }
                assert!(revoked.elapsed() < Duration::from_secs(1), "replica {i}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for i in 0..3 {
        assert_eq!(
            private_status(i, carol.clone()).await,
            200,
            "carol is not bob"
        );
    }
    assert!(metric_total(&rs, "wxedge_revoked_sessions_refused_total").await >= 4.0);
    // Sessions issued after the revocation's second are fine.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let bob3 = login(0, "CODE-BOB3", "o-bob").await;
    for i in 0..3 {
        assert_eq!(private_status(i, bob3.clone()).await, 200, "replica {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn logins_go_on_while_redis_is_killed_and_restarted() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let wx = FakeWechat::start().await;
    let backend = Backend::start("b").await;
    // The default bound (50 ms) per Redis operation.
    let rs = replicas(3, &redis.url(), &wx, &backend, &[]).await;
    let addrs: Vec<SocketAddr> = rs.iter().map(|r| r.edge.addr()).collect();

    const CODES: usize = 10_000;
    for n in 0..CODES {
        wx.script(&format!("LOAD{n}"), vec![token(&format!("o-load{n}"))]);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (next, stop, addrs, slowest) =
                (next.clone(), stop.clone(), addrs.clone(), slowest.clone());
            tokio::spawn(async move {
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    assert!(n < CODES, "more logins than scripted codes");
                    let t = Instant::now();
                    let r = send(
                        addrs[n % 3],
                        "GET",
                        &format!("{PAGE}?code=LOAD{n}&state=STATE"),
                        None,
                    )
                    .await;
                    assert_eq!(r.status, 200, "login {n}: {}", r.text());
                    let cookie =
                        session_cookie(&r).unwrap_or_else(|| panic!("login {n}: no session"));
                    // The session works on another replica at once.
                    let me =
                        send(addrs[(n + 1) % 3], "GET", "/api/private/me", Some(&cookie)).await;
                    assert_eq!(me.status, 200, "login {n}'s session elsewhere");
                    slowest.fetch_max(t.elapsed().as_millis() as usize, Ordering::Relaxed);
                    done += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                done
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    let killed_at = next.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = next.load(Ordering::Relaxed) - killed_at;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logins = 0;
    for w in workers {
        logins += w.await.unwrap();
    }
    assert!(during >= 5, "logins went on while Redis was down: {during}");
    assert!(logins >= 20, "{logins} logins");
    eprintln!(
        "{logins} logins, {during} while Redis was down, slowest {} ms",
        slowest.load(Ordering::Relaxed)
    );
    let fallbacks = metric_total(&rs, "wxedge_shared_fallbacks_total").await;
    let errors = metric_total(&rs, "wxedge_redis_errors_total").await;
    assert!(
        fallbacks > 0.0 && errors > 0.0,
        "{fallbacks} fallbacks, {errors} errors"
    );

    // Back in use: within a few seconds, duplicate loads on two replicas are one WeChat call.
    let t = Instant::now();
    let mut n = 0;
    loop {
        let code = format!("AFTER{n}");
        wx.script(&code, vec![Reply::Delay(200, Box::new(token("o-after")))]);
        let target = format!("{PAGE}?code={code}&state=STATE");
        let a = tokio::spawn(send(addrs[0], "GET", &target, None));
        let b = tokio::spawn(send(addrs[1], "GET", &target, None));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert!(session_cookie(&a).is_some() && session_cookie(&b).is_some());
        if wx.calls(&code) == 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the replicas did not use Redis again after its restart"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Warnings are rate-limited (one per replica per 10 s) and name no secret.
    for r in &rs {
        let log = r.edge.stderr();
        let warnings = log
            .lines()
            .filter(|l| l.contains("redis 127.0.0.1"))
            .count();
        assert!(warnings <= 2, "{log}");
        assert!(!log.contains(KEY) && !log.contains(SECRET), "{log}");
    }
    assert!(
        rs.iter().any(|r| r
            .edge
            .stderr()
            .contains("falling back to this replica's own state")),
        "a warning was logged"
    );
}

#[test]
fn redis_settings_are_checked_at_start() {
    for (env, needle) in [
        (
            vec![("WXEDGE_REDIS_URL", "redis://127.0.0.1:1")],
            "needs session.keys",
        ),
        (
            vec![
                ("WXEDGE_REDIS_URL", "http://user:hunter2pass@x"),
                ("WXEDGE_SESSION_KEY", KEY),
            ],
            "redis_url: not a Redis URL",
        ),
        (vec![("WXEDGE_REDIS_TIMEOUT_MS", "0")], "redis_timeout_ms"),
    ] {
        let (mut cmd, _dir) = command(&env, &["-t"]);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(err.contains(needle), "{env:?}: {err}");
        assert!(!err.contains("hunter2pass"), "{err}");
    }
}

/// The JS-SDK over three replicas: 60 signatures spread over them while WeChat is slow = one
/// token fetch and one ticket fetch for the whole fleet, every signature with that ticket; what
/// Redis holds is sealed (no token or ticket in clear). A token another party overwrote is
/// dropped from Redis by the replica that meets the 40001, refetched once, and the other
/// replicas take the new one from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jssdk_credentials_are_fetched_once_for_the_fleet() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let wx = FakeWechat::start().await;
    let backend = Backend::start("b").await;
    let rs = replicas(
        3,
        &redis.url(),
        &wx,
        &backend,
        &[("WXEDGE_REDIS_TIMEOUT_MS", "1000")],
    )
    .await;
    // WeChat takes 300 ms per call: signatures reach every replica meanwhile.
    wx.account_latency(300);
    let sign = |addr: SocketAddr| {
        let url = "http%3A%2F%2Fh5.test%2Fpages%2Fa%3Fx%3D1";
        let req = format!(
            "GET /_wxedge/jssdk/config?url={url} HTTP/1.1\r\nHost: h5.test\r\nConnection: close\r\n\r\n"
        );
        tokio::task::spawn_blocking(move || raw(addr, req.as_bytes()).unwrap())
    };
    let loads: Vec<_> = (0..60).map(|i| sign(rs[i % 3].edge.addr())).collect();
    for load in loads {
        let r = load.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        wx.account_calls(),
        (1, 1),
        "one fetch of each for three replicas"
    );
    wx.account_latency(0);
    // Sealed in Redis: neither value in clear.
    let keys = redis.keys("wxedge:wx:*");
    assert!(
        keys.contains(&format!("wxedge:wx:{APPID}:token")),
        "{keys:?}"
    );
    for key in ["token", "ticket"] {
        let v = redis
            .cmd(&["GET", &format!("wxedge:wx:{APPID}:{key}")])
            .unwrap();
        assert!(
            !v.contains("ACCOUNT-TOKEN") && !v.contains("JSAPI-TICKET"),
            "{key}: {v}"
        );
        assert!(v.len() > 40, "{key}: {v}");
    }

    // Another party overwrote the token, and the ticket ended: a replica that holds nothing
    // yet (just started) finds the stored token, meets 40001 with it, drops it from Redis
    // (it is still the stored one), fetches one token and the ticket.
    wx.overwrite_token();
    wx.rotate_ticket();
    let _ = redis
        .cmd(&["DEL", &format!("wxedge:wx:{APPID}:ticket")])
        .unwrap();
    let before = wx.account_calls();
    let fresh = replicas(
        1,
        &redis.url(),
        &wx,
        &backend,
        &[("WXEDGE_REDIS_TIMEOUT_MS", "1000")],
    )
    .await;
    let r = sign(fresh[0].edge.addr()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let after = wx.account_calls();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 2),
        "the ticket with the stored (overwritten) token: 40001; the token dropped from Redis and \
         fetched once; the ticket again"
    );
    // A second new replica finds both in Redis: no WeChat call.
    let more = replicas(
        1,
        &redis.url(),
        &wx,
        &backend,
        &[("WXEDGE_REDIS_TIMEOUT_MS", "1000")],
    )
    .await;
    let r = sign(more[0].edge.addr()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(wx.account_calls(), after);

    // Redis gone: a replica holding nothing fetches on its own, and its pages are signed.
    redis.kill();
    let alone = replicas(1, &redis.url(), &wx, &backend, &[]).await;
    let r = sign(alone[0].edge.addr()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(wx.account_calls(), (after.0 + 1, after.1 + 1));
}
