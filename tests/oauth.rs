//! WeChat login at the edge, through the real binary, against a programmable WeChat stand-in
//! (real wire format) and the edge's own sandbox.

mod common;

use common::wechat::{token, FakeWechat, Reply, APPID, SECRET};
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PAGE: &str = "/pages/wxAuthPage/wxAuthPage";
const KEY: &str = "test-session-key-0123456789-abcdefghijklmnop";

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

fn env_for<'a>(
    wx: &'a str,
    backend: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("WX_APPID", APPID),
        ("WX_SECRET", SECRET),
        ("WX_API_BASE", wx),
        ("WXEDGE_BACKEND", backend),
        ("WXEDGE_SESSION_KEY", KEY),
        ("WXEDGE_COOKIE_SECURE", "false"),
        ("WX_TIMEOUT_MS", "1500"),
    ];
    v.extend_from_slice(extra);
    v
}

async fn edge_with(env: Vec<(&str, &str)>) -> EdgeProc {
    let owned: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    blocking(move || {
        let e: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        start_edge(&e)
    })
    .await
    .unwrap()
}

async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: Vec<(String, String)>,
) -> RawResponse {
    let method = method.to_string();
    let target = target.to_string();
    blocking(move || {
        let mut req =
            format!("{method} {target} HTTP/1.1\r\nHost: h5.test\r\nConnection: close\r\n");
        for (k, v) in &headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        raw(addr, req.as_bytes()).unwrap()
    })
    .await
    .unwrap()
}

async fn page_load(addr: SocketAddr, target: impl AsRef<str>, cookie: Option<&str>) -> RawResponse {
    let target = target.as_ref();
    let mut h = vec![(
        "Accept".to_string(),
        "text/html,application/xhtml+xml".to_string(),
    )];
    if let Some(c) = cookie {
        h.push(("Cookie".into(), c.into()));
    }
    send(addr, "GET", target, h).await
}

async fn api(
    addr: SocketAddr,
    target: &str,
    cookie: Option<&str>,
    extra: &[(&str, &str)],
) -> RawResponse {
    let mut h: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(c) = cookie {
        h.push(("Cookie".into(), c.into()));
    }
    send(addr, "GET", target, h).await
}

/// `name=value` of the named cookie among the response's Set-Cookie headers.
fn set_cookie(r: &RawResponse, name: &str) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.split(';').next().unwrap().trim().to_string())
        .find(|c| c.starts_with(&format!("{name}=")) && c.len() > name.len() + 1)
}

fn set_cookie_attrs(r: &RawResponse, name: &str) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .find(|v| v.starts_with(&format!("{name}=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callback_sets_a_session_and_the_backend_gets_the_verified_openid() {
    let wx = FakeWechat::start().await;
    wx.script(
        "CODE1",
        vec![Reply::Token {
            openid: "o-alice".into(),
            unionid: Some("u-alice".into()),
            snapshot: false,
            scope: "snsapi_base",
        }],
    );
    let backend = Backend::start("b").await;
    let (wxb, bu) = (wx.base(), backend.url());
    let edge = edge_with(env_for(&wxb, &bu, &[])).await;

    let r = page_load(edge.addr(), &format!("{PAGE}?code=CODE1&state=STATE"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.body,
        std::fs::read(fixture_dist().join("index.html")).unwrap(),
        "the unchanged page is served"
    );
    let attrs = set_cookie_attrs(&r, "wxedge_session").expect("a session cookie");
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Lax") && attrs.contains("Path=/"),
        "{attrs}"
    );
    assert!(
        !attrs.contains("Secure"),
        "WXEDGE_COOKIE_SECURE=false: {attrs}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let cookie = set_cookie(&r, "wxedge_session").unwrap();
    assert!(!cookie.contains("o-alice"), "the cookie is encrypted");

    let r = api(
        edge.addr(),
        "/api/wx/login",
        Some(&format!("{cookie}; theme=dark")),
        &[("X-WX-OpenID", "o-mallory"), ("x_wx_openid", "o-eve")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = backend.seen();
    let s = seen.last().unwrap();
    let openids: Vec<&str> = s
        .headers
        .iter()
        .filter(|(k, _)| k == "x-wx-openid")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        openids,
        vec!["o-alice"],
        "exactly the verified openid, never a client's"
    );
    assert_eq!(s.header("x-wx-unionid"), Some("u-alice"));
    assert_eq!(s.header("x-wx-scope"), Some("snsapi_base"));
    assert_eq!(s.header("x-wx-snapshot"), None);
    assert_eq!(
        s.header("cookie"),
        Some("theme=dark"),
        "the session cookie stays at the edge"
    );
    assert!(s.headers.iter().all(|(k, _)| k != "x_wx_openid"));

    let r = api(edge.addr(), "/_wxedge/session", Some(&cookie), &[]).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (
            v["authenticated"].as_bool(),
            v["openid"].as_str(),
            v["unionid"].as_str()
        ),
        (Some(true), Some("o-alice"), Some("u-alice"))
    );

    // Without a session: nothing is injected, spoofed headers are still stripped.
    api(
        edge.addr(),
        "/api/user/me",
        None,
        &[("X-Wx-OpenId", "o-mallory")],
    )
    .await;
    let s = backend.seen().last().unwrap().clone();
    assert!(
        s.headers.iter().all(|(k, _)| !k.starts_with("x-wx-")),
        "{:?}",
        s.headers
    );
    assert_eq!(wx.calls("CODE1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_code_many_requests_one_wechat_call() {
    let wx = FakeWechat::start().await;
    wx.script("SHARED", vec![Reply::Delay(300, Box::new(token("o-bob")))]);
    let backend = Backend::start("b").await;
    let (wxb, bu) = (wx.base(), backend.url());
    let edge = edge_with(env_for(&wxb, &bu, &[])).await;
    let addr = edge.addr();
    let loads: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(page_load(
                addr,
                format!("{PAGE}?code=SHARED&state=STATE"),
                None,
            ))
        })
        .collect();
    for l in loads {
        let r = l.await.unwrap();
        assert_eq!(r.status, 200);
        assert!(set_cookie(&r, "wxedge_session").is_some());
    }
    assert_eq!(
        wx.calls("SHARED"),
        1,
        "concurrent loads of one code share one WeChat call"
    );
    // A refresh, a back button, the frontend's own later use: still no second call, no 40163.
    let r = page_load(addr, &format!("{PAGE}?code=SHARED&state=STATE"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(wx.calls("SHARED"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_errors_get_one_retry_then_a_clear_page_and_never_loop() {
    let wx = FakeWechat::start().await;
    wx.script(
        "BUSY-THEN-OK",
        vec![Reply::Err(-1, "system error"), token("o-carol")],
    );
    wx.script("USED", vec![Reply::Err(40163, "code been used")]);
    wx.script("INVALID", vec![Reply::Err(40029, "invalid code")]);
    wx.script("ALWAYS-BUSY", vec![Reply::Err(-1, "system error")]);
    wx.script("HTTP500", vec![Reply::Raw(500, "<html>oops</html>")]);
    wx.script("GARBAGE", vec![Reply::Raw(200, "this is not json")]);
    wx.script("RATE", vec![Reply::Err(45011, "api freq out of limit")]);
    wx.script("GOOD", vec![token("o-dave")]);
    let backend = Backend::start("b").await;
    let (wxb, bu) = (wx.base(), backend.url());
    let edge = edge_with(env_for(&wxb, &bu, &[])).await;
    let addr = edge.addr();

    let r = page_load(addr, &format!("{PAGE}?code=BUSY-THEN-OK&state=STATE"), None).await;
    assert_eq!(r.status, 200);
    assert!(set_cookie(&r, "wxedge_session").is_some());
    assert_eq!(wx.calls("BUSY-THEN-OK"), 2, "-1 is retried once");

    for (code, status) in [
        ("USED", 401),
        ("INVALID", 401),
        ("ALWAYS-BUSY", 502),
        ("HTTP500", 502),
        ("GARBAGE", 502),
        ("RATE", 502),
    ] {
        // First failure: the page restarts its own login once (no spent code in the URL).
        let target = format!("{PAGE}?code={code}&state=STATE&from=menu");
        let r = page_load(addr, &target, None).await;
        assert_eq!(r.status, 302, "{code}");
        assert_eq!(
            r.header("location"),
            Some(format!("{PAGE}?from=menu").as_str()),
            "{code}"
        );
        let marker = set_cookie(&r, "wxedge_retry").expect("a retry marker");
        // Second failure in a row: a clear error page, no further redirect.
        let r = page_load(addr, &target, Some(&marker)).await;
        assert_eq!(r.status, status, "{code}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let html = r.text();
        assert!(
            html.contains("登录失败") && html.contains(&format!("href=\"{PAGE}?from=menu\"")),
            "{code}: {html}"
        );
        assert!(!html.contains(SECRET));
    }
    assert!(
        edge.stderr().contains("errcode 40163 (req_id TeSt40163)"),
        "the log names errcode and req_id"
    );
    assert!(
        !edge.stderr().contains(SECRET) && !edge.stdout().contains(SECRET),
        "the secret is never logged"
    );
    assert!(
        !edge.stdout().contains("code=USED"),
        "codes are redacted from the access log"
    );

    // With a valid session already, a bad code just serves the page.
    let good = page_load(addr, &format!("{PAGE}?code=GOOD&state=STATE"), None).await;
    let cookie = set_cookie(&good, "wxedge_session").unwrap();
    let r = page_load(
        addr,
        &format!("{PAGE}?code=USED&state=STATE"),
        Some(&cookie),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_and_a_hanging_wechat() {
    let wx = FakeWechat::start().await;
    wx.script(
        "HANG",
        vec![Reply::Delay(20_000, Box::new(token("o-late")))],
    );
    let backend = Backend::start("b").await;
    let (wxb, bu) = (wx.base(), backend.url());
    let edge = edge_with(env_for(&wxb, &bu, &[("WX_SECRET", "wrong-secret")])).await;
    let r = page_load(edge.addr(), &format!("{PAGE}?code=ANY&state=STATE"), None).await;
    assert_eq!(
        r.status, 500,
        "40125 is a configuration error: no retry loop, an error page at once"
    );
    assert!(r.text().contains("40125"));

    let edge = edge_with(env_for(&wxb, &bu, &[("WX_TIMEOUT_MS", "800")])).await;
    let t = Instant::now();
    let r = page_load(
        edge.addr(),
        &format!("{PAGE}?code=HANG&state=STATE"),
        Some("wxedge_retry=1"),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(r.status, 502);
    assert!(r.text().contains("timeout"));
    assert!(
        took < Duration::from_secs(3),
        "a hanging WeChat must not hang the page: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_tampered_expired_and_rotated_cookies() {
    let wx = FakeWechat::start().await;
    for c in ["K1", "SHORT"] {
        wx.script(c, vec![token("o-erin")]);
    }
    let backend = Backend::start("b").await;
    let (wxb, bu) = (wx.base(), backend.url());
    let old_key = "old-key-0123456789-0123456789-0123456789";
    let new_key = "new-key-9876543210-9876543210-9876543210";
    let a = edge_with(env_for(&wxb, &bu, &[("WXEDGE_SESSION_KEY", old_key)])).await;
    let cookie = set_cookie(
        &page_load(a.addr(), &format!("{PAGE}?code=K1&state=STATE"), None).await,
        "wxedge_session",
    )
    .unwrap();
    let openid_seen = |b: &Backend| {
        b.seen()
            .last()
            .unwrap()
            .header("x-wx-openid")
            .map(str::to_string)
    };

    api(a.addr(), "/api/me", Some(&cookie), &[]).await;
    assert_eq!(openid_seen(&backend).as_deref(), Some("o-erin"));
    let (name, value) = cookie.split_once('=').unwrap();
    let mut bytes = value.as_bytes().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{name}={}", String::from_utf8(bytes).unwrap());
    let truncated = format!("{name}={}", &value[..value.len() / 2]);
    for bad in [
        tampered.as_str(),
        truncated.as_str(),
        "wxedge_session=",
        "wxedge_session=%%%%",
        "wxedge_session=bm90IGEgY29va2ll",
    ] {
        let r = api(a.addr(), "/api/me", Some(bad), &[]).await;
        assert_eq!(r.status, 200, "a bad cookie is no session, not an error");
        assert_eq!(openid_seen(&backend), None, "{bad}");
    }
    let huge = format!("wxedge_session={}", "A".repeat(20_000));
    let r = api(a.addr(), "/api/me", Some(&huge), &[]).await;
    assert!(r.status == 200 || r.status == 431, "{}", r.status);

    // Rotation: the new key seals, the old one still opens; a foreign key opens nothing.
    let rotated = format!("{new_key},{old_key}");
    let b = edge_with(env_for(&wxb, &bu, &[("WXEDGE_SESSION_KEY", &rotated)])).await;
    api(b.addr(), "/api/me", Some(&cookie), &[]).await;
    assert_eq!(
        openid_seen(&backend).as_deref(),
        Some("o-erin"),
        "old cookies survive a key rotation"
    );
    let c = edge_with(env_for(&wxb, &bu, &[("WXEDGE_SESSION_KEY", new_key)])).await;
    api(c.addr(), "/api/me", Some(&cookie), &[]).await;
    assert_eq!(openid_seen(&backend), None, "a foreign key opens nothing");

    // Expiry.
    let d = edge_with(env_for(
        &wxb,
        &bu,
        &[("WXEDGE_SESSION_LIFETIME_SECONDS", "1")],
    ))
    .await;
    let short = set_cookie(
        &page_load(d.addr(), &format!("{PAGE}?code=SHORT&state=STATE"), None).await,
        "wxedge_session",
    )
    .unwrap();
    api(d.addr(), "/api/me", Some(&short), &[]).await;
    assert_eq!(openid_seen(&backend).as_deref(), Some("o-erin"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    api(d.addr(), "/api/me", Some(&short), &[]).await;
    assert_eq!(
        openid_seen(&backend),
        None,
        "an expired session is no session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_users_userinfo_and_require_session() {
    let wx = FakeWechat::start().await;
    wx.script(
        "SNAP",
        vec![Reply::Token {
            openid: "o-virtual".into(),
            unionid: None,
            snapshot: true,
            scope: "snsapi_userinfo",
        }],
    );
    wx.script(
        "INFO",
        vec![Reply::Token {
            openid: "o-frank".into(),
            unionid: None,
            snapshot: false,
            scope: "snsapi_userinfo",
        }],
    );
    let backend = Backend::start("b").await;
    let (wxb, bu) = (wx.base(), backend.url());
    let edge = edge_with(env_for(
        &wxb,
        &bu,
        &[("WXEDGE_REQUIRE_SESSION", "/api/user/")],
    ))
    .await;
    let addr = edge.addr();

    let snap = set_cookie(
        &page_load(addr, &format!("{PAGE}?code=SNAP&state=STATE"), None).await,
        "wxedge_session",
    )
    .unwrap();
    api(addr, "/api/user/me", Some(&snap), &[]).await;
    let s = backend.seen().last().unwrap().clone();
    assert_eq!(
        s.header("x-wx-snapshot"),
        Some("1"),
        "snapshot users are marked for the backend"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&api(addr, "/_wxedge/session", Some(&snap), &[]).await.body)
            .unwrap();
    assert_eq!(v["snapshot"], true);

    let info = set_cookie(
        &page_load(addr, &format!("{PAGE}?code=INFO&state=STATE"), None).await,
        "wxedge_session",
    )
    .unwrap();
    api(addr, "/api/user/me", Some(&info), &[]).await;
    let s = backend.seen().last().unwrap().clone();
    assert_eq!(
        s.header("x-wx-nickname"),
        Some("%E5%BE%AE%E4%BF%A1%E7%94%A8%E6%88%B7%20Test")
    );
    assert!(s
        .header("x-wx-avatar")
        .unwrap()
        .starts_with("https%3A%2F%2Fthirdwx"));
    assert!(wx.userinfo_calls() >= 1);

    let before = backend.seen().len();
    let r = api(
        addr,
        "/api/user/me",
        None,
        &[("Referer", "http://h5.test/pages/index/index")],
    )
    .await;
    assert_eq!(r.status, 401);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["login_url"],
        "/_wxedge/login?return=%2Fpages%2Findex%2Findex"
    );
    assert!(v["authorize_url"]
        .as_str()
        .unwrap()
        .contains("/connect/oauth2/authorize?appid=wxtestappid0001"));
    assert_eq!(backend.seen().len(), before, "refused at the edge");
    assert_eq!(
        api(addr, "/api/other", None, &[]).await.status,
        200,
        "only the configured prefix requires a session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_started_login_is_csrf_safe_and_refuses_open_redirects() {
    let wx = FakeWechat::start().await;
    wx.script("EDGE", vec![token("o-grace")]);
    let backend = Backend::start("b").await;
    let (wxb, bu) = (wx.base(), backend.url());
    let edge = edge_with(env_for(
        &wxb,
        &bu,
        &[("WX_OPEN_BASE", "https://open.weixin.qq.com")],
    ))
    .await;
    let addr = edge.addr();

    let r = api(
        addr,
        "/_wxedge/login?return=/pages/index/index%3Ftab%3D2",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap().to_string();
    assert!(loc.starts_with("https://open.weixin.qq.com/connect/oauth2/authorize?appid=wxtestappid0001&redirect_uri=http%3A%2F%2Fh5.test%2F_wxedge%2Fcallback&response_type=code&scope=snsapi_base&state="), "{loc}");
    assert!(loc.ends_with("#wechat_redirect"));
    let state = loc
        .split("state=")
        .nth(1)
        .unwrap()
        .trim_end_matches("#wechat_redirect")
        .to_string();
    assert!(
        state.len() <= 128 && state.chars().all(|c| c.is_ascii_alphanumeric()),
        "{state}"
    );
    let nonce = set_cookie(&r, "wxedge_login").expect("nonce cookie");

    // Another browser (no nonce cookie) or a forged state cannot complete this login.
    assert_eq!(
        api(
            addr,
            &format!("/_wxedge/callback?code=EDGE&state={state}"),
            None,
            &[]
        )
        .await
        .status,
        400
    );
    let forged = format!("wxe1{}", "0".repeat(32));
    assert_eq!(
        api(
            addr,
            &format!("/_wxedge/callback?code=EDGE&state={forged}"),
            Some(&nonce),
            &[]
        )
        .await
        .status,
        400
    );
    assert_eq!(
        wx.calls("EDGE"),
        0,
        "nothing was exchanged for a refused state"
    );

    let r = api(
        addr,
        &format!("/_wxedge/callback?code=EDGE&state={state}"),
        Some(&nonce),
        &[],
    )
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/pages/index/index?tab=2"));
    assert!(set_cookie(&r, "wxedge_session").is_some());

    for bad in [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "/%2f%2fevil.example",
        "/%5cevil.example",
        "javascript:alert(1)",
        "%2F%2Fevil",
    ] {
        let enc: String =
            percent_encoding::utf8_percent_encode(bad, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let r = api(addr, &format!("/_wxedge/login?return={enc}"), None, &[]).await;
        assert_eq!(r.status, 400, "{bad}");
        let r = api(addr, &format!("/_wxedge/logout?return={enc}"), None, &[]).await;
        assert_eq!(r.header("location"), Some("/"), "{bad}");
    }
    let r = api(addr, "/_wxedge/logout", None, &[]).await;
    let clear = set_cookie_attrs(&r, "wxedge_session").unwrap();
    assert!(clear.contains("Max-Age=0"), "{clear}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unchanged_backends_redeem_through_the_compat_endpoint() {
    let wx = FakeWechat::start().await;
    wx.script(
        "COMPAT",
        vec![Reply::Token {
            openid: "o-heidi".into(),
            unionid: Some("u-heidi".into()),
            snapshot: false,
            scope: "snsapi_base",
        }],
    );
    let backend = Backend::start("b").await;
    let compat_port = free_port();
    let compat = format!("127.0.0.1:{compat_port}");
    let (wxb, bu) = (wx.base(), backend.url());
    let edge = edge_with(env_for(
        &wxb,
        &bu,
        &[("WXEDGE_WECHAT_COMPAT_LISTEN", &compat)],
    ))
    .await;
    page_load(
        edge.addr(),
        &format!("{PAGE}?code=COMPAT&state=STATE"),
        None,
    )
    .await;
    let caddr: SocketAddr = compat.parse().unwrap();
    let q = |secret: &str, code: &str| {
        format!("/sns/oauth2/access_token?appid={APPID}&secret={secret}&code={code}&grant_type=authorization_code")
    };
    let r = send(caddr, "GET", &q(SECRET, "COMPAT"), vec![]).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["openid"].as_str(), v["unionid"].as_str()),
        (Some("o-heidi"), Some("u-heidi")),
        "{v}"
    );
    assert_eq!(v["access_token"], "ACCESS-o-heidi");
    assert_eq!(
        wx.calls("COMPAT"),
        1,
        "the backend's redemption came from the edge's cache"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&send(caddr, "GET", &q("wrong", "COMPAT"), vec![]).await.body)
            .unwrap();
    assert_eq!(v["errcode"], 40125);
    // Not on the public listener.
    assert_ne!(
        page_load(edge.addr(), &q(SECRET, "COMPAT"), None)
            .await
            .header("content-type"),
        Some("application/json; charset=utf-8")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_off_leaves_pages_alone_and_still_strips_identity_headers() {
    let backend = Backend::start("b").await;
    let bu = backend.url();
    let edge = edge_with(vec![
        ("WXEDGE_BACKEND", bu.as_str()),
        ("WXEDGE_WECHAT_LOGIN", "false"),
    ])
    .await;
    let r = page_load(edge.addr(), format!("{PAGE}?code=ANY&state=STATE"), None).await;
    assert_eq!(r.status, 200);
    assert!(set_cookie(&r, "wxedge_session").is_none());
    let r = page_load(
        edge.addr(),
        "/_wxedge/sandbox/connect/oauth2/authorize",
        None,
    )
    .await;
    assert_eq!(
        r.status, 404,
        "no sandbox, and never the SPA under /_wxedge/"
    );
    api(edge.addr(), "/api/x", None, &[("X-WX-OpenID", "forged")]).await;
    assert_eq!(backend.seen().last().unwrap().header("x-wx-openid"), None);
}

/// The value of the metric line starting with `name` (labels included), 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The embedded sandbox WeChat answering code exchanges after 300 ms, with a metrics listener.
async fn slow_sandbox_edge() -> (EdgeProc, SocketAddr) {
    let metrics = format!("127.0.0.1:{}", free_port());
    // No WX_APPID: the sandbox is the WeChat the edge calls.
    let edge = edge_with(vec![
        ("WXEDGE_SANDBOX_LATENCY_MS", "300"),
        ("WXEDGE_METRICS_LISTEN", metrics.as_str()),
    ])
    .await;
    (edge, metrics.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_latency_delays_the_code_exchange() {
    let (edge, _) = slow_sandbox_edge().await;
    let addr = edge.addr();
    // A fresh code, issued the way a browser gets one.
    let r = api(
        addr,
        "/_wxedge/sandbox/connect/oauth2/authorize?appid=wxsandbox0000001&redirect_uri=http%3A%2F%2Fh5.test%2Fpages%2Findex%2Findex&response_type=code&scope=snsapi_base&state=STATE&auto=alice",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap();
    let target = &loc[loc.find("/pages/").unwrap()..];
    let t = Instant::now();
    let r = page_load(addr, target, None).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(set_cookie(&r, "wxedge_session").is_some());
    assert!(
        took >= Duration::from_millis(300),
        "the callback waited for the slow sandbox: {took:?}"
    );
    let page = Instant::now();
    assert_eq!(
        page_load(addr, "/pages/index/index", None).await.status,
        200
    );
    assert!(
        page.elapsed() < Duration::from_millis(300),
        "a page load without a code is not delayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_sandbox_code_shared_by_concurrent_loads_is_one_exchange() {
    let (edge, metrics) = slow_sandbox_edge().await;
    let addr = edge.addr();
    // 20 concurrent loads sharing one (self-minted) code: one exchange, everyone a session.
    let loads: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(page_load(
                addr,
                "/pages/index/index?code=auto-bob-shared1&state=STATE",
                None,
            ))
        })
        .collect();
    for l in loads {
        let r = l.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(set_cookie(&r, "wxedge_session").is_some());
    }
    let m = blocking(move || {
        raw(
            metrics,
            b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .text()
    })
    .await
    .unwrap();
    assert_eq!(
        metric(
            &m,
            "wxedge_wechat_exchanges_total{errcode=\"0\",result=\"ok\"}"
        ),
        1.0,
        "one exchange, as the edge counts them:\n{m}"
    );
    assert_eq!(
        metric(
            &m,
            "wxedge_requests_total{route=\"sandbox\",status=\"200\"}"
        ),
        1.0,
        "and as the sandbox saw them:\n{m}"
    );
    assert_eq!(
        metric(&m, "wxedge_code_singleflight_joins_total")
            + metric(&m, "wxedge_code_cache_hits_total"),
        19.0,
        "the other 19 loads joined the call or found its answer:\n{m}"
    );
}

/// The one upstream builder, seen from the backend: the same request from an HTTP/1.1 client
/// (chunked, with every hop-by-hop line) and from an HTTP/1.0 one (a length) arrives as exactly
/// the same header lines, in the same order: the verified identity injected, the client's
/// copies stripped, the session cookie removed, the client's request id kept, hop-by-hop and
/// framing lines replaced by the edge's own. (`tests/tls.rs` checks HTTP/2 against it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_client_version_sends_the_backend_exactly_the_built_request() {
    let wx = FakeWechat::start().await;
    wx.script(
        "CODE-BOTH",
        vec![Reply::Token {
            openid: "o-both".into(),
            unionid: None,
            snapshot: false,
            scope: "snsapi_base",
        }],
    );
    let backend = Backend::start("b").await;
    let (wxb, bu) = (wx.base(), backend.url());
    let edge = edge_with(env_for(&wxb, &bu, &[])).await;
    let r = page_load(
        edge.addr(),
        format!("{PAGE}?code=CODE-BOTH&state=STATE"),
        None,
    )
    .await;
    let cookie = set_cookie(&r, "wxedge_session").expect("a session");

    let common = format!(
        "Host: h5.test\r\nCookie: {cookie}; theme=dark\r\n\
X-WX-OpenID: o-mallory\r\nx_wx_openid: o-eve\r\nX-Request-ID: client-id-1\r\nConnection: keep-alive, X-Hop\r\n\
X-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.9\r\nAccept: application/json\r\n"
    );
    let http11 = format!(
        "POST /api/./orders/../orders?x=1 HTTP/1.1\r\n{common}\
Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let http10 = format!(
        "POST /api/./orders/../orders?x=1 HTTP/1.0\r\n{common}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let mut seen = Vec::new();
    for request in [http11, http10] {
        let (addr, bytes) = (edge.addr(), request.into_bytes());
        let r = blocking(move || raw(addr, &bytes).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-request-id"), Some("client-id-1"));
        seen.push(backend.seen().last().unwrap().clone());
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert_eq!(
        (a.method.as_str(), a.target.as_str()),
        ("POST", "/api/orders?x=1")
    );
    assert_eq!(
        (b.method.as_str(), b.target.as_str()),
        ("POST", "/api/orders?x=1")
    );
    assert_eq!(a.body, b"hello");
    assert_eq!(b.body, b"hello");
    let want: Vec<(String, String)> = [
        ("host", "h5.test"),
        ("accept", "application/json"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-real-ip", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "h5.test"),
        ("x-wx-openid", "o-both"),
        ("x-wx-scope", "snsapi_base"),
        ("cookie", "theme=dark"),
        ("x-request-id", "client-id-1"),
        ("content-length", "5"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(a.headers, want, "HTTP/1.1");
    assert_eq!(b.headers, want, "HTTP/1.0");
}
