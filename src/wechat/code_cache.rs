//! Single-flight code redemption with a short result cache.
//!
//! WeChat codes are single-use: a second exchange answers 40163. The browser may load the callback
//! twice, the user may refresh, and the unchanged frontend later sends the same code to its backend.
//! [`CodeExchanger::redeem`] therefore makes concurrent callers with one code share ONE call to
//! WeChat, and keeps the answer for the code's remaining life so later callers get it from cache.
//!
//! The WeChat call runs in its own task: a caller that goes away (client disconnect) does not
//! abort it, so the answer is still cached for the browser's retry instead of being lost with a
//! consumed code.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use super::client::{validate_code, ExchangeError, TokenAnswer, UserInfo, WechatClient};

/// A successful redemption: the token answer and, for `snsapi_userinfo`, the user info (None when
/// not fetched or when `/sns/userinfo` failed; the login still succeeds without it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchanged {
    pub token: TokenAnswer,
    pub userinfo: Option<UserInfo>,
}

impl Exchanged {
    /// unionid from the token answer, else from the user info.
    #[cfg(test)]
    pub fn unionid(&self) -> Option<&str> {
        self.token
            .unionid
            .as_deref()
            .or_else(|| self.userinfo.as_ref().and_then(|u| u.unionid.as_deref()))
    }
}

/// What redeeming a code produced.
pub type ExchangeOutcome = Result<Exchanged, ExchangeError>;

/// A cache of outcomes by code. The in-memory [`MemoryCodeCache`] is per process; a shared one
/// (`shared::RedisCodeCache`) also coordinates several edge replicas through
/// [`claim`](CodeCache::claim) and [`release`](CodeCache::release), so that one code reaches
/// WeChat once whichever replicas its loads land on.
#[async_trait]
pub trait CodeCache: Send + Sync {
    async fn get(&self, code: &str) -> Option<Arc<ExchangeOutcome>>;
    async fn put(&self, code: &str, v: Arc<ExchangeOutcome>, ttl: Duration);

    /// Before this process redeems `code` at WeChat: the outcome, if another process has it
    /// (having waited for it, when one is redeeming it now), or the go-ahead, which a shared
    /// cache backs with a lock until [`release`](CodeCache::release).
    async fn claim(&self, code: &str) -> Claim {
        match self.get(code).await {
            Some(v) => Claim::Done(v, Obtained::Cached),
            None => Claim::Redeem,
        }
    }

    /// After a [`Claim::Redeem`]: keep the outcome for `ttl` (`None`: not cached, the next
    /// caller asks WeChat again) and let the others go on.
    async fn release(&self, code: &str, v: Arc<ExchangeOutcome>, ttl: Option<Duration>) {
        if let Some(ttl) = ttl {
            self.put(code, v, ttl).await
        }
    }
}

/// What [`CodeCache::claim`] decided.
#[derive(Debug)]
pub enum Claim {
    /// Redeem it here, then [`CodeCache::release`].
    Redeem,
    /// Another process redeemed it: `Cached` when it was there already, `Joined` when this
    /// one waited for it.
    Done(Arc<ExchangeOutcome>, Obtained),
    /// The cache cannot coordinate right now (it said why in its log and metrics): redeem it
    /// here, as a lone process would, and do not release.
    Unavailable,
}

struct MemEntry {
    value: Arc<ExchangeOutcome>,
    expires: Instant,
    seq: u64,
}

#[derive(Default)]
struct MemInner {
    map: HashMap<String, MemEntry>,
    /// Insertion order (seq, code); entries whose seq no longer matches are stale.
    order: VecDeque<(u64, String)>,
    seq: u64,
    last_purge: Option<Instant>,
}

/// Bounded in-memory cache: at capacity, expired entries go first, then the oldest.
pub struct MemoryCodeCache {
    inner: Mutex<MemInner>,
    max_entries: usize,
}

impl MemoryCodeCache {
    pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

    pub fn new(max_entries: usize) -> Self {
        MemoryCodeCache {
            inner: Mutex::new(MemInner::default()),
            max_entries: max_entries.max(1),
        }
    }

    /// Live entries (expired ones not yet removed are counted).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_at(&self, code: &str, now: Instant) -> Option<Arc<ExchangeOutcome>> {
        let mut inner = self.inner.lock().unwrap();
        match inner.map.get(code) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                inner.map.remove(code);
                None
            }
            None => None,
        }
    }

    fn put_at(&self, code: &str, value: Arc<ExchangeOutcome>, ttl: Duration, now: Instant) {
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        if !inner.map.contains_key(code) && inner.map.len() >= self.max_entries {
            // Expired first (a full scan at most once a second), then the oldest.
            if inner
                .last_purge
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                inner.map.retain(|_, e| e.expires > now);
                inner.last_purge = Some(now);
            }
            while inner.map.len() >= self.max_entries {
                let Some((seq, old)) = inner.order.pop_front() else {
                    break;
                };
                if inner.map.get(&old).is_some_and(|e| e.seq == seq) {
                    inner.map.remove(&old);
                }
            }
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.map.insert(
            code.to_string(),
            MemEntry {
                value,
                expires: now + ttl,
                seq,
            },
        );
        inner.order.push_back((seq, code.to_string()));
        if inner.order.len() > 2 * self.max_entries + 16 {
            let map = &inner.map;
            inner
                .order
                .retain(|(s, c)| map.get(c).is_some_and(|e| e.seq == *s));
        }
    }
}

impl Default for MemoryCodeCache {
    fn default() -> Self {
        MemoryCodeCache::new(Self::DEFAULT_MAX_ENTRIES)
    }
}

#[async_trait]
impl CodeCache for MemoryCodeCache {
    async fn get(&self, code: &str) -> Option<Arc<ExchangeOutcome>> {
        self.get_at(code, Instant::now())
    }

    async fn put(&self, code: &str, v: Arc<ExchangeOutcome>, ttl: Duration) {
        self.put_at(code, v, ttl, Instant::now())
    }
}

/// How a [`RedeemResult`] was obtained (for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Obtained {
    /// Answered for this request now: by a WeChat call it started, or locally for a malformed
    /// code (then `RedeemResult::rejected_locally` is true and WeChat was not asked).
    Fresh,
    /// Waited on a call another request had in flight.
    Joined,
    /// From the cache: no WeChat call.
    Cached,
}

#[derive(Clone, Debug)]
pub struct RedeemResult {
    pub outcome: Arc<ExchangeOutcome>,
    pub obtained: Obtained,
    /// The code was malformed and refused without asking WeChat (a 40029-shaped error).
    pub rejected_locally: bool,
}

/// Cache lifetimes and the userinfo policy.
#[derive(Clone, Debug)]
pub struct ExchangerConfig {
    /// Successful answers: the code's 5-minute life.
    pub success_ttl: Duration,
    /// Final WeChat refusals of a code or of our credentials (40029, 40163, 41008, 40125, …).
    /// Transient failures (timeouts, -1, 45011, 5xx, garbage) are never cached.
    pub failure_ttl: Duration,
    /// Fetch `/sns/userinfo` when the token's scope is `snsapi_userinfo`.
    pub fetch_userinfo: bool,
}

impl Default for ExchangerConfig {
    fn default() -> Self {
        ExchangerConfig {
            success_ttl: Duration::from_secs(300),
            failure_ttl: Duration::from_secs(30),
            fetch_userinfo: true,
        }
    }
}

type Slot = Option<(Arc<ExchangeOutcome>, Obtained)>;
type Inflight = Arc<Mutex<HashMap<String, (u64, watch::Receiver<Slot>)>>>;

/// Redeems codes once: single-flight + cache.
pub struct CodeExchanger {
    client: Arc<WechatClient>,
    /// This process's cache, asked first.
    cache: Arc<dyn CodeCache>,
    /// The replicas' shared cache, asked on a miss (None: one replica alone).
    shared: Option<Arc<dyn CodeCache>>,
    cfg: ExchangerConfig,
    inflight: Inflight,
    next_id: std::sync::atomic::AtomicU64,
}

impl CodeExchanger {
    pub fn new(client: Arc<WechatClient>, cache: Arc<dyn CodeCache>, cfg: ExchangerConfig) -> Self {
        CodeExchanger {
            client,
            cache,
            shared: None,
            cfg,
            inflight: Arc::new(Mutex::new(HashMap::new())),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Coordinates with other replicas through `shared` (a miss in this process's cache asks it).
    pub fn with_shared(mut self, shared: Arc<dyn CodeCache>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Codes with a WeChat call in flight right now (a gauge).
    #[cfg(test)]
    pub fn inflight_len(&self) -> usize {
        self.inflight.lock().unwrap().len()
    }

    /// The outcome for `code`: from cache, by joining an in-flight call, or by calling WeChat.
    /// Must run inside a Tokio runtime (the call is spawned so that it outlives its caller).
    pub async fn redeem(&self, code: &str) -> RedeemResult {
        if let Err(e) = validate_code(code) {
            return RedeemResult {
                outcome: Arc::new(Err(e)),
                obtained: Obtained::Fresh,
                rejected_locally: true,
            };
        }
        if let Some(v) = self.cache.get(code).await {
            return RedeemResult {
                outcome: v,
                obtained: Obtained::Cached,
                rejected_locally: false,
            };
        }
        let (mut rx, leader) = {
            let mut map = self.inflight.lock().unwrap();
            match map.get(code) {
                Some((_, rx)) => (rx.clone(), false),
                None => {
                    let id = self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (tx, rx) = watch::channel(None);
                    map.insert(code.to_string(), (id, rx.clone()));
                    self.spawn_exchange(code.to_string(), id, tx);
                    (rx, true)
                }
            }
        };
        let slot = rx.wait_for(Option::is_some).await.map(|s| s.clone());
        match slot {
            Ok(Some((outcome, how))) => RedeemResult {
                outcome,
                obtained: if leader { how } else { Obtained::Joined },
                rejected_locally: false,
            },
            _ => RedeemResult {
                outcome: Arc::new(Err(ExchangeError::Garbage(
                    "code exchange task failed".into(),
                ))),
                obtained: if leader {
                    Obtained::Fresh
                } else {
                    Obtained::Joined
                },
                rejected_locally: false,
            },
        }
    }

    /// For the WeChat-compatible endpoint: the outcome the edge already has (or is getting right
    /// now) for `code`, without ever calling WeChat itself.
    #[cfg(test)]
    pub async fn cached(&self, code: &str) -> Option<Arc<ExchangeOutcome>> {
        validate_code(code).ok()?;
        if let Some(v) = self.cache.get(code).await {
            return Some(v);
        }
        let rx = self
            .inflight
            .lock()
            .unwrap()
            .get(code)
            .map(|(_, rx)| rx.clone());
        let mut rx = rx?;
        let slot = rx.wait_for(Option::is_some).await.ok()?.clone();
        slot.map(|(o, _)| o)
    }

    fn spawn_exchange(&self, code: String, id: u64, tx: watch::Sender<Slot>) {
        let client = self.client.clone();
        let cache = self.cache.clone();
        let shared = self.shared.clone();
        let cfg = self.cfg.clone();
        let inflight = self.inflight.clone();
        tokio::spawn(async move {
            // Removes the in-flight entry however this task ends (after the answer is sent).
            let _guard = InflightGuard {
                map: inflight,
                code: code.clone(),
                id,
            };
            // Double check: the previous flight may have filled the cache between the caller's
            // cache miss and its registration as leader.
            let slot = if let Some(v) = cache.get(&code).await {
                (v, Obtained::Cached)
            } else {
                let (outcome, how) = redeem_once(&client, shared.as_deref(), &code, &cfg).await;
                if let Some(ttl) = cache_ttl(&outcome, &cfg) {
                    cache.put(&code, outcome.clone(), ttl).await;
                }
                (outcome, how)
            };
            let _ = tx.send(Some(slot));
        });
    }
}

struct InflightGuard {
    map: Inflight,
    code: String,
    id: u64,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            if map.get(&self.code).is_some_and(|(id, _)| *id == self.id) {
                map.remove(&self.code);
            }
        }
    }
}

/// The outcome for `code` from the replicas' shared cache (another replica redeemed it), or
/// from WeChat.
async fn redeem_once(
    client: &WechatClient,
    shared: Option<&dyn CodeCache>,
    code: &str,
    cfg: &ExchangerConfig,
) -> (Arc<ExchangeOutcome>, Obtained) {
    let claim = match shared {
        Some(s) => s.claim(code).await,
        None => Claim::Unavailable,
    };
    if let Claim::Done(v, how) = claim {
        return (v, how);
    }
    let outcome = Arc::new(exchange(client, code, cfg.fetch_userinfo).await);
    if let (Some(s), Claim::Redeem) = (shared, claim) {
        s.release(code, outcome.clone(), cache_ttl(&outcome, cfg))
            .await;
    }
    (outcome, Obtained::Fresh)
}

async fn exchange(client: &WechatClient, code: &str, fetch_userinfo: bool) -> ExchangeOutcome {
    let token = match client.exchange_code(code).await {
        Ok(t) => t,
        Err(e) => {
            match &e {
                ExchangeError::WeChat {
                    errcode, req_id, ..
                } => log::warn!(
                    "WeChat code exchange failed: errcode={errcode} req_id={}",
                    req_id.as_deref().unwrap_or("-")
                ),
                other => log::warn!(
                    "WeChat code exchange failed: {} ({other})",
                    other.errcode_label()
                ),
            }
            return Err(e);
        }
    };
    let userinfo = if fetch_userinfo && token.is_userinfo_scope() {
        match client.userinfo(&token.access_token, &token.openid).await {
            Ok(u) => Some(u),
            Err(e) => {
                log::warn!(
                    "WeChat userinfo failed: {} (login goes on without it)",
                    e.errcode_label()
                );
                None
            }
        }
    } else {
        None
    };
    Ok(Exchanged { token, userinfo })
}

fn cache_ttl(outcome: &ExchangeOutcome, cfg: &ExchangerConfig) -> Option<Duration> {
    match outcome {
        Ok(_) => Some(cfg.success_ttl),
        Err(e) if e.is_code_problem() || e.is_config_problem() => Some(cfg.failure_ttl),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::testserver::{Reply, TestServer};
    use crate::wechat::WechatClientConfig;

    const OK_BASE: &str = r#"{"access_token":"AT","expires_in":7200,"refresh_token":"RT","openid":"oBase","scope":"snsapi_base"}"#;

    fn exchanger(base: &str, total_ms: u64) -> (CodeExchanger, Arc<MemoryCodeCache>) {
        let mut cfg = WechatClientConfig::new(base, "wxAPP", "secret-xyz");
        cfg.total_timeout = Duration::from_millis(total_ms);
        let client = Arc::new(
            WechatClient::new(cfg)
                .unwrap()
                .with_retry_backoff(Duration::from_millis(30)),
        );
        let cache = Arc::new(MemoryCodeCache::new(100));
        (
            CodeExchanger::new(client, cache.clone(), ExchangerConfig::default()),
            cache,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_redeems_make_one_call() {
        let srv = TestServer::start(Arc::new(|_n, _p| {
            Reply::Delayed(
                Duration::from_millis(200),
                Box::new(Reply::text(200, OK_BASE)),
            )
        }))
        .await;
        let (ex, _) = exchanger(&srv.base(), 3000);
        let ex = Arc::new(ex);
        let mut handles = Vec::new();
        for _ in 0..50 {
            let ex = ex.clone();
            handles.push(tokio::spawn(async move { ex.redeem("SAMECODE").await }));
        }
        let mut counts = HashMap::new();
        for h in handles {
            let r = h.await.unwrap();
            assert_eq!(r.outcome.as_ref().as_ref().unwrap().token.openid, "oBase");
            *counts.entry(r.obtained).or_insert(0) += 1;
        }
        assert_eq!(srv.calls(), 1);
        assert_eq!(counts.get(&Obtained::Fresh), Some(&1), "{counts:?}");
        assert_eq!(
            counts.get(&Obtained::Joined).copied().unwrap_or(0)
                + counts.get(&Obtained::Cached).copied().unwrap_or(0),
            49
        );
        assert_eq!(ex.inflight_len(), 0);

        // Later: from cache, still one call.
        let r = ex.redeem("SAMECODE").await;
        assert_eq!(r.obtained, Obtained::Cached);
        assert!(r.outcome.is_ok());
        assert_eq!(srv.calls(), 1);
        assert!(ex.cached("SAMECODE").await.unwrap().is_ok());
        assert!(ex.cached("OTHER").await.is_none());
        assert_eq!(srv.calls(), 1);

        // Another code is another call.
        assert_eq!(ex.redeem("OTHERCODE").await.obtained, Obtained::Fresh);
        assert_eq!(srv.calls(), 2);
    }

    #[tokio::test]
    async fn busy_then_success_is_two_calls_and_ok() {
        let srv = TestServer::start(Arc::new(|n, _p| {
            if n == 1 {
                Reply::text(200, r#"{"errcode":-1,"errmsg":"system error"}"#)
            } else {
                Reply::text(200, OK_BASE)
            }
        }))
        .await;
        let (ex, _) = exchanger(&srv.base(), 3000);
        let r = ex.redeem("C1").await;
        assert!(r.outcome.is_ok(), "{:?}", r.outcome);
        assert_eq!(r.obtained, Obtained::Fresh);
        assert_eq!(srv.calls(), 2);
    }

    #[tokio::test]
    async fn hanging_wechat_times_out_and_is_not_cached() {
        let srv = TestServer::start(Arc::new(|_n, _p| Reply::Hang)).await;
        let (ex, cache) = exchanger(&srv.base(), 300);
        let t0 = Instant::now();
        let r = ex.redeem("C1").await;
        assert!(
            t0.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            r.outcome.as_ref().as_ref().unwrap_err(),
            &ExchangeError::Timeout
        );
        assert!(cache.is_empty());
        assert_eq!(ex.inflight_len(), 0);
        // Not cached: a retry asks WeChat again.
        let r = ex.redeem("C1").await;
        assert_eq!(r.obtained, Obtained::Fresh);
        assert_eq!(srv.calls(), 2);
    }

    #[tokio::test]
    async fn used_code_cached_briefly_and_bad_codes_rejected() {
        let srv = TestServer::start(Arc::new(|_n, _p| {
            Reply::text(
                200,
                r#"{"errcode":40163,"errmsg":"code been used, hints: [ req_id: R1 ]"}"#,
            )
        }))
        .await;
        let (ex, _) = exchanger(&srv.base(), 3000);
        let r1 = ex.redeem("USED").await;
        assert_eq!(r1.obtained, Obtained::Fresh);
        let r2 = ex.redeem("USED").await;
        assert_eq!(r2.obtained, Obtained::Cached);
        assert_eq!(
            r2.outcome.as_ref().as_ref().unwrap_err().errcode(),
            Some(40163)
        );
        assert_eq!(srv.calls(), 1);

        for bad in ["", "has space", "x/y", &"a".repeat(200)] {
            let r = ex.redeem(bad).await;
            assert!(r.rejected_locally);
            assert_eq!(r.obtained, Obtained::Fresh);
            assert_eq!(
                r.outcome.as_ref().as_ref().unwrap_err().errcode(),
                Some(40029)
            );
            assert!(ex.cached(bad).await.is_none());
        }
        assert_eq!(srv.calls(), 1);
    }

    #[tokio::test]
    async fn caller_going_away_does_not_lose_the_answer() {
        let srv = TestServer::start(Arc::new(|_n, _p| {
            Reply::Delayed(
                Duration::from_millis(150),
                Box::new(Reply::text(200, OK_BASE)),
            )
        }))
        .await;
        let (ex, _) = exchanger(&srv.base(), 3000);
        let ex = Arc::new(ex);
        // The first caller gives up after 30 ms (e.g. the browser disconnected).
        let gave_up = tokio::time::timeout(Duration::from_millis(30), ex.redeem("C9")).await;
        assert!(gave_up.is_err());
        // The compat lookup joins the still running call.
        let joined = ex.cached("C9").await.expect("in flight");
        assert!(joined.is_ok());
        let r = ex.redeem("C9").await;
        assert_eq!(r.obtained, Obtained::Cached);
        assert_eq!(srv.calls(), 1);
    }

    #[tokio::test]
    async fn userinfo_fetched_for_userinfo_scope() {
        let srv = TestServer::start(Arc::new(|_n, p| {
            if p.starts_with("/sns/userinfo") {
                Reply::text(200, r#"{"openid":"oU","nickname":"N","headimgurl":"https://i/1","unionid":"uX"}"#)
            } else {
                Reply::text(200, r#"{"access_token":"AT","expires_in":7200,"refresh_token":"RT","openid":"oU","scope":"snsapi_userinfo"}"#)
            }
        }))
        .await;
        let (ex, _) = exchanger(&srv.base(), 3000);
        let r = ex.redeem("C2").await;
        let x = r.outcome.as_ref().as_ref().unwrap();
        assert_eq!(x.userinfo.as_ref().unwrap().nickname, "N");
        assert_eq!(x.unionid(), Some("uX"));
        assert_eq!(srv.calls(), 2);
    }

    fn ok(openid: &str) -> Arc<ExchangeOutcome> {
        Arc::new(Ok(Exchanged {
            token: TokenAnswer {
                access_token: "a".into(),
                expires_in: 1,
                refresh_token: "r".into(),
                openid: openid.into(),
                scope: "snsapi_base".into(),
                is_snapshotuser: false,
                unionid: None,
            },
            userinfo: None,
        }))
    }

    #[test]
    fn memory_cache_ttl_and_bounds() {
        let c = MemoryCodeCache::new(3);
        let t0 = Instant::now();
        let long = Duration::from_secs(300);
        c.put_at("a", ok("1"), long, t0);
        c.put_at("b", ok("2"), Duration::from_secs(1), t0);
        c.put_at("c", ok("3"), long, t0);
        assert!(c.get_at("b", t0).is_some());
        // TTL.
        assert!(c.get_at("b", t0 + Duration::from_secs(2)).is_none());
        assert_eq!(c.len(), 2);
        c.put_at("b", ok("2"), Duration::from_secs(1), t0);
        // Full: the expired one ("b") goes first, not the oldest ("a").
        let t1 = t0 + Duration::from_secs(5);
        c.put_at("d", ok("4"), long, t1);
        assert_eq!(c.len(), 3);
        assert!(c.get_at("a", t1).is_some());
        assert!(c.get_at("b", t1).is_none());
        // Full and nothing expired: the oldest ("a") goes.
        c.put_at("e", ok("5"), long, t1);
        assert_eq!(c.len(), 3);
        assert!(c.get_at("a", t1).is_none());
        for k in ["c", "d", "e"] {
            assert!(c.get_at(k, t1).is_some(), "{k}");
        }
        // Replacing a key does not evict others.
        c.put_at("e", ok("5b"), long, t1);
        assert_eq!(c.len(), 3);
        let e = c.get_at("e", t1).unwrap();
        assert_eq!(e.as_ref().as_ref().unwrap().token.openid, "5b");
        // Many inserts stay bounded (and the order queue too).
        for i in 0..1000 {
            c.put_at(&format!("k{i}"), ok("x"), long, t1);
        }
        assert_eq!(c.len(), 3);
        assert!(c.inner.lock().unwrap().order.len() <= 2 * 3 + 16);
        assert!(c.get_at("k999", t1).is_some());
    }

    #[test]
    fn ttl_policy() {
        let cfg = ExchangerConfig::default();
        assert_eq!(cache_ttl(&ok("o"), &cfg), Some(cfg.success_ttl));
        let e = |c: i64| -> ExchangeOutcome {
            Err(ExchangeError::WeChat {
                errcode: c,
                errmsg: String::new(),
                req_id: None,
            })
        };
        for c in [40029, 40163, 41008, 40125, 40013] {
            assert_eq!(cache_ttl(&e(c), &cfg), Some(cfg.failure_ttl), "{c}");
        }
        for c in [-1, 45011] {
            assert_eq!(cache_ttl(&e(c), &cfg), None, "{c}");
        }
        assert_eq!(cache_ttl(&Err(ExchangeError::Timeout), &cfg), None);
        assert_eq!(
            cache_ttl(&Err(ExchangeError::Busy), &cfg),
            None,
            "not called: unspent"
        );
        assert_eq!(cache_ttl(&Err(ExchangeError::HttpStatus(502)), &cfg), None);
        assert_eq!(
            cache_ttl(&Err(ExchangeError::Garbage("x".into())), &cfg),
            None
        );
    }
}
