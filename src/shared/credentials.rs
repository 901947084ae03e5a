//! The account's access_token and jsapi_ticket shared by the replicas: one fetch per credential
//! for the whole fleet, whichever replicas the signatures land on.
//!
//! Keys (`<a>` = the appid; never a secret):
//! * `wxedge:wx:<a>:token`, `wxedge:wx:<a>:ticket`: `<id>.<sealed value>`, where `<id>` is the
//!   first 128 bits of SHA-256 of the value (hex) and the value is sealed with the session key:
//!   Redis never holds a usable token. Their TTL is WeChat's `expires_in`, counted by Redis
//!   (relative: no host clock is trusted); a ticket WeChat hands out again keeps its TTL (its
//!   life counts from the first fetch).
//! * `wxedge:wx:<a>:ticket:checked`: set for [`TICKET_RECHECK`](super) after each ticket fetch,
//!   so the fleet re-asks WeChat once per period, not once per replica.
//! * `wxedge:wx:<a>:lock`: the replica fetching now (`SET NX PX`, value = that process's id);
//!   it expires by itself if that replica dies mid-call.
//!
//! A token WeChat called stale is deleted only if the stored one is still that token (its id
//! compared in a script: compare-and-swap). Any Redis trouble: the caller fetches in this
//! process, as one replica alone would.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::client::{Redis, Trouble};
use crate::ops::metrics::METRICS;
use crate::session::{random_hex, SessionKeys};
use crate::wechat::jssdk::{CredentialStore, Stored};

const PURPOSE: &str = "wxedge.credential";
/// Deletes the lock only if this process still holds it.
const UNLOCK: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/// Deletes the token only if it is still the one with this id.
const DROP_IF: &str = "local v = redis.call('get', KEYS[1]) \
     if v and string.sub(v, 1, 32) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0";

pub struct RedisCredentials {
    redis: Arc<Redis>,
    keys: SessionKeys,
    prefix: String,
    lock_ttl: Duration,
    /// This process, as the lock's owner.
    me: String,
}

/// `<id>`: what the compare-and-swap compares (hex, 32 characters).
fn id(value: &str) -> String {
    let h = Sha256::new()
        .chain_update(b"wxedge credential\0")
        .chain_update(value.as_bytes())
        .finalize();
    h[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl RedisCredentials {
    /// `lock_ttl`: at least the longest a fetch of both can take.
    pub fn new(
        redis: Arc<Redis>,
        keys: SessionKeys,
        appid: &str,
        lock_ttl: Duration,
    ) -> RedisCredentials {
        RedisCredentials {
            redis,
            keys,
            prefix: format!("wxedge:wx:{appid}:"),
            lock_ttl,
            me: random_hex(16),
        }
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    fn stored(&self, value: &str) -> String {
        format!("{}.{}", id(value), self.keys.seal(PURPOSE, value))
    }

    /// The value of a stored `<id>.<sealed>`; `None` if it does not open (another key).
    fn open(&self, stored: &str) -> Option<String> {
        let (_, sealed) = stored.split_once('.')?;
        self.keys.open(PURPOSE, sealed)
    }

    fn fallback(&self) {
        METRICS
            .shared_fallbacks
            .with_label_values(&["credentials"])
            .inc();
    }

    /// A stored value and its time left, if both are there and it opens.
    fn entry(&self, stored: Option<String>, pttl: i64) -> Result<Option<(String, Duration)>, ()> {
        let Some(stored) = stored.filter(|_| pttl > 0) else {
            return Ok(None);
        };
        match self.open(&stored) {
            Some(v) => Ok(Some((v, Duration::from_millis(pttl as u64)))),
            None => {
                self.redis.failed(
                    "credentials_load",
                    Trouble::Answer,
                    "a shared credential that does not open: do all replicas share WXEDGE_SESSION_KEY?",
                );
                Err(())
            }
        }
    }
}

#[async_trait]
impl CredentialStore for RedisCredentials {
    async fn load(&self) -> Result<Stored, ()> {
        let (token, ticket, checked) = (
            self.key("token"),
            self.key("ticket"),
            self.key("ticket:checked"),
        );
        let pipe = redis::pipe()
            .cmd("GET")
            .arg(&token)
            .cmd("PTTL")
            .arg(&token)
            .cmd("GET")
            .arg(&ticket)
            .cmd("PTTL")
            .arg(&ticket)
            .cmd("PTTL")
            .arg(&checked)
            .clone();
        type Loaded = (Option<String>, i64, Option<String>, i64, i64);
        let (tv, tt, kv, kt, ct): Loaded = match self.redis.query("credentials_load", pipe).await {
            Ok(v) => v,
            Err(_) => {
                self.fallback();
                return Err(());
            }
        };
        let token = self.entry(tv, tt);
        let ticket = self.entry(kv, kt);
        let (Ok(token), Ok(ticket)) = (token, ticket) else {
            self.fallback();
            return Err(());
        };
        Ok(Stored {
            token,
            ticket,
            ticket_checked_left: (ct > 0).then(|| Duration::from_millis(ct as u64)),
        })
    }

    async fn claim(&self) -> Result<bool, ()> {
        let pipe = redis::pipe()
            .cmd("SET")
            .arg(self.key("lock"))
            .arg(&self.me)
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl.as_millis() as u64)
            .clone();
        match self
            .redis
            .query::<(Option<String>,)>("credentials_claim", pipe)
            .await
        {
            Ok((locked,)) => Ok(locked.is_some()),
            Err(_) => {
                self.fallback();
                Err(())
            }
        }
    }

    fn wait_bound(&self) -> Duration {
        self.lock_ttl
    }

    async fn publish(
        &self,
        token: Option<(&str, Duration)>,
        ticket: Option<(&str, Duration)>,
        ticket_recheck: Duration,
    ) {
        let mut pipe = redis::pipe();
        if let Some((value, ttl)) = token {
            pipe.cmd("SET")
                .arg(self.key("token"))
                .arg(self.stored(value))
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore();
        }
        if let Some((value, ttl)) = ticket {
            pipe.cmd("SET")
                .arg(self.key("ticket"))
                .arg(self.stored(value))
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore();
        }
        pipe.cmd("SET")
            .arg(self.key("ticket:checked"))
            .arg(1)
            .arg("PX")
            .arg(ticket_recheck.as_millis().max(1) as u64)
            .ignore();
        pipe.cmd("EVAL")
            .arg(UNLOCK)
            .arg(1)
            .arg(self.key("lock"))
            .arg(&self.me)
            .ignore();
        // On failure the lock expires by itself; the other replicas fall back meanwhile.
        let _ = self.redis.query::<()>("credentials_publish", pipe).await;
    }

    async fn release(&self) {
        let pipe = redis::pipe()
            .cmd("EVAL")
            .arg(UNLOCK)
            .arg(1)
            .arg(self.key("lock"))
            .arg(&self.me)
            .ignore()
            .clone();
        let _ = self.redis.query::<()>("credentials_publish", pipe).await;
    }

    async fn drop_token_if(&self, failed: &str) {
        let pipe = redis::pipe()
            .cmd("EVAL")
            .arg(DROP_IF)
            .arg(1)
            .arg(self.key("token"))
            .arg(id(failed))
            .ignore()
            .clone();
        let _ = self.redis.query::<()>("credentials_drop", pipe).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_are_sealed_and_carry_their_id() {
        let redis = Redis::new("redis://127.0.0.1:1", Duration::from_millis(10)).unwrap();
        let keys = SessionKeys::from_secrets(&["k".repeat(32)]).unwrap();
        let c = RedisCredentials::new(Arc::new(redis), keys, "wxapp", Duration::from_secs(3));
        let stored = c.stored("ACCESS-TOKEN-VALUE");
        assert!(!stored.contains("ACCESS-TOKEN-VALUE"));
        assert_eq!(&stored[..32], id("ACCESS-TOKEN-VALUE"));
        assert_eq!(c.open(&stored).as_deref(), Some("ACCESS-TOKEN-VALUE"));
        assert_eq!(c.key("lock"), "wxedge:wx:wxapp:lock");
        // Another key's seal does not open.
        let other = SessionKeys::from_secrets(&["o".repeat(32)]).unwrap();
        let redis = Redis::new("redis://127.0.0.1:1", Duration::from_millis(10)).unwrap();
        let d = RedisCredentials::new(Arc::new(redis), other, "wxapp", Duration::from_secs(3));
        assert_eq!(d.open(&stored), None);
    }
}
