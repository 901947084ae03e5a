//! Proxying to the existing backend: which backend (round-robin, active and passive health) and
//! what the request looks like upstream (`upstream`: one builder, forwarding headers, no
//! spoofable identity). One sender, `forward`, for every transport (with its per-thread
//! keep-alive pool and the tunnels of upgrades).

pub mod chunked;
pub mod forward;
pub mod headers;
pub mod upstream;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use once_cell::sync::Lazy;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{BackendIter, BackendSelection, RoundRobin};
use pingora::lb::{discovery, Backends, Extensions, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::services::background::GenBackgroundService;
use pingora::{Error, ErrorType};

use crate::config::{BackendAddr, HealthCheckSettings, ProxySettings};
use crate::ops::metrics::METRICS;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Pingora's load balancer over the configured backends: its round robin chooses, its health
/// (set by the active checks) says who may be chosen.
type Balancer = LoadBalancer<RoundRobin>;

/// A configured backend (indices are positions in `proxy.backends`).
struct Backend {
    addr: BackendAddr,
    /// `host:port` as configured, for logs (kept for the life of the process).
    authority: &'static str,
    /// The first configured backend with the same address: one server, one health, and as
    /// many turns in the rotation as it is listed (the weight of its Pingora backend).
    server: usize,
}

/// What is known of one server's health, kept at its `server` index.
#[derive(Default)]
struct Health {
    /// Skip until this time (ms since EPOCH) after a refused connection; 0 = not marked.
    down_until_ms: AtomicU64,
    /// The active checks' verdict (Pingora's, after its thresholds), as it last changed: read
    /// per request without hashing the backend into Pingora's health map.
    active_up: AtomicBool,
    /// The active checks' own record, for `report` (their verdict is Pingora's).
    checks: Mutex<CheckRecord>,
}

#[derive(Default, Clone)]
struct CheckRecord {
    consecutive_failures: u64,
    last_error: Option<String>,
}

/// The configured backends and what is known of them, shared with the active checks.
struct State {
    backends: Vec<Backend>,
    health: Vec<Health>,
}

impl State {
    /// Not marked down by a refused connection (or the mark is over).
    fn passive_up(&self, idx: usize, now: u64) -> bool {
        self.health[self.backends[idx].server]
            .down_until_ms
            .load(Ordering::Relaxed)
            <= now
    }

    fn record(&self, idx: usize) -> CheckRecord {
        let h = &self.health[self.backends[idx].server];
        h.checks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The Pingora slot of a backend: its server's index, carried in the backend's extensions.
#[derive(Clone, Copy)]
struct Slot(usize);

fn slot(b: &pingora::lb::Backend) -> usize {
    b.ext.get::<Slot>().map_or(0, |s| s.0)
}

/// Everything the scrape hook needs too (the active checks hold `State` only, so nothing
/// here is kept alive by its own parts).
struct Pool {
    state: Arc<State>,
    balancer: Arc<Balancer>,
    /// Pingora's round robin over the same backends, iterated per request directly: the
    /// balancer's `select_with` hashes every candidate into a set and its health map (about 2k
    /// instructions a request, 8 % of a proxied call) for what two atomics tell here.
    rotation: Arc<RoundRobin>,
}

impl Pool {
    /// In the rotation by the active checks (always, when they are off).
    fn active_ok(&self, idx: usize) -> bool {
        self.state.health[self.state.backends[idx].server]
            .active_up
            .load(Ordering::Relaxed)
    }

    fn healthy(&self, idx: usize, now: u64) -> bool {
        self.state.passive_up(idx, now) && self.active_ok(idx)
    }
}

/// The configured backends, chosen round-robin by Pingora's load balancer among the healthy
/// ones. Two kinds of health, both must hold: active checks (`proxy.health_check`, in the
/// background: `health_check_service`) and passive (a refused connection marks a backend down
/// for `proxy.backend_retry_seconds`).
pub struct Upstreams {
    pool: Arc<Pool>,
    /// Distinct servers (Pingora's backends).
    servers: usize,
    /// Active checks are configured (and there is something to check).
    active: bool,
    retry_after: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl Upstreams {
    pub fn new(backends: &[BackendAddr], s: &ProxySettings) -> Self {
        Lazy::force(&EPOCH);
        let list = backend_list(backends);
        // Pingora keeps them ordered by address: the rotation goes in that order.
        let set: BTreeSet<pingora::lb::Backend> = lb_members(&list).into_iter().collect();
        let servers = set.len();
        let state = Arc::new(State {
            // Pingora starts every backend healthy, and so does the verdict kept here.
            health: list
                .iter()
                .map(|_| Health {
                    active_up: AtomicBool::new(true),
                    ..Health::default()
                })
                .collect(),
            backends: list,
        });
        let active = s.health_check.interval_ms > 0 && servers > 0;
        let rotation = Arc::new(RoundRobin::build(&set));
        let balancer = balancer(set, &state, s, active);
        let pool = Arc::new(Pool {
            rotation,
            state,
            balancer: Arc::new(balancer),
        });
        report_health_on_scrape(&pool);
        Upstreams {
            pool,
            servers,
            active,
            retry_after: Duration::from_secs(s.backend_retry_seconds),
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            read_timeout: Duration::from_millis(s.read_timeout_ms),
            write_timeout: Duration::from_millis(s.write_timeout_ms),
            idle_timeout: Duration::from_secs(s.keepalive_idle_seconds),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pool.state.backends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pool.state.backends.len()
    }

    pub fn authority(&self, idx: usize) -> &'static str {
        self.pool.state.backends[idx].authority
    }

    pub fn addr(&self, idx: usize) -> std::net::SocketAddr {
        self.pool.state.backends[idx].addr.addr
    }

    /// Next backend in turn that is healthy and not already tried for this request. When every
    /// untried one is unhealthy, one is tried anyway: health must not turn a short blip into a
    /// permanent 502 (one the active checks still pass first, then the one marked down longest
    /// ago).
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        let pool = &*self.pool;
        let now = now_ms();
        let mut turn = pool.rotation.iter(b"");
        for _ in 0..2 * self.servers + 1 {
            let Some(b) = turn.next() else { break };
            let idx = slot(b);
            if pool.active_ok(idx) && !tried.contains(&idx) && pool.state.passive_up(idx, now) {
                return Some(idx);
            }
        }
        // Pingora's round robin takes its later candidates from the counter every request
        // advances, so under concurrency it can pass over one: look at each server once.
        (0..self.len())
            .filter(|&i| pool.state.backends[i].server == i && !tried.contains(&i))
            .min_by_key(|&i| {
                let until = pool.state.health[i].down_until_ms.load(Ordering::Relaxed);
                (!pool.active_ok(i), until.max(now) - now)
            })
    }

    /// A connection to the backend was refused: skip it for `backend_retry_seconds`.
    pub fn mark_down(&self, idx: usize) {
        let until = now_ms() + self.retry_after.as_millis() as u64;
        let h = &self.pool.state.health[self.pool.state.backends[idx].server];
        h.down_until_ms.store(until.max(1), Ordering::Relaxed);
    }

    /// A connection to the backend was made: it is up again (as far as passive health goes).
    pub fn mark_up(&self, idx: usize) {
        let h = &self.pool.state.health[self.pool.state.backends[idx].server];
        if h.down_until_ms.load(Ordering::Relaxed) != 0 {
            h.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// In the rotation now: the active checks pass (or are off) and no refused connection is
    /// being waited out.
    pub fn is_healthy(&self, idx: usize) -> bool {
        self.pool.healthy(idx, now_ms())
    }

    /// The active checks decide who is in the rotation (else passive health alone does).
    pub fn actively_checked(&self) -> bool {
        self.active
    }

    /// Healthy backends now (for readiness).
    pub fn healthy_count(&self) -> usize {
        let now = now_ms();
        (0..self.len())
            .filter(|&i| self.pool.healthy(i, now))
            .count()
    }

    /// Each backend's state, for `/_wxedge/readyz`.
    pub fn report(&self) -> serde_json::Value {
        let now = now_ms();
        let pool = &*self.pool;
        (0..self.len())
            .map(|i| {
                let b = &pool.state.backends[i];
                let record = pool.state.record(i);
                let until = pool.state.health[b.server]
                    .down_until_ms
                    .load(Ordering::Relaxed);
                serde_json::json!({
                    "backend": b.authority,
                    "healthy": pool.healthy(i, now),
                    "active_check": match (self.active, pool.active_ok(i)) {
                        (false, _) => "off",
                        (true, true) => "passing",
                        (true, false) => "failing",
                    },
                    "consecutive_failures": record.consecutive_failures,
                    "last_error": record.last_error,
                    // A refused connection's mark: how long the backend is still skipped.
                    "passive_down_ms": (until > now).then(|| until - now),
                })
            })
            .collect()
    }

    /// The active checks as a Pingora background service, to add to the server: it runs in
    /// the serving process only (never for `-t`, after a `-d` fork) and stops on shutdown.
    /// `None` when they are off.
    pub fn health_check_service(&self) -> Option<GenBackgroundService<Balancer>> {
        self.active.then(|| {
            GenBackgroundService::new("backend health checks".into(), self.pool.balancer.clone())
        })
    }
}

/// The configured backends in order; `server` tells repeated addresses apart from distinct ones.
fn backend_list(backends: &[BackendAddr]) -> Vec<Backend> {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| Backend {
            authority: Box::leak(b.authority.clone().into_boxed_str()),
            addr: b.clone(),
            server: backends[..i]
                .iter()
                .position(|o| o.addr == b.addr)
                .unwrap_or(i),
        })
        .collect()
}

/// Pingora's backend per configured one (a server listed twice weighs twice), each carrying
/// its server's slot.
fn lb_members(list: &[Backend]) -> Vec<pingora::lb::Backend> {
    list.iter()
        .map(|b| {
            let mut ext = Extensions::new();
            ext.insert(Slot(b.server));
            pingora::lb::Backend {
                addr: PingoraAddr::Inet(b.addr.addr),
                weight: list.iter().filter(|o| o.server == b.server).count(),
                ext,
            }
        })
        .collect()
}

/// Pingora's round-robin over `set`, with the active checks when `active`, its backends
/// already in place.
fn balancer(
    set: BTreeSet<pingora::lb::Backend>,
    state: &Arc<State>,
    s: &ProxySettings,
    active: bool,
) -> Balancer {
    let hc = &s.health_check;
    let mut view = Backends::new(discovery::Static::new(set));
    if active {
        view.set_health_check(Box::new(Checks::new(state.clone(), hc, &s.host)));
    }
    let mut balancer = Balancer::from_backends(view);
    balancer.health_check_frequency = Some(Duration::from_millis(hc.interval_ms));
    // One slow backend must not delay the others' checks.
    balancer.parallel_health_check = true;
    // Static discovery answers at once: the backends are in place before any request.
    {
        let update = std::pin::pin!(balancer.update());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::future::Future::poll(update, &mut cx) {
            std::task::Poll::Ready(r) => r.expect("static discovery does not fail"),
            std::task::Poll::Pending => unreachable!("static discovery does not wait"),
        }
    }
    balancer
}

/// `wxedge_backend_healthy` set from the pool when scraped, while the pool lives.
fn report_health_on_scrape(pool: &Arc<Pool>) {
    let weak = Arc::downgrade(pool);
    crate::ops::metrics::refresh_on_scrape(move || {
        let Some(pool) = weak.upgrade() else {
            return false;
        };
        let now = now_ms();
        for (i, b) in pool.state.backends.iter().enumerate() {
            METRICS
                .backend_healthy
                .with_label_values(&[b.authority])
                .set(i64::from(pool.healthy(i, now)));
        }
        true
    });
}

/// The active checks: Pingora's `HttpHealthCheck` (one per server, each with its own `Host`:
/// one instance sends one request head to every backend) or `TcpHealthCheck`, wrapped to
/// bound a whole check by `timeout_ms` (Pingora bounds each step, not a body that trickles),
/// to keep what `report` shows (Pingora's health keeps its counter to itself), to count the
/// checks for the metrics, and to name backends in Pingora's log of their changes.
struct Checks {
    state: Arc<State>,
    /// By configured index (a duplicate's is never used: its server's is).
    probes: Vec<Box<dyn HealthCheck + Send + Sync>>,
    timeout: Duration,
    fails: usize,
    passes: usize,
}

impl Checks {
    fn new(state: Arc<State>, hc: &HealthCheckSettings, proxy_host: &str) -> Checks {
        let timeout = Duration::from_millis(hc.timeout_ms);
        let probes = state
            .backends
            .iter()
            .map(|b| -> Box<dyn HealthCheck + Send + Sync> {
                if hc.path.is_empty() {
                    let mut tcp = TcpHealthCheck::new();
                    let o = &mut tcp.peer_template.options;
                    o.connection_timeout = Some(backstop(timeout));
                    o.total_connection_timeout = Some(backstop(timeout));
                    tcp
                } else {
                    // The `Host` requests get when it is fixed (`proxy.host`), else the
                    // backend's own name, as nginx Plus's health_check sends.
                    let host = if proxy_host.is_empty() {
                        b.authority
                    } else {
                        proxy_host
                    };
                    Box::new(http_probe(host, &hc.path, timeout))
                }
            })
            .collect();
        Checks {
            state,
            probes,
            timeout,
            fails: hc.fails,
            passes: hc.passes,
        }
    }
}

/// A probe's own timeouts: later than the bound of the whole check (`Checks::check`), which
/// fires first and says so ("no answer within"); equal, the two raced and the reason a check
/// failed depended on which timer the runtime polled first.
fn backstop(timeout: Duration) -> Duration {
    timeout * 2
}

/// `GET path` with `Host: host`, passing on a 2xx or 3xx answer (a redirect is an answer: an
/// application that sends `/` to its login page is up).
fn http_probe(host: &str, path: &str, timeout: Duration) -> HttpHealthCheck {
    let mut check = HttpHealthCheck::new(host, false);
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).expect("validated path");
    let _ = req.append_header("Host", host);
    let _ = req.append_header("User-Agent", "wxedge-health-check");
    check.req = req;
    let o = &mut check.peer_template.options;
    o.connection_timeout = Some(backstop(timeout));
    o.total_connection_timeout = Some(backstop(timeout));
    o.read_timeout = Some(backstop(timeout));
    o.write_timeout = Some(backstop(timeout));
    let path = path.to_string();
    check.validator = Some(Box::new(move |resp: &ResponseHeader| {
        let status = resp.status.as_u16();
        if (200..400).contains(&status) {
            return Ok(());
        }
        Error::e_explain(
            ErrorType::CustomCode("HealthCheckStatus", status),
            format!("GET {path} answered {status}"),
        )
    }));
    check
}

/// A failed check in one line, for `report` and Pingora's log of health changes: its kind and
/// innermost reason (Pingora's connect errors carry the whole peer, options and all, as their
/// context), or our own context alone (a status, a timeout).
fn describe(e: &Error) -> String {
    if let (ErrorType::Custom(_) | ErrorType::CustomCode(..), Some(context)) =
        (e.etype(), &e.context)
    {
        return context.to_string();
    }
    let root = e.root_cause();
    let reason = match root.downcast_ref::<Error>() {
        Some(inner) => inner
            .context
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        None => root.to_string(),
    };
    let mut line = e.etype().as_str().to_string();
    if !reason.is_empty() {
        line.push_str(": ");
        line.extend(reason.chars().take(200));
    }
    line
}

#[async_trait]
impl HealthCheck for Checks {
    async fn check(&self, target: &pingora::lb::Backend) -> pingora::Result<()> {
        let idx = slot(target);
        let outcome = match tokio::time::timeout(self.timeout, self.probes[idx].check(target)).await
        {
            Ok(result) => result,
            Err(_) => Error::e_explain(
                ErrorType::Custom("HealthCheckTimedout"),
                format!("no answer within {} ms", self.timeout.as_millis()),
            ),
        };
        let failure = outcome.err().map(|e| describe(&e));
        let authority = self.state.backends[idx].authority;
        let result = if failure.is_none() { "pass" } else { "fail" };
        METRICS
            .backend_health_checks
            .with_label_values(&[authority, result])
            .inc();
        let mut record = self.state.health[idx]
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match failure {
            None => {
                record.consecutive_failures = 0;
                Ok(())
            }
            Some(reason) => {
                record.consecutive_failures += 1;
                record.last_error = Some(reason.clone());
                Error::e_explain(ErrorType::Custom("HealthCheckFailed"), reason)
            }
        }
    }

    /// Pingora's verdict changed (its thresholds were crossed): what `pick` reads.
    async fn health_status_change(&self, target: &pingora::lb::Backend, healthy: bool) {
        let server = self.state.backends[slot(target)].server;
        self.state.health[server]
            .active_up
            .store(healthy, Ordering::Relaxed);
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.passes
        } else {
            self.fails
        }
    }

    /// Pingora logs "<this> becomes unhealthy, <error>" and "<this> becomes healthy".
    fn backend_summary(&self, target: &pingora::lb::Backend) -> String {
        format!("backend {}", self.state.backends[slot(target)].authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU16;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings(interval_ms: u64, path: &str) -> ProxySettings {
        ProxySettings {
            health_check: HealthCheckSettings {
                path: path.into(),
                interval_ms,
                timeout_ms: 300,
                fails: 2,
                passes: 2,
            },
            ..ProxySettings::default()
        }
    }

    fn addrs(list: &[std::net::SocketAddr]) -> Vec<BackendAddr> {
        list.iter()
            .map(|a| BackendAddr {
                addr: *a,
                authority: a.to_string(),
            })
            .collect()
    }

    /// `n` backends on ports nobody listens on, active checks off.
    fn ups(n: u16) -> Upstreams {
        let list: Vec<std::net::SocketAddr> = (0..n)
            .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
            .collect();
        Upstreams::new(&addrs(&list), &settings(0, ""))
    }

    /// One round of active checks, as the background service runs them.
    async fn check_round(u: &Upstreams) {
        u.pool.balancer.backends().run_health_check(true).await;
    }

    fn state(u: &Upstreams, idx: usize) -> serde_json::Value {
        u.report()[idx].clone()
    }

    /// A real HTTP/1.1 server on loopback: answers every request with the status in `status`
    /// (0 = never answers) and keeps each request's `Host` and target.
    async fn http_server(
        status: Arc<AtomicU16>,
    ) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (status, log) = (status.clone(), log.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    let host = head
                        .lines()
                        .find_map(|l| l.strip_prefix("host: "))
                        .unwrap_or("")
                        .to_string();
                    log.lock().unwrap().push(format!("{host} {target}"));
                    let code = status.load(Ordering::SeqCst);
                    if code == 0 {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        (addr, seen)
    }

    #[test]
    fn round_robin_in_order() {
        let u = ups(3);
        let picks: Vec<usize> = (0..6).map(|_| u.pick(&[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(u.healthy_count(), 3);
        assert!(u.health_check_service().is_none(), "checks are off");
        assert_eq!(state(&u, 1)["active_check"], "off");
    }

    #[test]
    fn tried_backends_are_skipped() {
        let u = ups(3);
        for _ in 0..6 {
            assert_ne!(u.pick(&[0]), Some(0));
        }
        assert_eq!(u.pick(&[0, 2]), Some(1));
        assert_eq!(u.pick(&[2, 0]), Some(1));
        assert_eq!(u.pick(&[0, 1, 2]), None);
    }

    #[test]
    fn backends_marked_down_are_skipped_until_marked_up() {
        let u = ups(3);
        u.mark_down(1);
        assert!((0..6).all(|_| u.pick(&[]).unwrap() != 1));
        assert_eq!(u.healthy_count(), 2);
        assert!(!u.is_healthy(1));
        let s = state(&u, 1);
        assert_eq!(s["healthy"], false);
        assert!(s["passive_down_ms"].as_u64().unwrap() > 9_000, "{s}");
        u.mark_up(1);
        assert_eq!(u.healthy_count(), 3);
        assert!(state(&u, 1)["passive_down_ms"].is_null());
        assert!((0..6).any(|_| u.pick(&[]).unwrap() == 1));
    }

    #[test]
    fn with_all_unhealthy_one_is_still_tried() {
        let u = ups(3);
        u.mark_down(2);
        std::thread::sleep(Duration::from_millis(5));
        u.mark_down(0);
        std::thread::sleep(Duration::from_millis(5));
        u.mark_down(1);
        assert_eq!(u.healthy_count(), 0);
        // The one whose mark ends first (down longest), then the next, and never one tried.
        assert_eq!(u.pick(&[]), Some(2));
        assert_eq!(u.pick(&[2]), Some(0));
        assert_eq!(u.pick(&[2, 0]), Some(1));
        assert_eq!(u.pick(&[0, 1, 2]), None);
    }

    #[test]
    fn a_backend_listed_twice_is_one_server_with_two_turns() {
        let a: std::net::SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let b: std::net::SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let u = Upstreams::new(&addrs(&[a, b, a]), &settings(0, ""));
        let picks: Vec<usize> = (0..30).map(|_| u.pick(&[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 20, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 10, "{picks:?}");
        u.mark_down(2);
        assert!(!u.is_healthy(0), "the same server");
        assert_eq!(u.healthy_count(), 1);
        assert_eq!(u.pick(&[1]), Some(0));
        assert_eq!(u.pick(&[0, 1]), None);
    }

    #[test]
    fn empty() {
        let u = ups(0);
        assert_eq!(u.pick(&[]), None);
        assert_eq!(u.healthy_count(), 0);
        assert_eq!(u.report(), serde_json::json!([]));
        assert!(u.health_check_service().is_none());
    }

    #[tokio::test]
    async fn tcp_checks_take_a_closed_port_out_after_fails_in_a_row() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let u = Upstreams::new(&addrs(&[open, closed]), &settings(100, ""));
        assert!(u.health_check_service().is_some());
        check_round(&u).await;
        let s = state(&u, 1);
        assert_eq!(
            (
                &s["healthy"],
                &s["active_check"],
                &s["consecutive_failures"]
            ),
            (&true.into(), &"passing".into(), &1.into()),
            "one failure is not enough: {s}"
        );
        assert!(s["last_error"].as_str().unwrap().contains("Refused"), "{s}");
        check_round(&u).await;
        let s = state(&u, 1);
        assert_eq!(
            (&s["healthy"], &s["active_check"]),
            (&false.into(), &"failing".into()),
            "{s}"
        );
        assert_eq!(state(&u, 0)["active_check"], "passing");
        assert_eq!(u.healthy_count(), 1);
        assert!((0..6).all(|_| u.pick(&[]) == Some(0)));
        // Failing backends are still tried when nothing else is left.
        assert_eq!(u.pick(&[0]), Some(1));
        let metrics = String::from_utf8(METRICS.render()).unwrap();
        for line in [
            format!("wxedge_backend_healthy{{backend=\"{closed}\"}} 0"),
            format!("wxedge_backend_healthy{{backend=\"{open}\"}} 1"),
            format!("wxedge_backend_health_checks_total{{backend=\"{closed}\",result=\"fail\"}} 2"),
            format!("wxedge_backend_health_checks_total{{backend=\"{open}\",result=\"pass\"}} 2"),
        ] {
            assert!(metrics.contains(&line), "{line} in {metrics}");
        }
        drop(listener);
    }

    #[tokio::test]
    async fn http_checks_want_2xx_or_3xx_within_the_timeout_and_bring_backends_back() {
        let status = Arc::new(AtomicU16::new(200));
        let (addr, seen) = http_server(status.clone()).await;
        let other = http_server(Arc::new(AtomicU16::new(204))).await.0;
        let mut s = settings(100, "/healthz?deep=1");
        s.host = String::new();
        let u = Upstreams::new(&addrs(&[addr, other]), &s);
        check_round(&u).await;
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [format!("{addr} /healthz?deep=1")],
            "the path, with the backend's name as Host"
        );
        status.store(302, Ordering::SeqCst);
        check_round(&u).await;
        assert_eq!(state(&u, 0)["consecutive_failures"], 0, "a redirect passes");

        status.store(503, Ordering::SeqCst);
        check_round(&u).await;
        assert!(u.is_healthy(0), "one failure is not enough");
        check_round(&u).await;
        let s = state(&u, 0);
        assert_eq!(
            (&s["healthy"], &s["active_check"]),
            (&false.into(), &"failing".into()),
            "{s}"
        );
        assert_eq!(s["last_error"], "GET /healthz?deep=1 answered 503");
        assert!((0..4).all(|_| u.pick(&[]) == Some(1)));

        status.store(0, Ordering::SeqCst);
        let t = Instant::now();
        check_round(&u).await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(state(&u, 0)["last_error"], "no answer within 300 ms");
        assert_eq!(state(&u, 0)["consecutive_failures"], 3);

        status.store(200, Ordering::SeqCst);
        check_round(&u).await;
        assert!(!u.is_healthy(0), "one pass is not enough");
        assert_eq!(state(&u, 0)["consecutive_failures"], 0);
        check_round(&u).await;
        assert!(u.is_healthy(0));
        assert_eq!(state(&u, 0)["active_check"], "passing");
        assert!((0..4).any(|_| u.pick(&[]) == Some(0)));
    }

    #[tokio::test]
    async fn http_checks_send_the_fixed_host_when_there_is_one() {
        let (addr, seen) = http_server(Arc::new(AtomicU16::new(200))).await;
        let mut s = settings(100, "/");
        s.host = "api.internal".into();
        let u = Upstreams::new(&addrs(&[addr]), &s);
        check_round(&u).await;
        assert_eq!(seen.lock().unwrap().as_slice(), ["api.internal /"]);
    }

    #[tokio::test]
    async fn the_background_service_checks_every_interval_and_stops_on_shutdown() {
        use pingora::services::background::BackgroundService;
        let (addr, seen) = http_server(Arc::new(AtomicU16::new(200))).await;
        let u = Upstreams::new(&addrs(&[addr]), &settings(50, "/ping"));
        let service = u.health_check_service().unwrap().task();
        let (stop, watch) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { service.start(watch).await });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let checks = seen.lock().unwrap().len();
        assert!(
            (3..=10).contains(&checks),
            "{checks} checks in 400 ms at 50 ms"
        );
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), running)
            .await
            .expect("stopped")
            .unwrap();
        let after = seen.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(seen.lock().unwrap().len(), after, "no check after shutdown");
    }
}
