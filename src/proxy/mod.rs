//! Proxying to the existing backend: which backend (round-robin with passive health) and
//! what the request looks like upstream (`upstream`: one builder, forwarding headers, no
//! spoofable identity). Two senders, one policy: `forward` (the front door's short path,
//! with its own per-thread keep-alive pool) and Pingora's proxy (upgrades, and every request
//! when `ops.short_path` is off).

pub mod chunked;
pub mod forward;
pub mod headers;
pub mod upstream;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{BackendAddr, ProxySettings};

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

struct Backend {
    addr: BackendAddr,
    /// `host:port` as configured, for logs (kept for the life of the process).
    authority: &'static str,
    /// Skip until this time (ms since EPOCH) after a refused connection; 0 = healthy.
    down_until_ms: AtomicU64,
}

/// The configured backends and the round-robin cursor.
pub struct Upstreams {
    backends: Vec<Backend>,
    next: AtomicUsize,
    retry_after: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl Upstreams {
    pub fn new(backends: &[BackendAddr], s: &ProxySettings) -> Self {
        Lazy::force(&EPOCH);
        Upstreams {
            backends: backends
                .iter()
                .map(|b| Backend {
                    authority: Box::leak(b.authority.clone().into_boxed_str()),
                    addr: b.clone(),
                    down_until_ms: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            retry_after: Duration::from_secs(s.backend_retry_seconds),
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            read_timeout: Duration::from_millis(s.read_timeout_ms),
            write_timeout: Duration::from_millis(s.write_timeout_ms),
            idle_timeout: Duration::from_secs(s.keepalive_idle_seconds),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn authority(&self, idx: usize) -> &'static str {
        self.backends[idx].authority
    }

    pub fn addr(&self, idx: usize) -> std::net::SocketAddr {
        self.backends[idx].addr.addr
    }

    /// Next backend in turn that is neither marked down nor already tried for this request.
    /// When every untried one is down, the one that has been down longest is tried anyway:
    /// a passive check must not turn a short blip into a permanent 502.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let mut fallback: Option<(u64, usize)> = None;
        for i in 0..n {
            let idx = (start + i) % n;
            if tried.contains(&idx) {
                continue;
            }
            let until = self.backends[idx].down_until_ms.load(Ordering::Relaxed);
            if until <= now {
                return Some(idx);
            }
            if fallback.is_none_or(|(u, _)| until < u) {
                fallback = Some((until, idx));
            }
        }
        fallback.map(|(_, idx)| idx)
    }

    pub fn mark_down(&self, idx: usize) {
        let until = now_ms() + self.retry_after.as_millis() as u64;
        self.backends[idx]
            .down_until_ms
            .store(until.max(1), Ordering::Relaxed);
    }

    pub fn mark_up(&self, idx: usize) {
        if self.backends[idx].down_until_ms.load(Ordering::Relaxed) != 0 {
            self.backends[idx].down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Healthy backends now (for readiness).
    pub fn healthy_count(&self) -> usize {
        let now = now_ms();
        self.backends
            .iter()
            .filter(|b| b.down_until_ms.load(Ordering::Relaxed) <= now)
            .count()
    }

    pub fn peer(&self, idx: usize) -> HttpPeer {
        let b = &self.backends[idx];
        let mut peer = HttpPeer::new(b.addr.addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.total_connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups(n: u16) -> Upstreams {
        let addrs: Vec<BackendAddr> = (0..n)
            .map(|i| BackendAddr {
                addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                authority: format!("b{i}"),
            })
            .collect();
        Upstreams::new(&addrs, &ProxySettings::default())
    }

    #[test]
    fn round_robin_skips_down_and_tried() {
        let u = ups(3);
        let picks: Vec<usize> = (0..6).map(|_| u.pick(&[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        u.mark_down(1);
        assert!((0..6).all(|_| u.pick(&[]).unwrap() != 1));
        assert_eq!(u.healthy_count(), 2);
        assert_eq!(
            u.pick(&[0, 2]),
            Some(1),
            "a down backend is still tried when nothing else is left"
        );
        assert_eq!(u.pick(&[0, 1, 2]), None);
        u.mark_up(1);
        assert_eq!(u.healthy_count(), 3);
    }

    #[test]
    fn empty() {
        assert_eq!(ups(0).pick(&[]), None);
    }
}
