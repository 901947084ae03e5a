//! Throttles as nginx users know them, checked once per request in the decision
//! (`pipeline`), whatever the transport:
//!
//! - **rates per client address** (nginx's `limit_req` with `burst` and `nodelay`): for the
//!   requests that cost WeChat calls or state (every `/_wxedge/` endpoint but health and the
//!   sandbox stand-in, and page loads carrying an OAuth `code`), and for prefixes the site
//!   names. Keyed by the real client address (behind trusted proxies too), an IPv6 client by
//!   its /64 (one subscriber's whole prefix). GCRA from the `governor` crate: a client's state
//!   is one timestamp, and idle clients are forgotten, so memory follows the clients seen in
//!   the last minutes, not what any one of them sends.
//! - **connections per client address** ([`ClientConnections`], nginx's `limit_conn`): counted
//!   from the TCP peer (or the client a PROXY protocol header names) when a connection opens;
//!   a trusted load balancer's connections carry many clients and are not counted.
//! - **WeChat calls in flight** ([`CallGate`]): a bound on calls at once, with a short bounded
//!   queue; past it a login is told "busy, retry" at once instead of piling up.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::LimitSettings;
use crate::route::Route;

/// How often idle clients are dropped from the limiters.
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// The rate limits of a site.
pub struct RateLimits {
    zones: Vec<Zone>,
    started: Instant,
    /// Seconds after `started` when idle clients were last forgotten.
    forgotten_at: AtomicU64,
}

struct Zone {
    /// What the limit is called in metrics and logs: `login`, or its prefix.
    name: String,
    scope: Scope,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

enum Scope {
    Login,
    Prefix(String),
}

/// A request over a limit: which one, and when the client may try again.
#[derive(Debug, PartialEq, Eq)]
pub struct Limited<'a> {
    pub limit: &'a str,
    pub retry_after: Duration,
}

fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl RateLimits {
    pub fn new(s: &LimitSettings) -> RateLimits {
        let login = quota(s.login_rate, s.login_burst).map(|q| Zone {
            name: "login".into(),
            scope: Scope::Login,
            limiter: RateLimiter::keyed(q),
        });
        let prefixes = s.prefixes.iter().filter_map(|p| {
            quota(p.rate, p.burst).map(|q| Zone {
                name: p.prefix.clone(),
                scope: Scope::Prefix(p.prefix.clone()),
                limiter: RateLimiter::keyed(q),
            })
        });
        RateLimits {
            zones: login.into_iter().chain(prefixes).collect(),
            started: Instant::now(),
            forgotten_at: AtomicU64::new(0),
        }
    }

    /// The first limit this request is over, if any (each limit that applies counts it).
    pub fn check(
        &self,
        route: Route,
        path: &str,
        query: Option<&str>,
        client: &str,
    ) -> Option<Limited<'_>> {
        // Most requests (assets, API calls) meet no limit: nothing is parsed or counted for them.
        let mut key = None;
        let mut over = None;
        for zone in &self.zones {
            let applies = match &zone.scope {
                Scope::Login => costs_wechat_or_state(route, path, query),
                Scope::Prefix(p) => path.starts_with(p.as_str()),
            };
            if !applies {
                continue;
            }
            let key = *key.get_or_insert_with(|| {
                self.forget_idle_clients();
                client_key(client)
            });
            if let Err(not_until) = zone.limiter.check_key(&key) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                over.get_or_insert(Limited {
                    limit: &zone.name,
                    retry_after: wait,
                });
            }
        }
        over
    }

    /// Drop the clients whose state is back to "never seen" (at most every few seconds, by
    /// whichever request comes first), so the maps hold only recent clients.
    fn forget_idle_clients(&self) {
        let now = self.started.elapsed().as_secs();
        let last = self.forgotten_at.load(Ordering::Relaxed);
        if now < last + FORGET_EVERY.as_secs() {
            return;
        }
        let won = self
            .forgotten_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if won {
            for zone in &self.zones {
                zone.limiter.retain_recent();
                zone.limiter.shrink_to_fit();
            }
        }
    }
}

/// The login's requests: the edge's own endpoints (each may call WeChat, set cookies or ask
/// Redis) but health, the sandbox (which stands in for WeChat itself) and the JS-SDK signature
/// (local work: its credentials are fetched once for everyone, whatever the requests), and
/// page loads carrying a `code` to redeem.
fn costs_wechat_or_state(route: Route, path: &str, query: Option<&str>) -> bool {
    match route {
        Route::Edge => {
            let rest = &path[crate::route::EDGE_PREFIX.len()..];
            !rest.starts_with("sandbox") && !rest.starts_with("jssdk/")
        }
        Route::Static => query.is_some_and(|q| q.contains("code=")),
        _ => false,
    }
}

/// The key of a client: its IPv4 address, or its IPv6 /64.
fn client_key(client: &str) -> IpAddr {
    match client.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
        Ok(v4) => v4,
        Err(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// Open connections per client address (an IPv6 client by its /64), within a bound.
pub struct ClientConnections {
    max: u32,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// One connection's place in [`ClientConnections`], given back when dropped.
pub struct ClientConnection {
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
    key: IpAddr,
}

impl ClientConnections {
    /// `max` 0: no bound.
    pub fn new(max: u32) -> ClientConnections {
        ClientConnections {
            max,
            open: Default::default(),
        }
    }

    /// A place for a new connection from `client`: `Ok(None)` when nothing is counted (no
    /// bound), `Err(())` when the client already has `max` open.
    #[allow(clippy::result_unit_err)]
    pub fn enter(&self, client: &str) -> Result<Option<ClientConnection>, ()> {
        if self.max == 0 {
            return Ok(None);
        }
        let key = client_key(client);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return Err(());
        }
        *n += 1;
        Ok(Some(ClientConnection {
            open: self.open.clone(),
            key,
        }))
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key); // the map holds only clients with connections open
            }
        }
    }
}

/// A bound on WeChat calls in flight, with a short bounded queue in front of it.
pub struct CallGate {
    permits: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
}

/// The gate is full: the call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl CallGate {
    pub fn new(in_flight: usize, queue: usize, max_wait: Duration) -> CallGate {
        CallGate {
            permits: Semaphore::new(in_flight.max(1)),
            waiting: AtomicUsize::new(0),
            max_waiting: queue,
            max_wait,
        }
    }

    /// A place for one call: at once, or after a short wait in the queue; `Busy` when the
    /// queue is full or the wait runs out.
    pub async fn enter(&self) -> Result<SemaphorePermit<'_>, Busy> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy);
        }
        // Leaves the queue however the wait ends (the caller may be dropped mid-wait).
        struct Queued<'a>(&'a AtomicUsize);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _queued = Queued(&self.waiting);
        match tokio::time::timeout(self.max_wait, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PrefixLimit;

    fn limits(rate: u32, burst: u32) -> RateLimits {
        RateLimits::new(&LimitSettings {
            login_rate: rate,
            login_burst: burst,
            prefixes: vec![PrefixLimit {
                prefix: "/api/sms/".into(),
                rate: 1,
                burst: 2,
            }],
            ..LimitSettings::default()
        })
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_client() {
        let l = limits(1, 3);
        let login = |client| l.check(Route::Edge, "/_wxedge/login", None, client);
        for _ in 0..3 {
            assert_eq!(login("1.2.3.4"), None);
        }
        let over = login("1.2.3.4").expect("past the burst");
        assert_eq!(over.limit, "login");
        assert!(over.retry_after > Duration::ZERO && over.retry_after <= Duration::from_secs(1));
        // Another client has its own allowance; an IPv6 client is its /64.
        assert_eq!(login("5.6.7.8"), None);
        for _ in 0..3 {
            assert_eq!(login("2001:db8:1:2::1"), None);
        }
        assert!(login("2001:db8:1:2:ffff::9").is_some(), "the same /64");
        assert_eq!(login("2001:db8:1:3::1"), None, "another /64");
        assert!(
            login("::ffff:1.2.3.4").is_some(),
            "IPv4-mapped is the IPv4 client"
        );
    }

    #[test]
    fn only_what_costs_wechat_calls_or_state_counts() {
        let l = limits(1, 1);
        let c = "9.9.9.9";
        assert_eq!(
            l.check(Route::Static, "/pages/a", Some("code=x&state=y"), c),
            None
        );
        assert!(l
            .check(Route::Static, "/pages/a", Some("code=z&state=y"), c)
            .is_some());
        for _ in 0..10 {
            assert_eq!(l.check(Route::Static, "/pages/a", Some("tab=1"), c), None);
            assert_eq!(l.check(Route::Static, "/assets/app.js", None, c), None);
            assert_eq!(l.check(Route::Proxy, "/api/user", Some("code=1"), c), None);
            assert_eq!(
                l.check(
                    Route::Edge,
                    "/_wxedge/sandbox/connect/oauth2/authorize",
                    None,
                    c
                ),
                None
            );
            assert_eq!(l.check(Route::Health, "/_wxedge/healthz", None, c), None);
            let sign = Some("url=https%3A%2F%2Fh5.example.com%2F");
            assert_eq!(l.check(Route::Edge, "/_wxedge/jssdk/config", sign, c), None);
        }
        // A prefix of the site's own.
        let d = "8.8.8.8";
        assert_eq!(l.check(Route::Proxy, "/api/sms/send", None, d), None);
        assert_eq!(l.check(Route::Proxy, "/api/sms/send", None, d), None);
        let over = l.check(Route::Proxy, "/api/sms/send", None, d).unwrap();
        assert_eq!(over.limit, "/api/sms/");
    }

    #[test]
    fn zero_is_no_limit() {
        let l = RateLimits::new(&LimitSettings {
            login_rate: 0,
            ..LimitSettings::default()
        });
        for _ in 0..1000 {
            assert_eq!(
                l.check(Route::Edge, "/_wxedge/login", None, "1.1.1.1"),
                None
            );
        }
    }

    #[tokio::test]
    async fn the_gate_lets_a_few_through_queues_a_few_and_turns_the_rest_away() {
        let gate = CallGate::new(2, 1, Duration::from_millis(100));
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        // One waits in the queue; the next finds it full at once.
        let queued = gate.enter();
        tokio::pin!(queued);
        assert!(futures_poll_once(queued.as_mut()).await.is_none());
        let t = Instant::now();
        assert_eq!(gate.enter().await.err(), Some(Busy));
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "turned away at once"
        );
        drop(a);
        assert!(
            queued.await.is_ok(),
            "the queued call goes when a place frees"
        );
        // A wait that runs out is busy too.
        let _c = gate.enter().await.unwrap();
        assert_eq!(gate.enter().await.err(), Some(Busy));
    }

    #[test]
    fn connections_per_client_are_bounded_and_given_back() {
        let c = ClientConnections::new(2);
        let a = c.enter("1.2.3.4").unwrap();
        let b = c.enter("1.2.3.4").unwrap();
        assert!(c.enter("1.2.3.4").is_err());
        assert!(c.enter("1.2.3.5").unwrap().is_some(), "another client");
        drop(a);
        let _again = c.enter("1.2.3.4").unwrap();
        drop(b);
        drop(_again);
        assert!(
            c.open.lock().unwrap().is_empty(),
            "nothing kept for closed connections"
        );
        assert!(ClientConnections::new(0)
            .enter("1.2.3.4")
            .unwrap()
            .is_none());
    }

    /// Poll a future once: its output if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
