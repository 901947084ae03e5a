//! Two edges playing two domains for the login relay: `auth.<tld>` owns the WeChat-authorized
//! domain (its sandbox WeChat accepts no other `redirect_uri`) and relays for one target,
//! `shop.<tld>` (identity relay: tickets) or `camp.<tld>` (code relay).
#![allow(dead_code)]

use std::net::SocketAddr;

use super::{free_port, spawn_edge, wait_healthy, EdgeProc};

pub const RELAY_KEY: &str = "relay-key-shared-by-auth-and-shop-0123456789";

pub struct Sites {
    pub relay: EdgeProc,
    /// `auth.<tld>:port`.
    pub relay_host: String,
    pub relay_metrics: SocketAddr,
    pub target: EdgeProc,
    /// `shop.<tld>:port` or `camp.<tld>:port`.
    pub target_host: String,
    pub target_metrics: SocketAddr,
}

/// The edge on a port chosen beforehand (both edges name each other's origin).
fn start_on(port: u16, env: &[(&str, &str)]) -> EdgeProc {
    let listen = format!("127.0.0.1:{port}");
    let mut all = env.to_vec();
    // After spawn_edge's own WXEDGE_LISTEN, so this one wins.
    all.push(("WXEDGE_LISTEN", &listen));
    let mut e = spawn_edge(&all, &[]);
    e.port = port;
    e
}

/// The relay edge (allowing the target and `http://other.<tld>:1`) and one target, both
/// running; `target_env` is added to the target's settings (its dist, backend).
pub fn sites(
    ticket: bool,
    tld: &str,
    appid: &str,
    secret: &str,
    target_env: &[(&str, &str)],
) -> Sites {
    let (rp, tp, rm, tm) = (free_port(), free_port(), free_port(), free_port());
    let relay_host = format!("auth.{tld}:{rp}");
    let name = if ticket { "shop" } else { "camp" };
    let target_host = format!("{name}.{tld}:{tp}");
    let targets = format!("http://{target_host},http://other.{tld}:1");
    let authorized = format!("auth.{tld}");
    let relay_url = format!("http://{relay_host}");
    let sandbox = format!("http://127.0.0.1:{rp}/_wxedge/sandbox");
    let public = format!("http://{target_host}");
    let (rm_s, tm_s) = (format!("127.0.0.1:{rm}"), format!("127.0.0.1:{tm}"));
    let common = [
        ("WX_APPID", appid),
        ("WX_SECRET", secret),
        ("WXEDGE_COOKIE_SECURE", "false"),
    ];
    let mut r = common.to_vec();
    r.extend([
        ("WXEDGE_SANDBOX", "true"),
        ("WXEDGE_SANDBOX_AUTHORIZED_DOMAINS", authorized.as_str()),
        ("WXEDGE_RELAY_TARGETS", targets.as_str()),
        ("WXEDGE_RELAY_KEY", RELAY_KEY),
        (
            "WXEDGE_SESSION_KEY",
            "relay-own-session-key-0123456789-abcdef",
        ),
        ("WXEDGE_METRICS_LISTEN", rm_s.as_str()),
        // The suites send dozens of relay requests from one address in a burst (every bad
        // redirect a scanner would try): past the default login limit. `tests/limits.rs`
        // covers the limit itself.
        ("WXEDGE_LIMIT_LOGIN_BURST", "1000"),
    ]);
    let mut t = common.to_vec();
    t.extend([
        ("WXEDGE_SANDBOX", "false"),
        // One official account: a code relayed to the target is redeemed at the relay's WeChat.
        ("WX_API_BASE", sandbox.as_str()),
        ("WXEDGE_RELAY_URL", relay_url.as_str()),
        (
            "WXEDGE_SESSION_KEY",
            "target-own-session-key-0123456789-abcdef",
        ),
        ("WXEDGE_METRICS_LISTEN", tm_s.as_str()),
    ]);
    if ticket {
        t.extend([
            ("WXEDGE_RELAY_KEY", RELAY_KEY),
            ("WXEDGE_PUBLIC_URL", public.as_str()),
        ]);
    } else {
        t.push(("WXEDGE_RELAY_MODE", "code"));
    }
    t.extend_from_slice(target_env);
    let relay = start_on(rp, &r);
    let target = start_on(tp, &t);
    wait_healthy(&relay);
    wait_healthy(&target);
    Sites {
        relay,
        relay_host,
        relay_metrics: rm_s.parse().unwrap(),
        target,
        target_host,
        target_metrics: tm_s.parse().unwrap(),
    }
}
