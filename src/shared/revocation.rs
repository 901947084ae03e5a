//! Logout that holds on every replica: revoked sessions, kept in Redis.
//!
//! Keys:
//! * `wxedge:revoked:session:<session id>` = `1`, until that session would have expired
//!   (logout revokes the session it came with);
//! * `wxedge:revoked:openid:<openid>` = the Unix second of the revocation, for one session
//!   lifetime: every session of that openid issued up to that second is refused (the private
//!   listener's `POST /admin/revoke?openid=…`).
//!
//! A request with a session costs one round trip (`MGET` of both keys) at most, and none while
//! this replica's answer for that session is fresh: "not revoked" is trusted for [`FRESH_FOR`],
//! so a revocation reaches every replica within that (plus a round trip); "revoked" is final and
//! kept until the session expires. When Redis cannot answer, sessions are accepted (a login
//! must not depend on Redis) except those this replica already knows to be revoked; the metric
//! `wxedge_shared_fallbacks_total{what="revocation"}` counts those requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{Redis, Trouble};
use crate::ops::metrics::METRICS;
use crate::session::{now_unix, Session};

/// How long this replica trusts "not revoked" without asking Redis again.
pub const FRESH_FOR: Duration = Duration::from_millis(500);
/// Sessions whose verdict is remembered; past it, expired verdicts go, then all of them (a
/// cache: forgetting costs a round trip).
const LOCAL_MAX: usize = 50_000;
/// Longest openid accepted by the admin endpoint (WeChat's are 28 characters).
const MAX_OPENID_LEN: usize = 128;

/// What `MGET` finds: the openid's revocation second, the session's own mark.
type Marks = (Option<u64>, Option<String>);

#[derive(Clone, Copy)]
struct Verdict {
    revoked: bool,
    until: Instant,
}

/// Session revocation shared by the replicas.
pub struct Revocations {
    redis: Arc<Redis>,
    /// The sessions' lifetime: how long an openid-wide revocation must be remembered.
    lifetime: Duration,
    local: Mutex<HashMap<String, Verdict>>,
}

fn session_key(id: &str) -> String {
    format!("wxedge:revoked:session:{id}")
}

fn openid_key(openid: &str) -> String {
    format!("wxedge:revoked:openid:{openid}")
}

/// What may name a WeChat openid (letters, digits, `-`, `_`).
pub fn valid_openid(openid: &str) -> bool {
    !openid.is_empty()
        && openid.len() <= MAX_OPENID_LEN
        && openid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Revocations {
    pub fn new(redis: Arc<Redis>, lifetime: Duration) -> Revocations {
        Revocations {
            redis,
            lifetime,
            local: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, id: &str, verdict: Verdict) {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.len() >= LOCAL_MAX && !local.contains_key(id) {
            let now = Instant::now();
            local.retain(|_, v| v.until > now);
            if local.len() >= LOCAL_MAX {
                local.clear();
            }
        }
        local.insert(id.to_string(), verdict);
    }

    /// How long a revoked verdict for `s` stays useful: until the session expires.
    fn until_expiry(s: &Session) -> Duration {
        Duration::from_secs(s.expires_at.saturating_sub(now_unix()).max(1))
    }

    /// Whether `s` was revoked, on any replica.
    pub async fn is_revoked(&self, s: &Session) -> bool {
        let now = Instant::now();
        let known = self
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&s.id)
            .copied();
        if let Some(v) = known.filter(|v| v.revoked || v.until > now) {
            return v.revoked;
        }
        let pipe = redis::pipe()
            .cmd("MGET")
            .arg(openid_key(&s.identity.openid))
            .arg(session_key(&s.id))
            .clone();
        match self.redis.query::<(Marks,)>("revocation_check", pipe).await {
            Ok(((all_before, this),)) => {
                let revoked = this.is_some() || all_before.is_some_and(|t| s.issued_at <= t);
                let until = if revoked {
                    now + Self::until_expiry(s)
                } else {
                    now + FRESH_FOR
                };
                self.remember(&s.id, Verdict { revoked, until });
                if revoked {
                    METRICS.revoked_sessions_refused.inc();
                }
                revoked
            }
            Err(_) => {
                METRICS
                    .shared_fallbacks
                    .with_label_values(&["revocation"])
                    .inc();
                false
            }
        }
    }

    /// Logout: `s` is refused from now on, here at once, elsewhere within [`FRESH_FOR`].
    pub async fn revoke_session(&self, s: &Session) -> Result<(), Trouble> {
        let ttl = Self::until_expiry(s);
        self.remember(
            &s.id,
            Verdict {
                revoked: true,
                until: Instant::now() + ttl,
            },
        );
        let pipe = redis::pipe()
            .cmd("SET")
            .arg(session_key(&s.id))
            .arg(1)
            .arg("EX")
            .arg(ttl.as_secs())
            .ignore()
            .clone();
        self.redis.query::<()>("revoke", pipe).await
    }

    /// Every session of `openid` issued up to this second is refused, on every replica within
    /// [`FRESH_FOR`]. Returns that second.
    pub async fn revoke_openid(&self, openid: &str) -> Result<u64, Trouble> {
        let now = now_unix();
        let pipe = redis::pipe()
            .cmd("SET")
            .arg(openid_key(openid))
            .arg(now)
            .arg("EX")
            .arg(self.lifetime.as_secs().max(1))
            .ignore()
            .clone();
        self.redis.query::<()>("revoke", pipe).await?;
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openids_are_checked() {
        assert!(valid_openid("oAbC-123_xyz"));
        for bad in ["", "a b", "a/b", "a*", "ö", &"a".repeat(129)] {
            assert!(!valid_openid(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn without_redis_sessions_pass_but_local_logouts_hold() {
        let redis = Arc::new(Redis::new("redis://127.0.0.1:1", Duration::from_millis(20)).unwrap());
        let r = Revocations::new(redis, Duration::from_secs(60));
        let session = |id: &str| Session {
            identity: crate::session::Identity {
                openid: "o1".into(),
                unionid: None,
                scope: "snsapi_base".into(),
                snapshot: false,
                nickname: None,
                avatar: None,
            },
            id: id.into(),
            issued_at: now_unix(),
            expires_at: now_unix() + 60,
        };
        assert!(!r.is_revoked(&session("s1")).await);
        assert!(r.revoke_session(&session("s2")).await.is_err());
        assert!(r.is_revoked(&session("s2")).await);
        assert!(!r.is_revoked(&session("s1")).await);
    }
}
