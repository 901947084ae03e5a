//! End to end in real headless Chromium: the unchanged uni-app build through the real edge,
//! its login against the edge's sandbox WeChat, and a backend that trusts only the edge's header.

mod common;

use common::relay;
use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

const APPID: &str = "wxe2eappid000001";
const SECRET: &str = "e2e-secret-0123456789abcdef0123";

/// The existing backend's four calls (see the fixture's README), identity from `X-WX-OpenID` only.
fn app_backend(phones: Arc<Mutex<HashMap<String, String>>>) -> Handler {
    Arc::new(move |req: &Seen| {
        let openid = req.header("x-wx-openid").map(str::to_string);
        let path = req.target.split('?').next().unwrap_or("");
        let unauthorized = || Some((401, r#"{"error":"no verified identity"}"#.to_string()));
        match (req.method.as_str(), path) {
            ("GET", "/api/wx/config") => {
                Some((200, serde_json::json!({ "appId": APPID }).to_string()))
            }
            ("POST", "/api/wx/login") => {
                let Some(o) = openid else {
                    return unauthorized();
                };
                let bound = phones.lock().unwrap().contains_key(&o);
                Some((
                    200,
                    serde_json::json!({ "bound": bound, "token": format!("t-{o}") }).to_string(),
                ))
            }
            ("POST", "/api/user/bind-phone") => {
                let Some(o) = openid else {
                    return unauthorized();
                };
                let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
                let phone = body["phone"].as_str().unwrap_or("").to_string();
                if phone.len() < 5 {
                    return Some((400, r#"{"error":"bad phone"}"#.into()));
                }
                phones.lock().unwrap().insert(o, phone);
                Some((200, r#"{"ok":true}"#.into()))
            }
            ("GET", "/api/user/me") => {
                let Some(o) = openid else {
                    return unauthorized();
                };
                let phone = phones.lock().unwrap().get(&o).cloned();
                match phone {
                    Some(p) => Some((
                        200,
                        serde_json::json!({ "phone": p, "openid": o }).to_string(),
                    )),
                    None => unauthorized(),
                }
            }
            _ => Some((404, r#"{"error":"not found"}"#.into())),
        }
    })
}

/// tests/e2e with its driver installed; Debian's chromium must be there (`bash .ci/run` installs it).
fn driver_dir() -> std::path::PathBuf {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed: bash .ci/run installs it"
    );
    if !e2e.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&e2e)
            .status()
            .unwrap();
        assert!(ok.success(), "npm ci in tests/e2e failed");
    }
    e2e
}

fn wechat_ok_calls(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("wxedge_wechat_exchanges_total") && l.contains("result=\"ok\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uniapp_login_bind_and_return_in_chromium() {
    login_bind_and_return(false).await;
}

/// The same over HTTPS: Chromium trusts the test certificate by its key (the
/// `--ignore-certificate-errors-spki-list` flag), negotiates HTTP/2, and the session cookie and
/// the login's `redirect_uri` are HTTPS ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uniapp_login_over_https_and_http2_in_chromium() {
    login_bind_and_return(true).await;
}

/// A certificate for 127.0.0.1 and its key in `dir`, and the base64 SHA-256 of its public key.
fn loopback_certificate(dir: &Path) -> (String, String, String) {
    let (cert, key, public_key) = self_signed_certificate(dir, "127.0.0.1");
    let spki = ring::digest::digest(&ring::digest::SHA256, &public_key);
    use base64::Engine;
    let pin = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    (cert, key, pin)
}

async fn login_bind_and_return(https: bool) {
    let e2e = driver_dir();
    let phones = Arc::new(Mutex::new(HashMap::new()));
    let backend = Backend::start_with("app", app_backend(phones.clone())).await;
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut env: Vec<(String, String)> = vec![
        ("WXEDGE_BACKEND".into(), backend.url()),
        ("WXEDGE_SANDBOX".into(), "true".into()),
        ("WX_APPID".into(), APPID.into()),
        ("WX_SECRET".into(), SECRET.into()),
        (
            "WXEDGE_SESSION_KEY".into(),
            "e2e-session-key-0123456789-0123456789".into(),
        ),
        ("WXEDGE_METRICS_LISTEN".into(), metrics.clone()),
    ];
    let tls_port = free_port();
    let mut chromium_args = String::new();
    if https {
        let (cert, key, pin) = loopback_certificate(&temp_dir("e2e-tls"));
        env.push(("WXEDGE_TLS_LISTEN".into(), format!("127.0.0.1:{tls_port}")));
        env.push(("WXEDGE_TLS_CERT".into(), cert));
        env.push(("WXEDGE_TLS_KEY".into(), key));
        chromium_args = format!("--ignore-certificate-errors-spki-list={pin}");
    }
    let edge = tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start_edge(&e)
    })
    .await
    .unwrap();
    let origin = if https {
        format!("https://127.0.0.1:{tls_port}")
    } else {
        edge.url("")
    };

    let shot = temp_dir("e2e").join("home.png");
    let out = Command::new("node")
        .arg("flow.mjs")
        .current_dir(&e2e)
        .env("EDGE", &origin)
        .env("CHROMIUM_ARGS", &chromium_args)
        .env("PHONE", "13800138000")
        .env("SCREENSHOT", &shot)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|_| panic!("driver output: {stdout}\n{stderr}"));
    assert_eq!(v["ok"], true, "{v:#}\nedge log:\n{}", edge.stderr());

    // Home shows the phone just bound and the openid the backend got from the edge.
    let bound: Vec<(String, String)> = phones.lock().unwrap().clone().into_iter().collect();
    assert_eq!(bound.len(), 1, "{bound:?}");
    let (openid, phone) = &bound[0];
    assert_eq!(v["first"]["phone"], "13800138000");
    assert_eq!(v["first"]["openid"].as_str(), Some(openid.as_str()));
    assert!(
        v["sandboxUserText"]
            .as_str()
            .unwrap()
            .contains(openid.as_str()),
        "the sandbox's alice is who logged in"
    );
    assert_eq!(phone, "13800138000");
    assert_eq!(
        v["second"]["openid"].as_str(),
        Some(openid.as_str()),
        "the same user again: bound → home"
    );
    assert_eq!(v["wechatRedirects"], 2);
    let q = v["authorizeQuery"].as_str().unwrap();
    let redirect = if https {
        "redirect_uri=https%3A%2F%2F127.0.0.1"
    } else {
        "redirect_uri=http%3A%2F%2F127.0.0.1"
    };
    assert!(
        q.contains(&format!("appid={APPID}")) && q.contains(redirect),
        "{q}"
    );
    if https {
        // Every request of the flow came over HTTP/2 (the access log says so), the cookie is
        // Secure, and HSTS-less HTTPS still announced itself upstream.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let log = edge.stdout();
        let browser: Vec<&str> = log.lines().filter(|l| l.contains("wxedge-e2e")).collect();
        assert!(browser.len() > 10, "{log}");
        assert!(browser.iter().all(|l| l.contains(" HTTP/2.0\" ")), "{log}");
        let me = backend
            .seen()
            .into_iter()
            .rev()
            .find(|s| s.target.starts_with("/api/"))
            .unwrap();
        assert_eq!(me.header("x-forwarded-proto"), Some("https"));
    }
    let session = v["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "wxedge_session")
        .expect("session cookie");
    assert_eq!(
        (session["httpOnly"].as_bool(), session["sameSite"].as_str()),
        (Some(true), Some("Lax"))
    );
    assert_eq!(session["secure"].as_bool(), Some(true));

    // The backend never saw the session cookie nor a code it had to redeem itself.
    for s in backend.seen() {
        assert!(
            s.header("cookie")
                .is_none_or(|c| !c.contains("wxedge_session")),
            "{:?}",
            s.headers
        );
    }
    // One WeChat call per login: two logins, two calls (the second visit costs "one more at most").
    let addr: std::net::SocketAddr = metrics.parse().unwrap();
    let m = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(wechat_ok_calls(&m.text()), 2, "{}", m.text());
    assert!(shot.exists());
}

/// The README's first command as a person tries it: sample dist, embedded defaults, sandbox login.
#[test]
fn sample_site_logs_in_through_the_sandbox_on_embedded_defaults() {
    let e2e = driver_dir();
    let edge = start_edge(&[("WXEDGE_DIST", repo_dist().to_str().unwrap())]);
    let out = Command::new("node")
        .arg("demo.mjs")
        .current_dir(&e2e)
        .env("EDGE", edge.url(""))
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| {
            panic!(
                "driver output: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(v["ok"], true, "{v:#}\nedge log:\n{}", edge.stderr());
    assert_eq!(v["before"], "Not logged in.");
    assert!(
        v["after"].as_str().unwrap().contains("snapshot user"),
        "{v}"
    );
    assert_eq!(v["afterLogout"], "Not logged in.");
    // The sample JS-SDK page: wx.ready for its own URL (query kept, `#` cut), the stand-in's
    // `config:invalid signature` for a signature of another URL.
    let signed = v["jssdk"].as_str().unwrap();
    assert!(
        signed.starts_with("wx.ready: signed for ") && signed.ends_with("/jssdk.html?from=share"),
        "{v}"
    );
    assert_eq!(
        v["jssdkWrongUrl"], "wx.error: config:invalid signature",
        "{v}"
    );
    assert!(
        edge.stderr()
            .contains("sandbox WeChat at /_wxedge/sandbox/"),
        "{}",
        edge.stderr()
    );
}

/// Runs tests/e2e/relay.mjs against a relay edge and a target edge named `*.localhost`.
async fn relay_login(
    ticket: bool,
    mode: &str,
    target_env: Vec<(String, String)>,
) -> (serde_json::Value, relay::Sites) {
    let e2e = driver_dir();
    let s = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = target_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        relay::sites(ticket, "localhost", APPID, SECRET, &env)
    })
    .await
    .unwrap();
    let out = Command::new("node")
        .arg("relay.mjs")
        .current_dir(&e2e)
        .env("RELAY", format!("http://{}", s.relay_host))
        .env("TARGET", format!("http://{}", s.target_host))
        .env("MODE", mode)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| {
            panic!(
                "driver output: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(
        v["ok"],
        true,
        "{v:#}\nrelay log:\n{}\ntarget log:\n{}",
        s.relay.stderr(),
        s.target.stderr()
    );
    (v, s)
}

/// Identity relay: the sample site on `shop.localhost` logs in through `auth.localhost`; the
/// browser carries a ticket, never a code, to the shop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_ticket_login_in_chromium() {
    let dist = repo_dist().display().to_string();
    let (v, s) = relay_login(true, "edge", vec![("WXEDGE_DIST".into(), dist)]).await;
    assert_eq!(v["before"], "Not logged in.");
    let openid = v["session"]["openid"]
        .as_str()
        .expect("a session on the shop");
    assert!(v["after"].as_str().unwrap().contains(openid), "{v:#}");
    let navs: Vec<&str> = v["navigations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    let shop = format!("http://{}/", s.target_host);
    let relay = format!("http://{}/", s.relay_host);
    assert!(
        navs.iter()
            .any(|n| n.starts_with(&format!("{relay}_wxedge/relay/callback?code="))),
        "{navs:#?}"
    );
    assert!(
        navs.iter()
            .any(|n| n.starts_with(&format!("{shop}_wxedge/relay/ticket?ticket="))),
        "{navs:#?}"
    );
    assert!(
        navs.iter()
            .filter(|n| n.starts_with(&shop))
            .all(|n| !n.contains("code=")),
        "{navs:#?}"
    );
    let cookies = v["cookies"].as_array().unwrap();
    assert!(
        cookies
            .iter()
            .any(|c| c["name"] == "wxedge_session" && c["domain"] == "shop.localhost"),
        "{cookies:?}"
    );
    assert!(
        cookies
            .iter()
            .all(|c| c["domain"] != "auth.localhost" || c["name"] != "wxedge_session"),
        "the relay keeps no session of its own: {cookies:?}"
    );
}

/// Code relay: the unchanged uni-app on `camp.localhost` builds the WeChat URL itself, pointed at
/// the relay (the one-line change); the code comes back to its page and the edge redeems it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_code_login_of_a_frontend_built_url_in_chromium() {
    let phones = Arc::new(Mutex::new(HashMap::new()));
    let backend = Backend::start_with("app", app_backend(phones)).await;
    let (v, s) = relay_login(
        false,
        "frontend",
        vec![("WXEDGE_BACKEND".into(), backend.url())],
    )
    .await;
    let openid = v["session"]["openid"].as_str().expect("a session on camp");
    let navs: Vec<&str> = v["navigations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    let camp = format!("http://{}/", s.target_host);
    assert!(
        navs.iter().any(|n| n.starts_with(&format!(
            "http://{}/_wxedge/relay/authorize?appid={APPID}",
            s.relay_host
        ))),
        "{navs:#?}"
    );
    assert!(
        navs.iter()
            .any(|n| n.starts_with(&camp) && n.contains("code=") && n.contains("state=STATE")),
        "{navs:#?}"
    );
    // The backend learnt who it is from the edge's header only.
    let login = backend
        .seen()
        .into_iter()
        .find(|r| r.target == "/api/wx/login")
        .expect("the page's login call");
    assert_eq!(login.header("x-wx-openid"), Some(openid));
}
