//! The Redis connection every replica shares state through, built so that Redis trouble can
//! only make the edge fall back, never wait long: each operation is bounded (`redis_timeout_ms`,
//! tens of milliseconds), a failure keeps Redis out of the request path for a short while
//! ([`PAUSE_AFTER_ERROR`]) instead of every request paying the timeout, warnings are rate-limited
//! and never name a key's secret part or the URL's password.
//!
//! The client is `redis`' `ConnectionManager` (one multiplexed connection that reconnects by
//! itself). It lives on a runtime of its own, one thread started on first use (so after
//! Pingora's daemonizing fork): its connection driver and reconnect tasks then never depend on
//! which worker thread happened to touch Redis first, and operations from every worker thread
//! are multiplexed onto that one connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Pipeline};

use crate::ops::metrics::METRICS;

/// After a failed operation, operations fail at once (fall back) for this long, while the
/// connection manager reconnects in the background.
pub const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(500);
/// At most one warning line per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why an operation gave no answer; the caller falls back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trouble {
    /// No answer within the bound.
    Timeout,
    /// Connection refused, dropped, or being re-established.
    Connection,
    /// Redis answered an error, or something that is not what the edge stored.
    Answer,
    /// Redis failed a moment ago: not tried.
    Paused,
}

impl Trouble {
    pub fn label(self) -> &'static str {
        match self {
            Trouble::Timeout => "timeout",
            Trouble::Connection => "connection",
            Trouble::Answer => "answer",
            Trouble::Paused => "paused",
        }
    }
}

struct Started {
    runtime: tokio::runtime::Handle,
    conn: ConnectionManager,
}

/// A bounded, self-healing handle on one Redis server.
pub struct Redis {
    client: redis::Client,
    /// `host:port` (never the password), for logs.
    addr: String,
    timeout: Duration,
    started: OnceLock<Started>,
    epoch: Instant,
    /// Milliseconds since `epoch` until which operations are not tried.
    paused_until: AtomicU64,
    /// Milliseconds since `epoch` of the last warning (0 = none yet).
    last_warning: AtomicU64,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Redis {
    /// Checks the URL (`redis://[:password@]host[:port][/db]`); connects on first use.
    /// Errors never repeat the URL, which may hold a password.
    pub fn new(url: &str, timeout: Duration) -> Result<Redis, String> {
        let client = redis::Client::open(url.trim()).map_err(|e| {
            format!(
                "not a Redis URL ({:?}); expected redis://[:password@]host[:port][/db]",
                e.kind()
            )
        })?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(Redis {
            client,
            addr,
            timeout,
            started: OnceLock::new(),
            epoch: Instant::now(),
            paused_until: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
        })
    }

    /// `host:port`, for the start-up log.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn start(&self) -> &Started {
        self.started.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("wxedge-redis".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a Tokio runtime for Redis");
                    let _ = tx.send(rt.handle().clone());
                    rt.block_on(std::future::pending::<()>());
                })
                .expect("spawning the Redis thread");
            let runtime = rx.recv().expect("the Redis thread's runtime");
            let _entered = runtime.enter();
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(250))))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(3)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1));
            let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                .expect("a connection-manager configuration without push subscriptions");
            Started { runtime, conn }
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `pipe` (one round trip) within the bound. `op` names it in metrics and logs.
    pub async fn query<T>(&self, op: &'static str, pipe: Pipeline) -> Result<T, Trouble>
    where
        T: FromRedisValue + Send + 'static,
    {
        if self.now_ms() < self.paused_until.load(Ordering::Relaxed) {
            return Err(Trouble::Paused);
        }
        let started = self.start();
        let mut conn = started.conn.clone();
        let t0 = Instant::now();
        let task = started
            .runtime
            .spawn(async move { pipe.query_async::<T>(&mut conn).await });
        let result = match tokio::time::timeout(self.timeout, task).await {
            Err(_) => Err((Trouble::Timeout, String::new())),
            Ok(Err(_)) => Err((Trouble::Connection, "task ended".into())),
            Ok(Ok(Err(e))) => {
                let kind = if e.is_timeout() {
                    Trouble::Timeout
                } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
                {
                    Trouble::Connection
                } else {
                    Trouble::Answer
                };
                Err((kind, format!("{:?}", e.kind())))
            }
            Ok(Ok(Ok(v))) => Ok(v),
        };
        METRICS
            .redis_duration
            .with_label_values(&[op])
            .observe(t0.elapsed().as_secs_f64());
        result.map_err(|(kind, detail)| {
            self.failed(op, kind, &detail);
            kind
        })
    }

    /// Counts and (rate-limited) logs a failure, and pauses Redis use briefly.
    pub fn failed(&self, op: &'static str, kind: Trouble, detail: &str) {
        METRICS
            .redis_errors
            .with_label_values(&[op, kind.label()])
            .inc();
        let now = self.now_ms().max(1);
        self.paused_until.store(
            now + PAUSE_AFTER_ERROR.as_millis() as u64,
            Ordering::Relaxed,
        );
        let last = self.last_warning.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64)
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "redis {}: {op} failed ({}{}{}): falling back to this replica's own state; next warning in {} s at the earliest",
                self.addr,
                kind.label(),
                if detail.is_empty() { "" } else { ", " },
                detail,
                WARN_EVERY.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_echoing_them() {
        let r = Redis::new(
            "redis://:hunter2-secret@127.0.0.1:6390/2",
            Duration::from_millis(50),
        )
        .unwrap();
        assert_eq!(r.addr(), "127.0.0.1:6390");
        assert!(!format!("{r:?}").contains("hunter2"));
        let e = Redis::new("http://:hunter2-secret@x", Duration::from_millis(50)).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("redis://"), "{e}");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_quick_fallback_then_a_pause() {
        // A port nothing listens on: refused at once, or at worst within the bound.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = Redis::new(
            &format!("redis://127.0.0.1:{port}"),
            Duration::from_millis(50),
        )
        .unwrap();
        let t0 = Instant::now();
        let e = r
            .query::<(Option<String>,)>("test", redis::pipe().cmd("GET").arg("k").clone())
            .await
            .unwrap_err();
        assert!(matches!(e, Trouble::Timeout | Trouble::Connection), "{e:?}");
        assert!(
            t0.elapsed() < Duration::from_millis(400),
            "{:?}",
            t0.elapsed()
        );
        // Right after: not tried at all.
        let t1 = Instant::now();
        let e = r
            .query::<(Option<String>,)>("test", redis::pipe().cmd("GET").arg("k").clone())
            .await
            .unwrap_err();
        assert_eq!(e, Trouble::Paused);
        assert!(t1.elapsed() < Duration::from_millis(5));
    }
}
