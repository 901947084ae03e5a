//! The JS-SDK at the edge: `wx.config` signatures for the site's pages, over the account's two
//! credentials (the global access_token, from `cgi-bin/stable_token`, and the `jsapi_ticket`)
//! fetched by one party, this edge, and kept fresh in the background (WeChat's 中控 design).
//!
//! - [`sign`]: WeChat's rule, nothing more (`jsapi_ticket`, `noncestr`, `timestamp`, `url`
//!   sorted, raw values, SHA-1, lowercase hex).
//! - [`page_url`]: the URL a page sent (`location.href.split('#')[0]`, encodeURIComponent-ed),
//!   decoded once, cut at `#`, and only when it is on one of the site's own origins.
//! - [`Credentials`]: the token and the ticket. A request never waits for WeChat once they are
//!   held: the first signature fetches them (single-flight: one call whatever the concurrency),
//!   then a background task refreshes each ahead of its end. A ticket's lifetime counts from its
//!   first fetch (a re-fetch returns the same ticket with a fresh-looking `expires_in`). Errors
//!   by errcode: a token WeChat calls invalid is dropped only if it is still the one held
//!   (compare-and-swap), fetched once more and the call retried once; quota and configuration
//!   errors stop fetching for a while and say so once; any failure holds further calls off
//!   briefly, so an outage is one call per pause, not one per page.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::time::Instant;

use super::client::{Credential, ExchangeError, WechatClient};
use crate::ops::metrics::METRICS;

/// The signature of `wx.config` for `url` (WeChat's JS-SDK appendix 1).
pub fn sign(ticket: &str, noncestr: &str, timestamp: u64, url: &str) -> String {
    let mut h = Sha1::new();
    h.update(b"jsapi_ticket=");
    h.update(ticket.as_bytes());
    h.update(b"&noncestr=");
    h.update(noncestr.as_bytes());
    h.update(b"&timestamp=");
    h.update(timestamp.to_string().as_bytes());
    h.update(b"&url=");
    h.update(url.as_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(40);
    for b in h.finalize() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// Why a page's URL is not signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRefusal {
    Missing,
    NotHttp,
    NotUtf8,
    ForeignOrigin,
}

impl UrlRefusal {
    pub fn message(self) -> &'static str {
        match self {
            UrlRefusal::Missing => {
                "url is required: encodeURIComponent(location.href.split('#')[0])"
            }
            UrlRefusal::NotHttp => "url must be an absolute http:// or https:// URL",
            UrlRefusal::NotUtf8 => "url does not decode to UTF-8 text",
            UrlRefusal::ForeignOrigin => "url is not on this site's origin",
        }
    }
}

/// The URL to sign, from the raw (still percent-encoded) `url` query value a page sent:
/// decoded once (percent-decoding only: `encodeURIComponent` never writes `+`, so a `+` is a
/// `+`), cut at `#`, a host without a path given `/` (as `location.href` always has one), and
/// only when `allowed(host)` holds for its `host[:port]` (compared in lower case).
pub fn page_url(raw: Option<&str>, allowed: impl Fn(&str) -> bool) -> Result<String, UrlRefusal> {
    let raw = raw.filter(|r| !r.is_empty()).ok_or(UrlRefusal::Missing)?;
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| UrlRefusal::NotUtf8)?;
    let url = decoded.split('#').next().unwrap_or_default();
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(UrlRefusal::NotHttp);
    }
    let rest = ["https://", "http://"]
        .iter()
        .find_map(|s| {
            url.get(..s.len())
                .filter(|p| p.eq_ignore_ascii_case(s))
                .map(|_| &url[s.len()..])
        })
        .ok_or(UrlRefusal::NotHttp)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') || authority.contains('\\') {
        return Err(UrlRefusal::NotHttp);
    }
    if !allowed(&authority.to_ascii_lowercase()) {
        return Err(UrlRefusal::ForeignOrigin);
    }
    Ok(match rest[end..].starts_with('/') {
        true => url.to_string(),
        // `https://h5.example.com` or `https://h5.example.com?x=1`: the browser's href has `/`.
        false => format!("{}/{}", &url[..url.len() - rest.len() + end], &rest[end..]),
    })
}

/// Why no signature could be made now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// WeChat is slow, down, busy or answered garbage: try again shortly.
    Transient(String),
    /// WeChat refused the edge's credentials, address or quota: an operator must act.
    Refused { errcode: i64, message: String },
}

/// What kind of credential, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token,
    Ticket,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Token => "access_token",
            Kind::Ticket => "jsapi_ticket",
        }
    }
}

/// A credential as held: its value and when it ends (monotonic clock, from WeChat's relative
/// `expires_in`: no host clock is trusted).
#[derive(Clone)]
struct Held {
    value: Arc<str>,
    fetched: Instant,
    ends: Instant,
    /// When WeChat last handed it out (a re-fetch that returned it again).
    checked: Instant,
}

impl Held {
    fn new(c: Credential, now: Instant) -> Held {
        Held {
            value: c.value.into(),
            fetched: now,
            ends: now + Duration::from_secs(c.expires_in),
            checked: now,
        }
    }

    /// Usable for a signature now: a page signed with it has a moment left to call `wx.config`.
    fn usable(&self, now: Instant) -> bool {
        now + USABLE_MARGIN < self.ends
    }
}

/// A signature made within this of its credential's end might be checked after it.
const USABLE_MARGIN: Duration = Duration::from_secs(30);
/// The token is refreshed this long before its end: stable_token hands out the next token in
/// the last 5 minutes of the current one.
const TOKEN_AHEAD: Duration = Duration::from_secs(240);
/// The ticket is refreshed this long before its end; while WeChat keeps returning the same one,
/// again every [`RETRY_SAME_TICKET`].
const TICKET_AHEAD: Duration = Duration::from_secs(600);
const RETRY_SAME_TICKET: Duration = Duration::from_secs(60);
/// The ticket is asked for again this often even mid-life: the first fetch may have got one
/// that another party fetched long before (WeChat then says 7200 s all the same), and a new one
/// means the held one ended. 96 calls a day.
const TICKET_RECHECK: Duration = Duration::from_secs(900);
/// WeChat still hands out a ticket past the end counted for it: it is still valid; it is used
/// this much longer, and asked for again meanwhile.
const SAME_TICKET_GRACE: Duration = Duration::from_secs(90);
/// The refresher never loops faster than this.
const MIN_SLEEP: Duration = Duration::from_secs(5);
/// How often a replica looks for what the replica holding the store's lock fetched.
const SHARED_POLL: Duration = Duration::from_millis(25);

/// What the replicas share, with each credential's time left (`shared::RedisCredentials`).
pub struct Stored {
    pub token: Option<(String, Duration)>,
    pub ticket: Option<(String, Duration)>,
    /// Until the fleet asks WeChat for the ticket again.
    pub ticket_checked_left: Option<Duration>,
}

/// The replicas' common store of the credentials; `Err`: Redis trouble (the caller fetches in
/// this process).
#[async_trait::async_trait]
pub trait CredentialStore: Send + Sync {
    async fn load(&self) -> Result<Stored, ()>;
    /// Become the replica that fetches now (a lock that ends by itself).
    async fn claim(&self) -> Result<bool, ()>;
    /// How long to wait for another replica's fetch.
    fn wait_bound(&self) -> Duration;
    /// Store what this replica fetched (`None`: unchanged), and release the claim.
    async fn publish(
        &self,
        token: Option<(&str, Duration)>,
        ticket: Option<(&str, Duration)>,
        ticket_recheck: Duration,
    );
    async fn release(&self);
    /// Forget the token if it is still `failed` (compare-and-swap).
    async fn drop_token_if(&self, failed: &str);
}

/// How long to stop calling WeChat after a failure.
fn hold_off(e: &ExchangeError) -> Duration {
    match e.errcode() {
        // Daily quota: nothing will work for a long while (WeChat resets it at midnight, or an
        // admin clears it).
        Some(45009) => Duration::from_secs(600),
        // Per-minute limit.
        Some(45011) => Duration::from_secs(60),
        Some(c) if is_config_error(c) => Duration::from_secs(60),
        _ => Duration::from_secs(5),
    }
}

/// Errcodes no retry mends: wrong appid or secret, this address not whitelisted, the secret
/// frozen, the quota gone.
fn is_config_error(errcode: i64) -> bool {
    matches!(
        errcode,
        40001 | 40002 | 40013 | 40125 | 40164 | 40243 | 41002 | 41004 | 45009
    )
}

/// A token WeChat no longer takes (overwritten, expired, malformed).
fn is_stale_token(e: &ExchangeError) -> bool {
    matches!(e.errcode(), Some(40001 | 40014 | 42001))
}

#[derive(Default)]
struct State {
    token: Option<Held>,
    ticket: Option<Held>,
    /// No WeChat call before this (after a failure), and the failure to answer meanwhile.
    held_off: Option<(Instant, Unavailable)>,
    /// The last failure, for readiness.
    last_error: Option<String>,
    refresher: bool,
}

/// The account's access_token and jsapi_ticket, fetched by this edge only.
pub struct Credentials {
    client: Arc<WechatClient>,
    /// The replicas' store (`redis_url`); without it, this replica's own.
    store: Option<Arc<dyn CredentialStore>>,
    state: Mutex<State>,
    /// One fetch at a time: concurrent signatures wait for it instead of calling WeChat too.
    fetching: tokio::sync::Mutex<()>,
}

impl Credentials {
    pub fn new(
        client: Arc<WechatClient>,
        store: Option<Arc<dyn CredentialStore>>,
    ) -> Arc<Credentials> {
        let c = Arc::new(Credentials {
            client,
            store,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&c);
        crate::ops::metrics::refresh_on_scrape(move || {
            let Some(c) = weak.upgrade() else {
                return false;
            };
            for (name, age) in c.ages() {
                let age = age.map_or(-1, |a| a as i64);
                METRICS
                    .wechat_credential_age
                    .with_label_values(&[name])
                    .set(age);
            }
            true
        });
        c
    }

    pub fn appid(&self) -> &str {
        self.client.appid()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ticket to sign with: the held one, or (the first time, or after it ran out) a
    /// fresh one, fetched once however many ask at the same time.
    pub async fn ticket(self: &Arc<Self>) -> Result<Arc<str>, Unavailable> {
        self.held(Kind::Ticket).await.map(|(t, _)| t)
    }

    /// The access_token and its seconds left, for the backend's 中控 (the compat listener).
    pub async fn access_token(self: &Arc<Self>) -> Result<(Arc<str>, u64), Unavailable> {
        self.held(Kind::Token).await
    }

    /// The ticket and its seconds left, for the backend's 中控.
    pub async fn ticket_left(self: &Arc<Self>) -> Result<(Arc<str>, u64), Unavailable> {
        self.held(Kind::Ticket).await
    }

    /// Whether `token` is one this edge handed out and still holds.
    pub fn holds_token(&self, token: &str) -> bool {
        let st = self.state();
        st.token
            .as_ref()
            .is_some_and(|t| crate::session::ct_eq(t.value.as_bytes(), token.as_bytes()))
    }

    /// A caller got 40001/42001 with `failed`: drop it if it is still the held token
    /// (compare-and-swap: a token fetched meanwhile stays) and hand out the current one.
    pub async fn token_failed(
        self: &Arc<Self>,
        failed: &str,
    ) -> Result<(Arc<str>, u64), Unavailable> {
        {
            let _one = self.fetching.lock().await;
            self.drop_token_if(failed);
            if let Some(store) = &self.store {
                store.drop_token_if(failed).await;
            }
        }
        self.held(Kind::Token).await
    }

    /// The held `kind` with its seconds left, fetched (once, whoever else asks) when it is not.
    async fn held(self: &Arc<Self>, kind: Kind) -> Result<(Arc<str>, u64), Unavailable> {
        if let Some(t) = self.usable(kind, Instant::now()) {
            return Ok(t);
        }
        let _one = self.fetching.lock().await;
        // Whoever held the lock before may have fetched it.
        if let Some(t) = self.usable(kind, Instant::now()) {
            return Ok(t);
        }
        self.fetch(false, kind == Kind::Ticket).await?;
        self.start_refresher();
        self.usable(kind, Instant::now())
            .ok_or_else(|| Unavailable::Transient(format!("the {} ended as it came", kind.label())))
    }

    fn usable(&self, kind: Kind, now: Instant) -> Option<(Arc<str>, u64)> {
        let st = self.state();
        let held = match kind {
            Kind::Token => &st.token,
            Kind::Ticket => &st.ticket,
        };
        held.as_ref().filter(|t| t.usable(now)).map(|t| {
            (
                t.value.clone(),
                t.ends.saturating_duration_since(now).as_secs(),
            )
        })
    }

    /// Fetch what is missing or (`ahead`) due: the token first, then (when `ticket_too` or
    /// `ahead`) the ticket with it; with the replicas' store, what another replica fetched is
    /// taken instead, and only the replica holding the store's lock calls WeChat. The caller
    /// holds `fetching`.
    async fn fetch(&self, ahead: bool, ticket_too: bool) -> Result<(), Unavailable> {
        if let Some((until, why)) = self.state().held_off.clone() {
            if Instant::now() < until {
                return Err(why);
            }
        }
        if let Some(store) = self.store.clone() {
            if let Some(done) = self.fetch_shared(&*store, ahead, ticket_too).await {
                return done;
            }
            // Redis trouble: this replica fetches on its own, as a single replica would.
        }
        let (token_due, ticket_due) = self.due(Instant::now(), ahead, ticket_too);
        self.fetch_here(token_due, ticket_due).await
    }

    /// What is due now: missing or not usable, or (`ahead`) within its refresh window.
    fn due(&self, now: Instant, ahead: bool, ticket_too: bool) -> (bool, bool) {
        let st = self.state();
        let token_due = match &st.token {
            Some(t) if ahead => now + TOKEN_AHEAD >= t.ends,
            Some(t) => !t.usable(now),
            None => true,
        };
        let ticket_due = match &st.ticket {
            // In its last minutes WeChat may keep handing out the same one: asked again every
            // minute then, and every 15 minutes before (by whichever replica).
            Some(t) if ahead => {
                (now + TICKET_AHEAD >= t.ends && now >= t.checked + RETRY_SAME_TICKET)
                    || now >= t.checked + TICKET_RECHECK
            }
            Some(t) => !t.usable(now),
            None => true,
        };
        // The refresher keeps the ticket only once one was asked for.
        let ticket_wanted = ticket_too || (ahead && st.ticket.is_some());
        (token_due, ticket_wanted && ticket_due)
    }

    async fn fetch_here(&self, token_due: bool, ticket_due: bool) -> Result<(), Unavailable> {
        if token_due || (ticket_due && !self.token_usable(Instant::now())) {
            self.fetch_token().await?;
        }
        if ticket_due {
            self.fetch_ticket().await?;
        }
        Ok(())
    }

    /// [`Self::fetch`] through the replicas' store; `None` on Redis trouble.
    async fn fetch_shared(
        &self,
        store: &dyn CredentialStore,
        ahead: bool,
        ticket_too: bool,
    ) -> Option<Result<(), Unavailable>> {
        let started = Instant::now();
        loop {
            let stored = store.load().await.ok()?;
            let (stored_token, stored_ticket) = (
                stored.token.as_ref().map(|(v, _)| v.clone()),
                stored.ticket.as_ref().map(|(v, _)| v.clone()),
            );
            self.adopt(stored, Instant::now());
            let (token_due, ticket_due) = self.due(Instant::now(), ahead, ticket_too);
            if !token_due && !ticket_due {
                return Some(Ok(()));
            }
            if !store.claim().await.ok()? {
                // Another replica is refreshing: this one takes the result at its next turn.
                if ahead {
                    return Some(Ok(()));
                }
                // Another replica is fetching what this one lacks: wait for what it stores.
                if started.elapsed() >= store.wait_bound() {
                    return None;
                }
                tokio::time::sleep(SHARED_POLL).await;
                continue;
            }
            let done = self.fetch_here(token_due, ticket_due).await;
            let now = Instant::now();
            let (token, ticket) = {
                let st = self.state();
                (st.token.clone(), st.ticket.clone())
            };
            // What is new goes to the store; a ticket handed out again keeps its stored life.
            let new = |h: &Option<Held>, was: &Option<String>| {
                h.clone()
                    .filter(|h| was.as_deref() != Some(&*h.value))
                    .map(|h| (h.value.clone(), h.ends.saturating_duration_since(now)))
            };
            let token = new(&token, &stored_token);
            let ticket = new(&ticket, &stored_ticket);
            if done.is_ok() || token.is_some() {
                store
                    .publish(borrowed(&token), borrowed(&ticket), TICKET_RECHECK)
                    .await;
            } else {
                store.release().await;
            }
            return Some(done);
        }
    }

    /// Take what the store holds where it is newer than what this replica holds.
    fn adopt(&self, stored: Stored, now: Instant) {
        let mut st = self.state();
        let take = |held: &mut Option<Held>, from: Option<(String, Duration)>| {
            let Some((value, left)) = from else { return };
            // The store's TTLs are WeChat's `expires_in` (hours); anything longer is not ours.
            let ends = now + left.min(Duration::from_secs(7 * 86_400));
            match held {
                Some(h) if *h.value == *value => h.ends = h.ends.max(ends),
                Some(h) if h.ends >= ends => {}
                _ => {
                    *held = Some(Held {
                        value: value.into(),
                        fetched: now,
                        ends,
                        checked: now,
                    })
                }
            }
        };
        take(&mut st.token, stored.token);
        take(&mut st.ticket, stored.ticket);
        // The fleet asked WeChat for the ticket this long ago.
        if let (Some(t), Some(left)) = (st.ticket.as_mut(), stored.ticket_checked_left) {
            let left = left.min(TICKET_RECHECK);
            let checked = (now + left).checked_sub(TICKET_RECHECK).unwrap_or(now);
            t.checked = t.checked.max(checked);
        }
    }

    fn token_usable(&self, now: Instant) -> bool {
        self.state().token.as_ref().is_some_and(|t| t.usable(now))
    }

    async fn fetch_token(&self) -> Result<(), Unavailable> {
        let got = self.client.stable_token().await;
        let c = self.outcome(Kind::Token, got)?;
        self.state().token = Some(Held::new(c, Instant::now()));
        Ok(())
    }

    /// The ticket with the held token; a token WeChat calls stale is dropped (if it is still
    /// the one held), fetched again once, and the ticket asked for once more.
    async fn fetch_ticket(&self) -> Result<(), Unavailable> {
        let mut retried = false;
        loop {
            let token = match self.state().token.clone() {
                Some(t) => t.value,
                None => return Err(Unavailable::Transient("no access_token".into())),
            };
            let got = self.client.jsapi_ticket(&token).await;
            if let Err(e) = &got {
                if is_stale_token(e) && !retried {
                    count(Kind::Ticket, &e.errcode_label());
                    self.drop_token_if(&token);
                    if let Some(store) = &self.store {
                        store.drop_token_if(&token).await;
                    }
                    self.fetch_token().await?;
                    retried = true;
                    continue;
                }
            }
            let c = self.outcome(Kind::Ticket, got)?;
            let now = Instant::now();
            let mut st = self.state();
            let same = st.ticket.as_ref().filter(|t| *t.value == *c.value).cloned();
            st.ticket = Some(match same {
                // The same ticket again: WeChat's `expires_in` says 7200 whatever is left, so
                // its end stays the one counted from its first fetch.
                Some(t) if t.usable(now) => Held { checked: now, ..t },
                // Past that end and still handed out: still valid, for a while.
                Some(t) => Held {
                    ends: now + SAME_TICKET_GRACE,
                    checked: now,
                    ..t
                },
                None => Held::new(c, now),
            });
            return Ok(());
        }
    }

    /// Compare-and-swap: forget the token only if it is still `failed` (another fetch may
    /// already have replaced it).
    fn drop_token_if(&self, failed: &str) {
        let mut st = self.state();
        if st.token.as_ref().is_some_and(|t| &*t.value == failed) {
            st.token = None;
        }
    }

    /// Count a fetch; on failure, hold further calls off and say why (once per new reason).
    fn outcome(
        &self,
        kind: Kind,
        got: Result<Credential, ExchangeError>,
    ) -> Result<Credential, Unavailable> {
        let e = match got {
            Ok(c) => {
                count(kind, "ok");
                let mut st = self.state();
                st.held_off = None;
                st.last_error = None;
                return Ok(c);
            }
            Err(e) => e,
        };
        count(kind, &e.errcode_label());
        // A stale token on the ticket call, even after a fresh one: someone is replacing
        // tokens; not the edge's configuration.
        let stale_again = kind == Kind::Ticket && is_stale_token(&e);
        let why = match e.errcode() {
            Some(c) if is_config_error(c) && !stale_again => Unavailable::Refused {
                errcode: c,
                message: refusal_message(c, &e),
            },
            _ => Unavailable::Transient(e.to_string()),
        };
        let line = format!("WeChat {}: {e}", kind.label());
        let mut st = self.state();
        if st.last_error.as_deref() != Some(line.as_str()) {
            match &why {
                Unavailable::Refused { message, .. } => {
                    log::error!("jssdk: fetching the {}: {message}", kind.label())
                }
                Unavailable::Transient(_) => log::warn!("jssdk: {line}"),
            }
        }
        st.last_error = Some(line);
        // A busy gate is this edge's own bound, not WeChat's trouble: no pause for everyone.
        if e != ExchangeError::Busy {
            st.held_off = Some((Instant::now() + hold_off(&e), why.clone()));
        }
        Err(why)
    }

    /// Keep both fresh from now on, in the background (once).
    fn start_refresher(self: &Arc<Self>) {
        {
            let mut st = self.state();
            if st.refresher {
                return;
            }
            st.refresher = true;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(c) = me.upgrade() else { return };
                let wake = c.next_refresh(Instant::now());
                drop(c);
                tokio::time::sleep_until(wake).await;
                let Some(c) = me.upgrade() else { return };
                let _one = c.fetching.lock().await;
                // Failures are counted, logged and held off inside; the held ones keep serving.
                let _ = c.fetch(true, false).await;
            }
        });
    }

    /// When the next credential is due for its refresh (or a held-off fetch may be tried).
    fn next_refresh(&self, now: Instant) -> Instant {
        let st = self.state();
        let token = st.token.as_ref().map(|t| t.ends.checked_sub(TOKEN_AHEAD));
        let ticket = st.ticket.as_ref().map(|t| {
            let ahead = t.ends.checked_sub(TICKET_AHEAD);
            // Within its refresh window already: WeChat returned the same ticket, ask again
            // a while later.
            match ahead {
                Some(a) if a <= now => Some((now + RETRY_SAME_TICKET).min(t.ends)),
                a => a.map(|a| a.min(t.checked + TICKET_RECHECK)),
            }
        });
        let due = [token, ticket]
            .into_iter()
            .map(|d| d.flatten().unwrap_or(now))
            .min()
            .unwrap_or(now);
        let due = match &st.held_off {
            Some((until, _)) => due.max(*until),
            None => due,
        };
        due.max(now + MIN_SLEEP)
    }

    /// For readiness: what is held and how long it has left (never the values).
    pub fn report(&self) -> serde_json::Value {
        let now = Instant::now();
        let st = self.state();
        let held = |h: &Option<Held>| match h {
            Some(h) => serde_json::json!({
                "held": true,
                "age_seconds": now.duration_since(h.fetched).as_secs(),
                "seconds_left": h.ends.saturating_duration_since(now).as_secs(),
            }),
            None => serde_json::json!({ "held": false }),
        };
        let refused = matches!(&st.held_off, Some((_, Unavailable::Refused { .. })));
        serde_json::json!({
            "access_token": held(&st.token),
            "jsapi_ticket": held(&st.ticket),
            "last_error": st.last_error,
            "configuration_error": refused,
        })
    }

    /// Seconds since each held credential was fetched, for the metrics.
    fn ages(&self) -> [(&'static str, Option<u64>); 2] {
        let now = Instant::now();
        let st = self.state();
        let age = |h: &Option<Held>| h.as_ref().map(|h| now.duration_since(h.fetched).as_secs());
        [
            (Kind::Token.label(), age(&st.token)),
            (Kind::Ticket.label(), age(&st.ticket)),
        ]
    }
}

fn borrowed(x: &Option<(Arc<str>, Duration)>) -> Option<(&str, Duration)> {
    x.as_ref().map(|(v, d)| (&**v, *d))
}

fn count(kind: Kind, result: &str) {
    METRICS
        .wechat_credential_fetches
        .with_label_values(&[kind.label(), result])
        .inc();
}

/// What an operator needs to read in the log for a configuration refusal.
fn refusal_message(errcode: i64, e: &ExchangeError) -> String {
    let what = match errcode {
        40001 | 40125 => "the app secret is wrong (WX_SECRET)",
        40013 => "the appid is wrong (WX_APPID)",
        40164 => "this edge's address is not in the account's API IP whitelist (mp.weixin.qq.com: 开发 → 基本配置 → IP白名单); WeChat names the address it saw",
        40243 => "the app secret is frozen: an admin must unfreeze or reset it",
        45009 => "the account's daily quota for this call is used up (it resets at midnight; an admin can clear it)",
        _ => "WeChat refused the edge's request",
    };
    format!("{what} ({e}); signatures are refused until it is fixed, the site keeps serving")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_official_test_vector() {
        let ticket = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg";
        assert_eq!(
            sign(
                ticket,
                "Wm3WZYTPz0wzccnW",
                1414587457,
                "http://mp.weixin.qq.com"
            ),
            "f4d90daf4b3bca3078ab155816175ba34c443a7b"
        );
    }

    fn ours(host: &str) -> bool {
        host == "h5.example.com" || host == "h5.example.com:8443"
    }

    #[test]
    fn the_url_is_the_pages_own_decoded_once_and_cut_at_the_fragment() {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        for (sent, signed) in [
            // A query with its own encoded parts: decoded once only.
            (
                "https://h5.example.com/pages/a?x=1&y=%E4%B8%AD&code=C1&state=S",
                "https://h5.example.com/pages/a?x=1&y=%E4%B8%AD&code=C1&state=S",
            ),
            // Chinese characters as the page sent them (already decoded in its href).
            (
                "https://h5.example.com/活动?名=值",
                "https://h5.example.com/活动?名=值",
            ),
            // `#` and what follows is not signed (hash-mode routers).
            (
                "https://h5.example.com/#/pages/index",
                "https://h5.example.com/",
            ),
            (
                "https://h5.example.com/p?a=1#x?b=2",
                "https://h5.example.com/p?a=1",
            ),
            // A host without a path: the browser's href has `/`.
            ("https://h5.example.com", "https://h5.example.com/"),
            (
                "https://h5.example.com?from=share",
                "https://h5.example.com/?from=share",
            ),
            // A port, the host's case, a `+` that is a `+`.
            (
                "https://H5.Example.com:8443/a+b",
                "https://H5.Example.com:8443/a+b",
            ),
        ] {
            assert_eq!(
                page_url(Some(&enc(sent)), ours).as_deref(),
                Ok(signed),
                "{sent}"
            );
        }
        // Sent without encodeURIComponent: still decoded once (nothing to decode).
        assert_eq!(
            page_url(Some("https://h5.example.com/p"), ours).as_deref(),
            Ok("https://h5.example.com/p")
        );
    }

    #[test]
    fn urls_elsewhere_or_not_urls_are_refused() {
        for (sent, why) in [
            ("", UrlRefusal::Missing),
            ("https%3A%2F%2Fevil.example%2F", UrlRefusal::ForeignOrigin),
            (
                "https://h5.example.com.evil.example/",
                UrlRefusal::ForeignOrigin,
            ),
            (
                "https://evil.example/https://h5.example.com/",
                UrlRefusal::ForeignOrigin,
            ),
            ("https://h5.example.com@evil.example/", UrlRefusal::NotHttp),
            ("javascript:alert(1)//h5.example.com/", UrlRefusal::NotHttp),
            ("//h5.example.com/", UrlRefusal::NotHttp),
            ("https:///p", UrlRefusal::NotHttp),
            ("https://h5.example.com/a%0d%0ab", UrlRefusal::NotHttp),
            ("https://h5.example.com/%ff", UrlRefusal::NotUtf8),
        ] {
            assert_eq!(page_url(Some(sent), ours), Err(why), "{sent}");
        }
        assert_eq!(page_url(None, ours), Err(UrlRefusal::Missing));
    }

    #[test]
    fn refresh_times_keep_clear_of_tight_loops() {
        // Not a network test: the schedule alone.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = WechatClient::new(super::super::WechatClientConfig {
                api_base: "http://127.0.0.1:9".into(),
                appid: "wxa".into(),
                secret: "s3cret-value".into(),
                connect_timeout: Duration::from_millis(100),
                total_timeout: Duration::from_millis(100),
                in_flight: 1,
                queue: 1,
                queue_wait: Duration::from_millis(10),
            })
            .unwrap();
            let c = Credentials::new(Arc::new(client), None);
            let now = Instant::now();
            // Nothing held: soon, but not at once.
            assert_eq!(c.next_refresh(now), now + MIN_SLEEP);
            let held = |secs| {
                Held::new(
                    Credential {
                        value: "v".into(),
                        expires_in: secs,
                    },
                    now,
                )
            };
            {
                let mut st = c.state();
                st.token = Some(held(7200));
                st.ticket = Some(held(7200));
            }
            // The ticket's mid-life check comes first, then its end's window, then the token's.
            let two_hours = Duration::from_secs(7200);
            assert_eq!(c.next_refresh(now), now + TICKET_RECHECK);
            c.state().ticket.as_mut().unwrap().checked = now + two_hours;
            assert_eq!(c.next_refresh(now), now + two_hours - TICKET_AHEAD);
            c.state().ticket = Some(Held {
                ends: now + 2 * two_hours,
                checked: now + two_hours,
                ..held(7200)
            });
            assert_eq!(c.next_refresh(now), now + two_hours - TOKEN_AHEAD);
            // A ticket inside its window (WeChat gave the same one back): a minute later.
            c.state().ticket = Some(held(300));
            assert_eq!(c.next_refresh(now), now + RETRY_SAME_TICKET);
        });
    }
}
