//! The JS-SDK at the edge (`/_wxedge/jssdk/config`), through the real binary, against the
//! programmable WeChat stand-in (`cgi-bin/stable_token` as a POST of JSON, `getticket`, the real
//! error shapes): signatures checked by the test's own SHA-1 of WeChat's string, one fetch of each
//! credential whatever the concurrency, a token overwritten elsewhere fetched once more (not a
//! storm), WeChat down or refusing the edge's credentials answered clearly and without a pile-up.

mod common;

use common::wechat::{FakeWechat, Reply};
use common::*;
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use std::time::Duration;

const KEY: &str = "test-session-key-0123456789-abcdefghijklmnop";

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

struct Site {
    edge: EdgeProc,
    metrics: SocketAddr,
}

async fn site(wx: &FakeWechat, extra: &[(&str, &str)]) -> Site {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut env: Vec<(String, String)> = [
        ("WX_APPID", common::wechat::APPID),
        ("WX_SECRET", common::wechat::SECRET),
        ("WX_API_BASE", &wx.base()),
        ("WXEDGE_SESSION_KEY", KEY),
        ("WX_TIMEOUT_MS", "1500"),
        ("WXEDGE_METRICS_LISTEN", &metrics.to_string()),
        ("WXEDGE_LIMIT_LOGIN_RATE", "0"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push(("RUST_LOG".into(), "info".into()));
    let edge = blocking(move || {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start_edge(&e)
    })
    .await
    .unwrap();
    Site { edge, metrics }
}

/// `GET /_wxedge/jssdk/config?url=<encoded url>` with `Host: host`, on a thread of its own.
fn config(addr: SocketAddr, host: &str, url: &str) -> tokio::task::JoinHandle<RawResponse> {
    let enc = percent_encoding::utf8_percent_encode(url, percent_encoding::NON_ALPHANUMERIC);
    let req = format!(
        "GET /_wxedge/jssdk/config?url={enc} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    blocking(move || raw(addr, req.as_bytes()).unwrap())
}

fn json(r: &RawResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("not JSON: {}", r.text()))
}

/// WeChat's signature, computed here from its documented rule (not the edge's code).
fn expected_signature(ticket: &str, nonce: &str, timestamp: u64, url: &str) -> String {
    let string1 = format!("jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}");
    Sha1::digest(string1.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_signatures_fetch_each_credential_once_and_sign_what_the_page_sent() {
    let wx = FakeWechat::start().await;
    let s = site(&wx, &[]).await;
    let addr = s.edge.addr();
    let page = "http://h5.test/pages/index/index?from=share&名=值&code=C1&state=S";
    let loads: Vec<_> = (0..40)
        .map(|_| config(addr, "h5.test", &format!("{page}#/route")))
        .collect();
    let mut nonces = std::collections::HashSet::new();
    for load in loads {
        let r = load.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let v = json(&r);
        assert_eq!(v["appId"], common::wechat::APPID);
        let ts = v["timestamp"].as_u64().unwrap();
        let nonce = v["nonceStr"].as_str().unwrap();
        assert!(nonces.insert(nonce.to_string()), "a nonce repeated");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(ts.abs_diff(now) <= 5, "timestamp {ts} is not now ({now})");
        // Signed: the URL as the page sent it, cut at `#`.
        assert_eq!(
            v["signature"],
            expected_signature(&wx.ticket(), nonce, ts, page),
            "{v}"
        );
    }
    assert_eq!(wx.account_calls(), (1, 1), "one token and one ticket fetch");
    assert_eq!(
        wx.bad_token_calls(),
        (0, 0),
        "normal mode, WeChat's JSON body"
    );

    // Only this site's own pages.
    for (host, url, code) in [
        (
            "h5.test",
            "http://evil.example/pages/index/index",
            "bad_url",
        ),
        ("h5.test", "http://h5.test.evil.example/", "bad_url"),
        ("h5.test", "", "bad_url"),
        ("h5.test", "/pages/index/index", "bad_url"),
    ] {
        let r = config(addr, host, url).await.unwrap();
        assert_eq!(
            (r.status, json(&r)["error"].as_str()),
            (400, Some(code)),
            "{url}"
        );
    }
    let r = blocking(move || {
        raw(
            addr,
            b"POST /_wxedge/jssdk/config?url=x HTTP/1.1\r\nHost: h5.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(r.status, 405);
    // Metrics: signatures by result, fetches by result, the held credentials' age.
    let m = s.metrics;
    let text = blocking(move || metrics_text(m)).await.unwrap();
    for line in [
        "wxedge_jssdk_signatures_total{result=\"signed\"} 40",
        "wxedge_jssdk_signatures_total{result=\"bad_url\"} 4",
        "wxedge_wechat_credential_fetches_total{credential=\"access_token\",result=\"ok\"} 1",
        "wxedge_wechat_credential_fetches_total{credential=\"jsapi_ticket\",result=\"ok\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert!(
        text.contains("wxedge_wechat_credential_age_seconds{credential=\"jsapi_ticket\"} 0")
            || text.contains("wxedge_wechat_credential_age_seconds{credential=\"jsapi_ticket\"} 1"),
        "{text}"
    );
    // Readiness tells what is held, never the values.
    let r = get_timed(addr, "/_wxedge/readyz").await.0;
    let v = json(&r);
    assert_eq!(v["jssdk"]["jsapi_ticket"]["held"], true, "{v}");
    assert!(!r.text().contains(&wx.ticket()));
    // Nothing secret in the log.
    let logs = format!("{}{}", s.edge.stdout(), s.edge.stderr());
    for secret in [common::wechat::SECRET, "ACCOUNT-TOKEN-", "JSAPI-TICKET-"] {
        assert!(!logs.contains(secret), "{secret} in the log");
    }
}

/// Another party fetched the account's token with `cgi-bin/token` (the edge's one is now "not
/// latest"): the edge's next ticket fetch gets 40001, drops that token (only that one), fetches
/// one token and one ticket, and every waiting page is signed: one refetch, not a storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_overwritten_elsewhere_is_fetched_once_more_not_in_a_storm() {
    let wx = FakeWechat::start().await;
    // The first ticket call finds the token overwritten, as a mid-life 40001 does.
    wx.script_ticket(vec![Reply::Err(
        40001,
        "invalid credential, access_token is invalid or not latest",
    )]);
    let s = site(&wx, &[]).await;
    let addr = s.edge.addr();
    let url = "http://h5.test/pages/a";
    let loads: Vec<_> = (0..20).map(|_| config(addr, "h5.test", url)).collect();
    for load in loads {
        let r = load.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        wx.account_calls(),
        (2, 2),
        "token, ticket (40001), token again, ticket: nothing more"
    );
    let m = s.metrics;
    let text = blocking(move || metrics_text(m)).await.unwrap();
    assert!(
        text.contains(
            "wxedge_wechat_credential_fetches_total{credential=\"jsapi_ticket\",result=\"40001\"} 1"
        ),
        "{text}"
    );
}

/// WeChat down: pages get a clear 503 with `Retry-After` at once, the edge calls WeChat once per
/// pause rather than once per page, and signs again when WeChat is back. WeChat refusing the
/// edge's address (40164): a 502 that says so, one log line naming the fix, readiness detail,
/// and the site keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_down_or_refusing_is_a_clear_answer_without_a_pile_up() {
    let wx = FakeWechat::start().await;
    wx.set_down(true);
    let s = site(&wx, &[]).await;
    let addr = s.edge.addr();
    let url = "http://h5.test/";
    let started = std::time::Instant::now();
    let loads: Vec<_> = (0..30).map(|_| config(addr, "h5.test", url)).collect();
    for load in loads {
        let r = load.await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(json(&r)["error"], "wechat_unavailable");
        assert_eq!(r.header("retry-after"), Some("5"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(wx.account_calls().0, 1, "one call, then held off");
    // Back: signed after the pause.
    wx.set_down(false);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let r = config(addr, "h5.test", url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // A fresh edge WeChat refuses: the address is not whitelisted.
    let wx = FakeWechat::start().await;
    wx.script_token(vec![Reply::Err(
        40164,
        "invalid ip 203.0.113.9 ipv6 ::ffff:203.0.113.9, not in whitelist",
    )]);
    let s = site(&wx, &[]).await;
    let addr = s.edge.addr();
    for _ in 0..5 {
        let r = config(addr, "h5.test", url).await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(json(&r)["error"], "wechat_refused");
        assert!(r.text().contains("40164"), "{}", r.text());
    }
    assert_eq!(
        wx.account_calls().0,
        1,
        "held off after a configuration error"
    );
    let r = get_timed(addr, "/_wxedge/readyz").await.0;
    let v = json(&r);
    assert_eq!(r.status, 200, "the site keeps serving: {v}");
    assert_eq!(v["jssdk"]["configuration_error"], true, "{v}");
    let logs = s.edge.stderr();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("IP whitelist"))
        .collect();
    assert_eq!(lines.len(), 1, "one line naming the fix:\n{logs}");
    assert!(lines[0].contains("203.0.113.9"), "{}", lines[0]);
    assert!(!logs.contains(common::wechat::SECRET));
}

/// The edge's own sandbox (no WeChat account): the JS-SDK endpoint signs with the sandbox's
/// ticket, and the sandbox's verification (what its stand-in script asks) accepts it for that
/// URL only. Chromium drives the same through the sample page in `tests/browser_e2e.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sandbox_issues_credentials_and_verifies_signatures_like_wechat() {
    let edge = blocking(|| start_edge(&[])).await.unwrap();
    let addr = edge.addr();
    let host = addr.to_string();
    let url = format!("http://{host}/jssdk.html?x=1");
    let r = config(addr, &host, &url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    let verify_request = |url: &str| {
        let q = format!(
            "appId={}&timestamp={}&nonceStr={}&signature={}&url={}",
            v["appId"].as_str().unwrap(),
            v["timestamp"],
            v["nonceStr"].as_str().unwrap(),
            v["signature"].as_str().unwrap(),
            percent_encoding::utf8_percent_encode(url, percent_encoding::NON_ALPHANUMERIC)
        );
        format!(
            "GET /_wxedge/sandbox/jssdk/verify?{q} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
    };
    let (same, other) = (
        verify_request(&url),
        verify_request(&format!("http://{host}/jssdk.html")),
    );
    let (ok, wrong) = blocking(move || {
        let answer = |req: String| json(&raw(addr, req.as_bytes()).unwrap())["errMsg"].clone();
        (answer(same), answer(other))
    })
    .await
    .unwrap();
    assert_eq!(ok, "config:ok");
    assert_eq!(wrong, "config:invalid signature");
    // The stand-in script is served.
    let r = get_timed(addr, "/_wxedge/sandbox/jweixin.js").await.0;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("wx.config") || r.text().contains("config:"),
        "{}",
        r.text()
    );
}

/// A request to the compat listener; the answer's JSON.
fn compat_call(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: compat\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw(addr, req.as_bytes()).unwrap();
    (r.status, json(&r))
}

/// The backend's 中控: an unchanged backend pointed at the compat listener gets the edge's
/// token and ticket through WeChat's own endpoints (credentials checked like WeChat), never makes
/// WeChat mint another, and after a 40001 tells the edge, which refetches once (a second backend
/// reporting the same old token a moment later does not cause another fetch).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unchanged_backend_takes_the_edges_token_and_ticket_from_the_compat_listener() {
    use common::wechat::{APPID, SECRET};
    let wx = FakeWechat::start().await;
    let compat = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = compat.to_string();
    let _s = site(&wx, &[("WXEDGE_WECHAT_COMPAT_LISTEN", &listen)]).await;
    let wx = std::sync::Arc::new(wx);
    let w = wx.clone();
    blocking(move || {
        let token_url = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}");
        let (status, v) = compat_call(compat, "GET", &token_url, "");
        assert_eq!(status, 200);
        let token = v["access_token"].as_str().unwrap().to_string();
        assert_eq!(token, "ACCOUNT-TOKEN-0");
        assert!(v["expires_in"].as_u64().unwrap() > 7000, "{v}");
        // WeChat's checks, WeChat's answers.
        let wrong = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret=nope");
        assert_eq!(compat_call(compat, "GET", &wrong, "").1["errcode"], 40125);
        let grant = format!("/cgi-bin/token?grant_type=password&appid={APPID}&secret={SECRET}");
        assert_eq!(compat_call(compat, "GET", &grant, "").1["errcode"], 40002);
        // stable_token, even asking to force a refresh: the same token, nothing forced.
        let body = format!(r#"{{"grant_type":"client_credential","appid":"{APPID}","secret":"{SECRET}","force_refresh":true}}"#);
        let (_, v) = compat_call(compat, "POST", "/cgi-bin/stable_token", &body);
        assert_eq!(v["access_token"], token.as_str());
        // The ticket, for the token the edge handed out only.
        let ticket_url = format!("/cgi-bin/ticket/getticket?access_token={token}&type=jsapi");
        let (_, v) = compat_call(compat, "GET", &ticket_url, "");
        assert_eq!((v["errcode"].as_i64(), v["ticket"].as_str()), (Some(0), Some("JSAPI-TICKET-0")));
        let forged = "/cgi-bin/ticket/getticket?access_token=guess&type=jsapi";
        assert_eq!(compat_call(compat, "GET", forged, "").1["errcode"], 40001);
        assert_eq!(w.account_calls(), (1, 1));
        assert_eq!(w.bad_token_calls(), (0, 0));
        // Nothing else of WeChat's API is proxied.
        let (status, v) = compat_call(compat, "POST", "/cgi-bin/menu/create?access_token=x", "{}");
        assert_eq!((status, v["errcode"].as_i64()), (404, Some(40066)));

        // Someone overwrote the token at WeChat; the backend got 40001 and says so.
        w.overwrite_token();
        let failed = format!("/cgi-bin/wxedge/token_failed?access_token={token}");
        let (_, v) = compat_call(compat, "POST", &failed, "");
        assert_eq!(v["access_token"], "ACCOUNT-TOKEN-1", "{v}");
        // Another backend process reports the same old token: already replaced, no new fetch.
        let (_, v) = compat_call(compat, "POST", &failed, "");
        assert_eq!(v["access_token"], "ACCOUNT-TOKEN-1", "{v}");
        assert_eq!(w.account_calls().0, 2);
    })
    .await
    .unwrap();
}
