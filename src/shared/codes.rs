//! The OAuth code cache shared by the replicas: one code reaches WeChat once, whichever replicas
//! its loads land on.
//!
//! Keys (`<h>` = the first 128 bits of SHA-256 of the code, hex: Redis never sees a code, which
//! could still log someone in while its outcome is cached):
//! * `wxedge:code:<h>:lock`: the replica redeeming the code now (`SET NX PX`, value = that
//!   process's token); it expires by itself if the replica dies mid-call.
//! * `wxedge:code:<h>`: the outcome, sealed with the session key (only what a session needs:
//!   openid, unionid, scope, snapshot flag, nickname and avatar; or WeChat's refusal), for the
//!   exchanger's TTLs (5 minutes, 30 s for a refusal).
//!
//! [`claim`](RedisCodeCache::claim) is one round trip, `SET lock NX PX` then `GET outcome`
//! pipelined: the outcome wins if there is one; else the lock makes this replica the one that
//! calls WeChat; else another replica is calling, and this one polls the same pipeline every
//! [`POLL`] until the outcome is there, or the lock is free again (that replica's call failed in
//! a way not worth caching, so this one tries), or the wait bound passes. The redeeming replica
//! stores the outcome before it deletes its lock (one pipeline), so a poller never finds
//! neither. Any Redis trouble: [`Claim::Unavailable`], the exchanger redeems in this process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::client::{Redis, Trouble};
use crate::ops::metrics::METRICS;
use crate::session::{random_hex, SessionKeys};
use crate::wechat::{
    Claim, CodeCache, ExchangeError, ExchangeOutcome, Exchanged, Obtained, TokenAnswer, UserInfo,
};

/// How often a waiting replica looks for the outcome.
pub const POLL: Duration = Duration::from_millis(20);
/// What sealed records are bound to (see `SessionKeys::seal`).
const PURPOSE: &str = "wxedge.code";
const RECORD_VERSION: u8 = 1;
/// Deletes the lock only if this process still holds it (it may have expired and been taken).
const UNLOCK: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// The sealed record.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Record {
    v: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<Who>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<Refusal>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Who {
    o: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    s: String,
    #[serde(default)]
    p: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
}

/// WeChat's final refusal of a code (or of the edge's credentials).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Refusal {
    c: i64,
    m: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
}

impl Record {
    /// What of `outcome` is shared; `None` for outcomes that are never shared (transient errors).
    fn of(outcome: &ExchangeOutcome) -> Option<Record> {
        let (ok, err) = match outcome {
            Ok(ex) => {
                let t = &ex.token;
                let info = ex.userinfo.as_ref();
                let who = Who {
                    o: t.openid.clone(),
                    u: t.unionid
                        .clone()
                        .or_else(|| info.and_then(|i| i.unionid.clone())),
                    s: t.scope.clone(),
                    p: t.is_snapshotuser,
                    n: info.map(|i| i.nickname.clone()),
                    a: info.map(|i| i.headimgurl.clone()),
                };
                (Some(who), None)
            }
            Err(ExchangeError::WeChat {
                errcode,
                errmsg,
                req_id,
            }) => (
                None,
                Some(Refusal {
                    c: *errcode,
                    m: errmsg.clone(),
                    r: req_id.clone(),
                }),
            ),
            Err(_) => return None,
        };
        Some(Record {
            v: RECORD_VERSION,
            ok,
            err,
        })
    }

    /// The outcome again. Tokens are never shared: a replica that did not redeem the code has
    /// none (the session needs none; the compat endpoint answers them empty).
    fn outcome(self) -> Option<ExchangeOutcome> {
        if self.v != RECORD_VERSION {
            return None;
        }
        match (self.ok, self.err) {
            (Some(w), None) if !w.o.is_empty() => Some(Ok(Exchanged {
                userinfo: w.n.map(|nickname| UserInfo {
                    nickname,
                    headimgurl: w.a.unwrap_or_default(),
                    unionid: None,
                }),
                token: TokenAnswer {
                    access_token: String::new(),
                    expires_in: 0,
                    refresh_token: String::new(),
                    openid: w.o,
                    scope: w.s,
                    is_snapshotuser: w.p,
                    unionid: w.u,
                },
            })),
            (None, Some(r)) => Some(Err(ExchangeError::WeChat {
                errcode: r.c,
                errmsg: r.m,
                req_id: r.r,
            })),
            _ => None,
        }
    }
}

/// [`CodeCache`] over Redis, for several replicas sharing `WXEDGE_SESSION_KEY`.
pub struct RedisCodeCache {
    redis: Arc<Redis>,
    keys: SessionKeys,
    /// Lock lifetime and the longest wait for another replica's call: that call's own bound.
    lock_ttl: Duration,
    /// This process, as the lock's owner (the exchanger's single-flight makes it one claim
    /// per code per process).
    token: String,
}

impl RedisCodeCache {
    /// `lock_ttl`: at least the longest a redemption can take (WeChat's total timeout for the
    /// exchange and for the userinfo call).
    pub fn new(redis: Arc<Redis>, keys: SessionKeys, lock_ttl: Duration) -> RedisCodeCache {
        RedisCodeCache {
            redis,
            keys,
            lock_ttl,
            token: random_hex(16),
        }
    }

    fn key(code: &str) -> String {
        let h = Sha256::new()
            .chain_update(b"wxedge code\0")
            .chain_update(code.as_bytes())
            .finalize();
        let mut hex = String::with_capacity(32);
        for b in &h[..16] {
            hex.push_str(&format!("{b:02x}"));
        }
        format!("wxedge:code:{hex}")
    }

    fn seal(&self, outcome: &ExchangeOutcome) -> Option<String> {
        let json = serde_json::to_string(&Record::of(outcome)?).ok()?;
        Some(self.keys.seal(PURPOSE, &json))
    }

    /// `None` for anything the edge did not seal (or sealed with a key no longer configured).
    fn open(&self, value: &str) -> Option<Arc<ExchangeOutcome>> {
        let json = self.keys.open(PURPOSE, value)?;
        let record: Record = serde_json::from_str(&json).ok()?;
        record.outcome().map(Arc::new)
    }

    fn fallback(&self) -> Claim {
        METRICS
            .shared_fallbacks
            .with_label_values(&["code_cache"])
            .inc();
        Claim::Unavailable
    }
}

#[async_trait]
impl CodeCache for RedisCodeCache {
    async fn get(&self, code: &str) -> Option<Arc<ExchangeOutcome>> {
        let pipe = redis::pipe().cmd("GET").arg(Self::key(code)).clone();
        let (value,): (Option<String>,) = self.redis.query("code_get", pipe).await.ok()?;
        self.open(&value?)
    }

    async fn put(&self, code: &str, v: Arc<ExchangeOutcome>, ttl: Duration) {
        let Some(sealed) = self.seal(&v) else { return };
        let pipe = redis::pipe()
            .cmd("SET")
            .arg(Self::key(code))
            .arg(sealed)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .ignore()
            .clone();
        let _ = self.redis.query::<()>("code_put", pipe).await;
    }

    async fn claim(&self, code: &str) -> Claim {
        let key = Self::key(code);
        let lock = format!("{key}:lock");
        let started = Instant::now();
        let mut waited = false;
        loop {
            let pipe = redis::pipe()
                .cmd("SET")
                .arg(&lock)
                .arg(&self.token)
                .arg("NX")
                .arg("PX")
                .arg(self.lock_ttl.as_millis() as u64)
                .cmd("GET")
                .arg(&key)
                .clone();
            let (locked, value): (Option<String>, Option<String>) =
                match self.redis.query("code_claim", pipe).await {
                    Ok(v) => v,
                    Err(_) => return self.fallback(),
                };
            if let Some(value) = value {
                if locked.is_some() {
                    self.unlock(&lock).await;
                }
                let Some(outcome) = self.open(&value) else {
                    self.redis.failed(
                        "code_claim",
                        Trouble::Answer,
                        "a cached outcome that does not open: do all replicas share WXEDGE_SESSION_KEY?",
                    );
                    return self.fallback();
                };
                if waited {
                    METRICS.shared_code_waits.inc();
                    return Claim::Done(outcome, Obtained::Joined);
                }
                METRICS.shared_code_hits.inc();
                return Claim::Done(outcome, Obtained::Cached);
            }
            if locked.is_some() {
                return Claim::Redeem;
            }
            if started.elapsed() >= self.lock_ttl {
                // The replica holding the lock is stuck past its own bound.
                self.redis.failed(
                    "code_claim",
                    Trouble::Timeout,
                    "waited a lock's lifetime for another replica's code exchange",
                );
                return self.fallback();
            }
            waited = true;
            tokio::time::sleep(POLL).await;
        }
    }

    async fn release(&self, code: &str, v: Arc<ExchangeOutcome>, ttl: Option<Duration>) {
        let key = Self::key(code);
        let lock = format!("{key}:lock");
        let mut pipe = redis::pipe();
        if let (Some(ttl), Some(sealed)) = (ttl, self.seal(&v)) {
            pipe.cmd("SET")
                .arg(&key)
                .arg(sealed)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore();
        }
        pipe.cmd("EVAL")
            .arg(UNLOCK)
            .arg(1)
            .arg(&lock)
            .arg(&self.token)
            .ignore();
        // On failure the lock expires by itself; waiting replicas fall back meanwhile.
        let _ = self.redis.query::<()>("code_release", pipe).await;
    }
}

impl RedisCodeCache {
    async fn unlock(&self, lock: &str) {
        let pipe = redis::pipe()
            .cmd("EVAL")
            .arg(UNLOCK)
            .arg(1)
            .arg(lock)
            .arg(&self.token)
            .ignore()
            .clone();
        let _ = self.redis.query::<()>("code_release", pipe).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(secret: &str) -> RedisCodeCache {
        let redis = Redis::new("redis://127.0.0.1:1", Duration::from_millis(10)).unwrap();
        let keys = SessionKeys::from_secrets(&[secret.repeat(32)]).unwrap();
        RedisCodeCache::new(Arc::new(redis), keys, Duration::from_secs(1))
    }

    fn userinfo_outcome() -> ExchangeOutcome {
        Ok(Exchanged {
            token: TokenAnswer {
                access_token: "ACCESS-SECRET-TOKEN".into(),
                expires_in: 7200,
                refresh_token: "REFRESH-SECRET-TOKEN".into(),
                openid: "o-alice".into(),
                scope: "snsapi_userinfo".into(),
                is_snapshotuser: false,
                unionid: None,
            },
            userinfo: Some(UserInfo {
                nickname: "爱丽丝".into(),
                headimgurl: "https://thirdwx.qlogo.cn/a/132".into(),
                unionid: Some("u-alice".into()),
            }),
        })
    }

    #[test]
    fn records_keep_what_a_session_needs_and_no_token() {
        let c = cache("a");
        let sealed = c.seal(&userinfo_outcome()).unwrap();
        assert!(!sealed.contains("o-alice"));
        let back = c.open(&sealed).unwrap();
        let ex = back.as_ref().as_ref().unwrap();
        assert_eq!(ex.token.openid, "o-alice");
        assert_eq!(ex.token.unionid.as_deref(), Some("u-alice"));
        assert_eq!(ex.token.scope, "snsapi_userinfo");
        assert_eq!(ex.token.access_token, "");
        assert_eq!(ex.token.refresh_token, "");
        let info = ex.userinfo.as_ref().unwrap();
        assert_eq!(info.nickname, "爱丽丝");
        assert_eq!(info.headimgurl, "https://thirdwx.qlogo.cn/a/132");
        // The plaintext itself holds no token.
        let json = c.keys.open(PURPOSE, &sealed).unwrap();
        assert!(!json.contains("SECRET-TOKEN"), "{json}");
    }

    #[test]
    fn refusals_are_shared_and_transient_failures_are_not() {
        let c = cache("a");
        let refusal: ExchangeOutcome = Err(ExchangeError::WeChat {
            errcode: 40029,
            errmsg: "invalid code".into(),
            req_id: Some("R1".into()),
        });
        let back = c.open(&c.seal(&refusal).unwrap()).unwrap();
        assert_eq!(*back, refusal);
        assert!(c.seal(&Err(ExchangeError::Timeout)).is_none());
    }

    #[test]
    fn foreign_keys_garbage_and_other_purposes_do_not_open() {
        let a = cache("a");
        let b = cache("b");
        let sealed = a.seal(&userinfo_outcome()).unwrap();
        assert!(b.open(&sealed).is_none());
        for garbage in ["", "not base64 !", "AAAA", &sealed[..sealed.len() - 2]] {
            assert!(a.open(garbage).is_none(), "{garbage}");
        }
        // A value sealed for another purpose (a session cookie's name) does not open here.
        let other = a
            .keys
            .seal("wxedge_session", r#"{"v":1,"ok":{"o":"x","s":"y"}}"#);
        assert!(a.open(&other).is_none());
        // A record from another version does not open either.
        let future = a.keys.seal(PURPOSE, r#"{"v":2,"ok":{"o":"x","s":"y"}}"#);
        assert!(a.open(&future).is_none());
    }

    #[test]
    fn keys_hide_the_code() {
        let k = RedisCodeCache::key("061AbcDEF0000xyz");
        assert!(k.starts_with("wxedge:code:"));
        assert!(!k.contains("061AbcDEF"));
        assert_eq!(k.len(), "wxedge:code:".len() + 32);
        assert_ne!(k, RedisCodeCache::key("061AbcDEF0000xyZ"));
    }
}
