//! Relay tickets are single use across replicas: the first replica to see a ticket's id sets
//! `wxedge:ticket:<id>` (`SET NX EXAT` the ticket's expiry); any other replica then refuses it.
//!
//! Redis trouble falls back to this replica's own record, which every ticket also goes into:
//! a replay on the same replica is always refused; one on another replica while Redis is down
//! is not (the ticket is still bound to its audience, its 60 s and the browser's login state).

use std::sync::Arc;

use async_trait::async_trait;

use super::Redis;
use crate::ops::metrics::METRICS;
use crate::session::{MemorySpentTickets, SpentTickets};

pub struct RedisSpentTickets {
    redis: Arc<Redis>,
    local: MemorySpentTickets,
}

impl RedisSpentTickets {
    pub fn new(redis: Arc<Redis>) -> RedisSpentTickets {
        RedisSpentTickets {
            redis,
            local: MemorySpentTickets::default(),
        }
    }
}

/// Ticket ids are the edge's own random hex; anything else never reaches Redis as a key.
fn key(id: &str) -> Option<String> {
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| format!("wxedge:ticket:{id}"))
}

#[async_trait]
impl SpentTickets for RedisSpentTickets {
    async fn first_use(&self, id: &str, expires_at: u64, now: u64) -> bool {
        if !self.local.first_use(id, expires_at, now).await {
            return false;
        }
        let Some(key) = key(id) else { return false };
        let pipe = redis::pipe()
            .cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("EXAT")
            .arg(expires_at.max(now + 1))
            .clone();
        match self.redis.query::<(Option<String>,)>("ticket", pipe).await {
            Ok((Some(_),)) => true,
            Ok((None,)) => false,
            Err(_) => {
                METRICS
                    .shared_fallbacks
                    .with_label_values(&["ticket"])
                    .inc();
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A real redis-server on a free loopback port (skipped without one, except under CI).
    fn redis_server() -> Option<(std::process::Child, u16)> {
        let found = std::process::Command::new("redis-server")
            .arg("--version")
            .output();
        if found.is_err() {
            assert!(std::env::var_os("CI").is_none(), "CI installs redis-server");
            eprintln!("redis-server is not installed: skipped");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--appendonly",
                "no",
                "--dir",
                &std::env::temp_dir().display().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some((child, port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start");
    }

    #[tokio::test]
    async fn a_ticket_is_used_once_across_replicas_and_per_replica_without_redis() {
        let Some((mut server, port)) = redis_server() else {
            return;
        };
        let url = format!("redis://127.0.0.1:{port}");
        let replica = || {
            RedisSpentTickets::new(Arc::new(
                Redis::new(&url, Duration::from_millis(500)).unwrap(),
            ))
        };
        let (a, b) = (replica(), replica());
        let now = crate::session::now_unix();
        assert!(a.first_use("t1", now + 60, now).await);
        assert!(
            !b.first_use("t1", now + 60, now).await,
            "replayed on another replica"
        );
        assert!(
            !a.first_use("t1", now + 60, now).await,
            "replayed on the same replica"
        );
        assert!(b.first_use("t2", now + 60, now).await);
        server.kill().unwrap();
        server.wait().unwrap();
        // Redis gone: each replica still refuses what it saw itself, and logins go on.
        assert!(!b.first_use("t2", now + 60, now).await);
        assert!(a.first_use("t3", now + 60, now).await);
    }

    #[test]
    fn only_plain_ids_become_keys() {
        assert_eq!(key("ab12").as_deref(), Some("wxedge:ticket:ab12"));
        for bad in ["", "a b", "a:b", "a\r\nDEL x", &"a".repeat(65)] {
            assert_eq!(key(bad), None, "{bad:?}");
        }
    }
}
