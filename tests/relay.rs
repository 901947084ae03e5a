//! The login relay (授权中转) with real edges on loopback playing separate domains: `auth.test`
//! owns the WeChat-authorized domain (its sandbox WeChat refuses any other `redirect_uri`, as
//! WeChat does) and relays for `shop.test` (identity relay: tickets) and `camp.test` (code relay).
//! A raw client with a cookie jar per host follows every redirect, as a browser would.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::relay::{Sites, RELAY_KEY};
use common::*;
use wxedge::session::{Identity, Origin, SessionKeys, TicketCodec};

const APPID: &str = "wxrelayappid0001";
const SECRET: &str = "relay-test-secret-0123456789abcdef";
const PAGE: &str = "/pages/wxAuthPage/wxAuthPage";

fn sites(ticket: bool) -> Sites {
    common::relay::sites(ticket, "test", APPID, SECRET, &[])
}

/// A browser: cookies per host, redirects followed, the sandbox's user picked by `auto=`.
#[derive(Default)]
struct Browser {
    jar: HashMap<String, Vec<(String, String)>>,
}

fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let i = rest.find('/').unwrap_or(rest.len());
    let target = if i == rest.len() { "/" } else { &rest[i..] };
    (rest[..i].to_string(), target.to_string())
}

impl Browser {
    fn get(&mut self, url: &str) -> RawResponse {
        let (authority, target) = split(url);
        let target = target.split('#').next().unwrap();
        let port: u16 = authority.rsplit(':').next().unwrap().parse().unwrap();
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/html,*/*\r\nConnection: close\r\n"
        );
        if let Some(c) = self.jar.get(&authority).filter(|c| !c.is_empty()) {
            let pairs: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req.push_str(&format!("Cookie: {}\r\n", pairs.join("; ")));
        }
        req.push_str("\r\n");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let r = raw(addr, req.as_bytes()).unwrap_or_else(|e| panic!("{url}: {e}"));
        let jar = self.jar.entry(authority).or_default();
        for (k, v) in &r.headers {
            if !k.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let (name, value) = v.split(';').next().unwrap().split_once('=').unwrap();
            jar.retain(|(n, _)| n != name);
            if !value.is_empty() && !v.contains("Max-Age=0") {
                jar.push((name.to_string(), value.to_string()));
            }
        }
        r
    }

    fn cookie(&self, authority: &str, name: &str) -> Option<String> {
        self.jar
            .get(authority)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(n, v)| format!("{n}={v}"))
    }

    /// Follows redirects from `url` (the WeChat user picks `user`): the URLs visited and the
    /// last answer.
    fn follow(&mut self, url: &str, user: &str) -> (Vec<String>, RawResponse) {
        let mut url = url.to_string();
        let mut visited = Vec::new();
        for _ in 0..12 {
            if url.contains("/connect/oauth2/authorize?") {
                url = format!("{}&auto={user}", url.split('#').next().unwrap());
            }
            visited.push(url.clone());
            let r = self.get(&url);
            if r.status != 302 {
                return (visited, r);
            }
            let loc = r.header("location").unwrap().to_string();
            url = if loc.starts_with("http://") {
                loc
            } else {
                format!("http://{}{loc}", split(&url).0)
            };
        }
        panic!("redirect loop: {visited:#?}");
    }
}

fn query_value(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1.split('#').next()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn session_openid(b: &mut Browser, host: &str) -> Option<String> {
    let r = b.get(&format!("http://{host}/_wxedge/session"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["openid"].as_str().map(str::to_string)
}

fn metric(addr: SocketAddr, line_start: &str) -> u64 {
    let r = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    r.text()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn relay_metric(addr: SocketAddr, mode: &str, result: &str) -> u64 {
    metric(
        addr,
        &format!("wxedge_relay_logins_total{{mode=\"{mode}\",result=\"{result}\"}}"),
    )
}

/// Starts a login at the target: the relay URL it sends the browser to.
fn start_login(b: &mut Browser, s: &Sites, ret: &str) -> String {
    let r = b.get(&format!(
        "http://{}/_wxedge/login?return={ret}",
        s.target_host
    ));
    assert_eq!(r.status, 302, "{}", r.text());
    r.header("location").unwrap().to_string()
}

#[test]
fn identity_relay_logs_in_on_the_target_and_the_code_never_leaves_the_relay() {
    let s = sites(true);
    let mut b = Browser::default();
    let to_relay = start_login(&mut b, &s, "/pages/index/index%3Ftab%3D2");
    let relay_prefix = format!("http://{}/_wxedge/relay/authorize?", s.relay_host);
    assert!(to_relay.starts_with(&relay_prefix), "{to_relay}");
    assert_eq!(query_value(&to_relay, "mode").as_deref(), Some("ticket"));
    assert_eq!(
        query_value(&to_relay, "redirect_uri"),
        Some(format!("http://{}/_wxedge/relay/ticket", s.target_host))
    );
    let login_cookie = b.cookie(&s.target_host, "wxedge_login").unwrap();

    let (visited, last) = b.follow(&to_relay, "alice");
    assert_eq!(last.status, 200, "{visited:#?}\n{}", last.text());
    // target → relay → WeChat (the relay's callback) → relay → target's ticket → the page.
    let hosts: Vec<String> = visited.iter().map(|u| split(u).0).collect();
    let (r, t) = (s.relay_host.clone(), s.target_host.clone());
    assert_eq!(
        hosts,
        vec![r.clone(), r.clone(), r.clone(), t.clone(), t.clone()]
    );
    assert!(
        visited[1].contains(&format!(
            "redirect_uri=http%3A%2F%2F{}%2F_wxedge%2Frelay%2Fcallback",
            r.replace(':', "%3A")
        )),
        "WeChat is asked for the relay's own callback: {}",
        visited[1]
    );
    let ticket_url = &visited[3];
    assert!(
        ticket_url.contains("/_wxedge/relay/ticket?ticket="),
        "{ticket_url}"
    );
    assert!(
        visited
            .iter()
            .filter(|u| split(u).0 == t)
            .all(|u| !u.contains("code=")),
        "no code ever reaches the target: {visited:#?}"
    );
    assert!(
        visited[4].ends_with("/pages/index/index?tab=2"),
        "{visited:#?}"
    );
    let state = query_value(ticket_url, "state").unwrap();
    assert_eq!(
        Some(state.clone()),
        query_value(&to_relay, "state"),
        "the target's own state comes back unchanged"
    );

    let openid = session_openid(&mut b, &t).expect("a session on the target");
    assert!(openid.starts_with('o'), "{openid}");
    assert_eq!(
        metric(s.target_metrics, "wxedge_wechat_exchanges_total"),
        0,
        "the target never called WeChat"
    );
    assert_eq!(relay_metric(s.relay_metrics, "ticket", "ticket_sent"), 1);
    assert_eq!(relay_metric(s.target_metrics, "ticket", "accepted"), 1);

    // The same ticket again, with the same login cookie, and no session: single use.
    let mut replay = Browser::default();
    replay
        .jar
        .insert(t.clone(), vec![split_cookie(&login_cookie)]);
    let r = replay.get(ticket_url);
    assert_eq!(r.status, 410, "{}", r.text());
    assert!(
        r.text().contains("data-reason=\"ticket_replayed\""),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("href=\"/_wxedge/login?return="),
        "a way to start over"
    );
    // Stolen without the browser's login cookie: the login state refuses it first.
    let r = Browser::default().get(ticket_url);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("data-reason=\"state\""));
    assert_eq!(session_openid(&mut replay, &t), None);

    // The code and the ticket are redacted in both access logs.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let ticket = query_value(ticket_url, "ticket").unwrap();
    let code = query_value(&visited[2], "code").unwrap();
    let (rlog, tlog) = (s.relay.stdout(), s.target.stdout());
    assert!(
        tlog.contains("/_wxedge/relay/ticket?ticket=REDACTED&state="),
        "{tlog}"
    );
    assert!(
        rlog.contains("/_wxedge/relay/callback?code=REDACTED&state="),
        "{rlog}"
    );
    for log in [&rlog, &tlog, &s.relay.stderr(), &s.target.stderr()] {
        assert!(
            !log.contains(&code) && !log.contains(&ticket[..40]),
            "{log}"
        );
    }
}

fn split_cookie(c: &str) -> (String, String) {
    let (k, v) = c.split_once('=').unwrap();
    (k.to_string(), v.to_string())
}

#[test]
fn tickets_are_refused_when_tampered_expired_replayed_or_for_another_audience() {
    let s = sites(true);
    let now = wxedge::session::now_unix();
    let shared = TicketCodec::new(SessionKeys::from_secrets(&[RELAY_KEY.to_string()]).unwrap());
    let foreign = TicketCodec::new(SessionKeys::from_secrets(&["f".repeat(40)]).unwrap());
    let here = Origin::parse(&format!("http://{}", s.target_host)).unwrap();
    let elsewhere = Origin::parse("http://other.test:1").unwrap();
    let who = Identity {
        openid: "o-ticket-holder".into(),
        unionid: None,
        scope: "snsapi_base".into(),
        snapshot: false,
        nickname: None,
        avatar: None,
    };
    // Each case: a browser that started a login here, presenting a ticket made by `make(state)`.
    let present = |make: &dyn Fn(&str) -> String| -> (RawResponse, Browser) {
        let mut b = Browser::default();
        let to_relay = start_login(&mut b, &s, "/x");
        let state = query_value(&to_relay, "state").unwrap();
        let ticket = make(&state);
        let enc =
            percent_encoding::utf8_percent_encode(&ticket, percent_encoding::NON_ALPHANUMERIC);
        let r = b.get(&format!(
            "http://{}/_wxedge/relay/ticket?ticket={enc}&state={state}",
            s.target_host
        ));
        (r, b)
    };
    let tampered = |st: &str| {
        let t = shared.seal(&who, &here, st, now);
        let mut bytes = t.into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    // (refusal, status, the ticket made for the login's state)
    type Case<'a> = (&'a str, u16, Box<dyn Fn(&str) -> String + 'a>);
    let cases: Vec<Case> = vec![
        ("ticket_invalid", 400, Box::new(tampered)),
        (
            "ticket_invalid",
            400,
            Box::new(|st: &str| foreign.seal(&who, &here, st, now)),
        ),
        (
            "ticket_expired",
            410,
            Box::new(|st: &str| shared.seal(&who, &here, st, now - 61)),
        ),
        (
            "ticket_audience",
            403,
            Box::new(|st: &str| shared.seal(&who, &elsewhere, st, now)),
        ),
        (
            "ticket_state",
            400,
            Box::new(|_: &str| shared.seal(&who, &here, "wxe1another", now)),
        ),
    ];
    let mut counted: HashMap<&str, u64> = HashMap::new();
    for (reason, status, make) in &cases {
        let (r, mut b) = present(make.as_ref());
        assert_eq!(r.status, *status, "{reason}: {}", r.text());
        assert!(
            r.text().contains(&format!("data-reason=\"{reason}\"")),
            "{reason}: {}",
            r.text()
        );
        assert!(
            r.text().contains("/_wxedge/login?return=%2Fx"),
            "start over"
        );
        assert_eq!(session_openid(&mut b, &s.target_host), None, "{reason}");
        *counted.entry(reason).or_default() += 1;
        assert_eq!(
            relay_metric(s.target_metrics, "ticket", reason),
            counted[reason],
            "{reason}"
        );
    }
    // A good one works.
    let good = |st: &str| shared.seal(&who, &here, st, now);
    let (r, mut b) = present(&good);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("/x"));
    assert_eq!(
        session_openid(&mut b, &s.target_host).as_deref(),
        Some("o-ticket-holder")
    );
    assert_eq!(metric(s.target_metrics, "wxedge_wechat_exchanges_total"), 0);
}

#[test]
fn code_relay_from_the_edge_login_and_from_a_frontend_built_url() {
    let s = sites(false);
    let (r, t) = (s.relay_host.clone(), s.target_host.clone());

    // The target's own domain is not authorized at WeChat: a direct login is refused (10003).
    let direct = format!(
        "http://{r}/_wxedge/sandbox/connect/oauth2/authorize?appid={APPID}&redirect_uri=http%3A%2F%2F{}%2F_wxedge%2Fcallback&response_type=code&scope=snsapi_base&state=S&auto=alice",
        t.replace(':', "%3A")
    );
    let resp = Browser::default().get(&direct);
    assert_eq!(resp.status, 400);
    assert!(
        resp.text().contains("<b id=\"errcode\">10003</b>"),
        "{}",
        resp.text()
    );

    // 1. The edge-started login, unchanged for the site, goes through the relay with a code.
    let mut b = Browser::default();
    let to_relay = start_login(&mut b, &s, "/pages/index/index");
    assert_eq!(query_value(&to_relay, "mode").as_deref(), Some("code"));
    let (visited, last) = b.follow(&to_relay, "bob");
    assert_eq!(last.status, 200, "{visited:#?}");
    let back = &visited[3];
    assert!(
        back.starts_with(&format!("http://{t}/_wxedge/callback?code=")),
        "{visited:#?}"
    );
    assert_eq!(query_value(back, "state"), query_value(&to_relay, "state"));
    let bob = session_openid(&mut b, &t).expect("session");
    assert_eq!(relay_metric(s.relay_metrics, "code", "code_sent"), 1);

    // 2. A frontend that builds the WeChat URL itself, with only its base changed to the relay.
    let mut b = Browser::default();
    let page = format!("http://{t}{PAGE}");
    let url = format!(
        "http://{r}/_wxedge/relay/authorize?appid={APPID}&redirect_uri={}&response_type=code&scope=snsapi_base&state=STATE#wechat_redirect",
        percent_encoding::utf8_percent_encode(&page, percent_encoding::NON_ALPHANUMERIC)
    );
    let (visited, last) = b.follow(&url, "alice");
    assert_eq!(last.status, 200, "{visited:#?}");
    let landing = visited.last().unwrap();
    assert!(
        landing.starts_with(&format!("{page}?code=")),
        "{visited:#?}"
    );
    assert_eq!(query_value(landing, "state").as_deref(), Some("STATE"));
    let alice = session_openid(&mut b, &t).expect("the target redeemed the code");
    assert_ne!(alice, bob);
    assert_eq!(
        metric(
            s.target_metrics,
            "wxedge_wechat_exchanges_total{errcode=\"0\",result=\"ok\"}"
        ),
        2
    );
}

#[test]
fn the_relay_refuses_open_redirects_and_binds_each_callback_to_its_target() {
    let s = sites(false);
    let (r, t) = (s.relay_host.clone(), s.target_host.clone());
    let authorize = |redirect: &str, extra: &str| {
        let enc =
            percent_encoding::utf8_percent_encode(redirect, percent_encoding::NON_ALPHANUMERIC);
        format!("http://{r}/_wxedge/relay/authorize?redirect_uri={enc}&state=S{extra}")
    };
    let port = t.rsplit(':').next().unwrap();
    for bad in [
        "http://evil.test/".to_string(),
        format!("http://{t}.evil.test/"),
        format!("http://evil.test@{t}/"),
        format!("http://{t}@evil.test/"),
        format!("http://{t}\\@evil.test/"),
        format!("http://{t}%2F@evil.test/"),
        format!("https://{t}/"),
        format!("http://camp.test:{}/", port.parse::<u16>().unwrap() ^ 1),
        format!("//{t}/"),
        format!("http://{t}//evil.test"),
        format!("http://{t}/%2f%2fevil.test"),
        format!("http://{t}/#/pages/a"),
        format!("http://{t}/\t"),
        format!("http://cаmp.test:{port}/"),
        "javascript:alert(1)".to_string(),
        String::new(),
    ] {
        let mut b = Browser::default();
        let resp = b.get(&authorize(&bad, ""));
        assert_eq!(resp.status, 400, "{bad:?}: {:?}", resp.header("location"));
        assert!(
            resp.text().contains("data-reason=\"relay_target\""),
            "{bad:?}"
        );
        assert!(
            resp.text().contains("id=\"wxedge-retry\" href=\"/\""),
            "never a dead end"
        );
        assert_eq!(b.cookie(&r, "wxedge_relay"), None, "{bad:?}");
    }
    // Mixed case is the same origin, normalised; a bad state, scope, appid or mode is refused.
    let mut b = Browser::default();
    let ok = b.get(&authorize(&format!("HTTP://{}/p", t.to_uppercase()), ""));
    assert_eq!(ok.status, 302, "{}", ok.text());
    for extra in [
        "&state=a-b",
        "&scope=snsapi_login",
        "&appid=wxother",
        "&mode=magic",
    ] {
        let resp = Browser::default()
            .get(&authorize(&format!("http://{t}/p"), extra).replace("&state=S", ""));
        assert_eq!(resp.status, 400, "{extra}");
        assert!(
            resp.text().contains("data-reason=\"relay_request\""),
            "{extra}"
        );
    }
    assert!(relay_metric(s.relay_metrics, "code", "relay_target") >= 15);

    // Two browsers start relays for two targets; a callback carries the state of the other.
    let mut alice = Browser::default();
    let to_wechat = alice
        .get(&authorize(&format!("http://{t}/mine"), ""))
        .header("location")
        .unwrap()
        .to_string();
    let alice_state = query_value(&to_wechat, "state").unwrap();
    let mut mallory = Browser::default();
    let other = mallory
        .get(&authorize("http://other.test:1/theirs", ""))
        .header("location")
        .unwrap()
        .to_string();
    let mallory_state = query_value(&other, "state").unwrap();
    // Mallory's state with Alice's cookie: refused, nothing forwarded.
    let resp = alice.get(&format!(
        "http://{r}/_wxedge/relay/callback?code=C1&state={mallory_state}"
    ));
    assert_eq!(resp.status, 400);
    assert!(resp.text().contains("data-reason=\"state\""));
    // Alice's own callback goes to Alice's target whatever else the query says.
    let resp = alice.get(&format!(
        "http://{r}/_wxedge/relay/callback?code=C2&state={alice_state}&redirect_uri=http%3A%2F%2Fevil.test%2F"
    ));
    assert_eq!(resp.status, 302);
    assert_eq!(
        resp.header("location"),
        Some(format!("http://{t}/mine?code=C2&state=S").as_str())
    );
    // And only once: the relay cookie is gone.
    let resp = alice.get(&format!(
        "http://{r}/_wxedge/relay/callback?code=C3&state={alice_state}"
    ));
    assert_eq!(resp.status, 400);
}
