//! WeChat login at the edge: the callback interception on page loads, the `/_wxedge/*` login
//! endpoints, the sandbox, and which identity goes upstream. Its answers are values (a page,
//! a redirect, JSON, `Set-Cookie` lines) that the edge writes; it needs no HTTP session type.
//! The building blocks live in `session` (cookies) and `wechat` (the provider).

pub mod compat;
pub mod jssdk;
pub mod pages;
mod relay;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::config::{Config, IdentityHeaderNames, WechatSettings};
use crate::ops::metrics::METRICS;
use crate::ops::RouteClass;
use crate::proxy::headers::canonical;
use crate::proxy::upstream::ForwardedIdentity;
use crate::reply::{json_error, Reply};
use crate::session::{
    cookies, looks_like_login_state, now_unix, safe_return_path, Identity, Session, SessionCodec,
    SessionKeys,
};
use crate::shared::{Redis, RedisCodeCache, Revocations};
use crate::wechat::{
    authorize_url, CodeExchanger, ExchangeError, ExchangerConfig, MemoryCodeCache, Obtained,
    Sandbox, SandboxConfig, WechatClient, WechatClientConfig,
};

/// Marks a callback that already failed once, so a failing login cannot loop (1 minute).
const RETRY_MARKER: &str = "wxedge_retry";

/// What the login layer decided for a request.
pub enum AuthAction {
    /// It answers the request itself.
    Answer(Reply),
    /// Go on; this is who the backend is told is calling.
    Continue(ForwardedIdentity),
}

/// The login's answers: JSON, pages and redirects of its own route class.
fn json_reply(status: u16, body: Bytes) -> Reply {
    Reply::json(RouteClass::Auth, status, body)
}

/// The label of [`ExchangeError::Busy`].
const BUSY: &str = "busy";

fn page_reply(status: u16, html: String) -> Reply {
    Reply::page(RouteClass::Auth, status, html)
}

fn redirect_reply(location: String) -> Reply {
    Reply::redirect(RouteClass::Auth, &location)
}

/// The parts of a request the login looks at.
#[derive(Debug, Default)]
pub struct AuthRequest<'a> {
    pub method: &'a str,
    /// Normalised.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Every `Cookie` header's value.
    pub cookies: Vec<&'a [u8]>,
    pub host: Option<&'a str>,
    /// The browser reached the site over HTTPS: an HTTPS listener, or a trusted load balancer
    /// said so in `X-Forwarded-Proto`.
    pub https: bool,
    /// The request's header fields, for the few the login reads on some requests only
    /// (`Accept` on a callback page, `Referer` for a 401's way back).
    pub fields: crate::request::Fields<'a>,
    pub request_id: &'a str,
}

/// The decision, and what the answer (whichever writes it) must carry.
pub struct AuthOutcome {
    pub action: AuthAction,
    /// `Set-Cookie` values for the answer (session, login nonce, retry marker).
    pub set_cookies: Vec<HeaderValue>,
}

/// The error page for a login that could not finish, with the status that says why:
/// 401 for a spent or unknown code, 500 for the site's own WeChat settings, 502 for WeChat trouble.
fn login_failed_page(label: &str, retry_href: &str, request_id: &str) -> Reply {
    let status = match label {
        "40029" | "40163" | "41008" => 401,
        "40125" | "40013" | "40002" => 500,
        _ => 502,
    };
    page_reply(status, pages::error_page(label, retry_href, request_id))
}

/// "Busy, retry" (503): WeChat was not called (too many calls in flight, `limits.wechat_*`), so
/// the same request shortly after works; nothing it would have spent is spent (the cookies it
/// would have cleared, the login's or the relay's, stay).
fn busy_reply(req: &AuthRequest, out: &mut SetCookies) -> Reply {
    out.values.clear();
    let again = match req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.to_string(),
    };
    page_reply(503, pages::busy_page("busy", &again, req.request_id, 1))
        .with(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

/// The resolved WeChat side: real WeChat, a stand-in, or the built-in sandbox.
struct Provider {
    appid: String,
    secret: String,
    scope: String,
    /// Base of the authorize URL the browser is sent to (may be a relative path for the sandbox).
    open_base: String,
    api_base: String,
}

/// The login at the edge, when it is on.
struct Login {
    provider: Provider,
    codec: SessionCodec,
    exchanger: Arc<CodeExchanger>,
    /// Revoked sessions, with `redis_url` (without it a session is valid until it expires).
    revocations: Option<Arc<Revocations>>,
    /// `host:port` of the shared Redis, for the start-up log.
    redis_addr: Option<String>,
    sandbox: Option<Sandbox>,
    header_names: Vec<(HeaderName, Field)>,
    callback_paths: Vec<String>,
    frontend_states: Vec<String>,
    require_session: Vec<String>,
    public_url: String,
    secure: bool,
    relay: relay::Relay,
    /// `wx.config` signatures (`wechat.jssdk`).
    jssdk: Option<jssdk::JsSdkEndpoint>,
}

/// What each identity header carries, in the order of `IdentityHeaderNames::all`.
#[derive(Clone, Copy)]
enum Field {
    OpenId,
    UnionId,
    Scope,
    Snapshot,
    Nickname,
    Avatar,
}

impl Field {
    const ALL: [Field; 6] = [
        Field::OpenId,
        Field::UnionId,
        Field::Scope,
        Field::Snapshot,
        Field::Nickname,
        Field::Avatar,
    ];
}

/// `name` from a query string (`application/x-www-form-urlencoded`), decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The path and query without the OAuth callback's `code` and `state`.
fn without_code(path: &str, query: Option<&str>) -> String {
    let rest: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| {
            let k = kv.split('=').next().unwrap_or("");
            !kv.is_empty() && k != "code" && k != "state"
        })
        .collect();
    if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    }
}

impl Provider {
    /// The app's credentials and WeChat's (or the sandbox's) addresses; and whether the
    /// sandbox is on.
    fn from_config(config: &Config) -> Result<(Provider, bool), String> {
        let w = &config.settings.wechat;
        let sandbox_on = w.sandbox.unwrap_or(w.appid.is_empty());
        let (appid, secret) = match (w.appid.is_empty(), sandbox_on) {
            (true, true) => (
                "wxsandbox0000001".to_string(),
                crate::session::random_hex(16),
            ),
            (true, false) => {
                return Err("wechat.appid (WX_APPID) is empty and the sandbox is off: set WX_APPID and WX_SECRET, or WXEDGE_SANDBOX=true to try it, or WXEDGE_WECHAT_LOGIN=false for no login at the edge".into())
            }
            (false, _) if w.secret.is_empty() => {
                return Err(
                    "wechat.secret (WX_SECRET or WX_SECRET_FILE) is required with WX_APPID".into(),
                )
            }
            (false, _) => (w.appid.clone(), w.secret.clone()),
        };
        let sandbox_base = format!("http://{}/_wxedge/sandbox", config.loopback_addr());
        let api_base = match (w.api_base.is_empty(), sandbox_on) {
            (false, _) => w.api_base.clone(),
            (true, true) => sandbox_base,
            (true, false) => "https://api.weixin.qq.com".into(),
        };
        let open_base = match (w.open_base.is_empty(), sandbox_on) {
            (false, _) => w.open_base.clone(),
            // Relative: the browser stays on this origin, whatever name it used.
            (true, true) => "/_wxedge/sandbox".into(),
            (true, false) => "https://open.weixin.qq.com".into(),
        };
        let provider = Provider {
            appid,
            secret,
            scope: w.scope.clone(),
            open_base,
            api_base,
        };
        Ok((provider, sandbox_on))
    }
}

/// The session keys (random without `session.keys`, which shared state needs) and the codec.
fn session_codec(config: &Config) -> Result<SessionCodec, String> {
    let s = &config.settings.session;
    if !config.settings.redis_url.is_empty() && s.keys.is_empty() {
        return Err("redis_url (WXEDGE_REDIS_URL) needs session.keys (WXEDGE_SESSION_KEY): replicas must share the key that seals sessions and the shared code cache".into());
    }
    let keys = if s.keys.is_empty() {
        log::warn!(
            "session: no WXEDGE_SESSION_KEY: a random key is used, so sessions end with this process and are not shared between replicas"
        );
        SessionKeys::random()
    } else {
        SessionKeys::from_secrets(&s.keys).map_err(|e| format!("session.keys: {e}"))?
    };
    Ok(SessionCodec::new(
        keys,
        s.cookie_name.clone(),
        Duration::from_secs(s.lifetime_seconds),
        s.cookie_secure,
    ))
}

/// The WeChat API client (the code exchange and the JS-SDK's credentials share its bound on
/// calls in flight).
fn wechat_client(
    w: &WechatSettings,
    limits: &crate::config::LimitSettings,
    provider: &Provider,
) -> Result<Arc<WechatClient>, String> {
    let client = WechatClient::new(WechatClientConfig {
        api_base: provider.api_base.clone(),
        appid: provider.appid.clone(),
        secret: provider.secret.clone(),
        connect_timeout: Duration::from_millis(w.connect_timeout_ms),
        total_timeout: Duration::from_millis(w.timeout_ms),
        in_flight: limits.wechat_in_flight,
        queue: limits.wechat_queue,
        queue_wait: Duration::from_millis(limits.wechat_queue_ms),
    })
    .map_err(|e| format!("wechat: {e}"))?;
    Ok(Arc::new(client))
}

/// What the replicas share through Redis (`redis_url`); without it, this replica's own.
struct SharedState {
    /// The shared Redis (`redis_url`).
    redis: Option<Arc<Redis>>,
    revocations: Option<Arc<Revocations>>,
    /// `host:port` of the shared Redis, for the start-up log.
    redis_addr: Option<String>,
    spent_tickets: Arc<dyn crate::session::SpentTickets>,
}

impl SharedState {
    /// With `redis_url`: the code cache across replicas (added to `exchanger`), revocations and
    /// spent relay tickets in Redis.
    fn from_config(
        config: &Config,
        codec: &SessionCodec,
        mut exchanger: CodeExchanger,
    ) -> Result<(CodeExchanger, SharedState), String> {
        let w = &config.settings.wechat;
        let s = &config.settings.session;
        let mut shared = SharedState {
            redis: None,
            revocations: None,
            redis_addr: None,
            spent_tickets: Arc::new(crate::session::MemorySpentTickets::default()),
        };
        if !config.settings.redis_url.is_empty() {
            let redis = Redis::new(
                &config.settings.redis_url,
                Duration::from_millis(config.settings.redis_timeout_ms),
            )
            .map(Arc::new)
            .map_err(|e| format!("redis_url: {e}"))?;
            // A redemption is one exchange and one userinfo call, each bounded by timeout_ms.
            let lock_ttl = Duration::from_millis(2 * w.timeout_ms + 1000);
            let cache = RedisCodeCache::new(redis.clone(), codec.keys().clone(), lock_ttl);
            exchanger = exchanger.with_shared(Arc::new(cache));
            shared.redis_addr = Some(redis.addr().to_string());
            shared.spent_tickets = Arc::new(crate::shared::RedisSpentTickets::new(redis.clone()));
            shared.revocations = Some(Arc::new(Revocations::new(
                redis.clone(),
                Duration::from_secs(s.lifetime_seconds),
            )));
            shared.redis = Some(redis);
        }
        Ok((exchanger, shared))
    }
}

/// The configured identity header names, each with the field it carries.
fn identity_header_names(names: &IdentityHeaderNames) -> Result<Vec<(HeaderName, Field)>, String> {
    names
        .all()
        .into_iter()
        .zip(Field::ALL)
        .map(|(name, f)| {
            HeaderName::from_bytes(name.as_bytes())
                .map(|h| (h, f))
                .map_err(|e| format!("{name}: {e}"))
        })
        .collect()
}

impl Login {
    fn from_config(config: &Config) -> Result<Login, String> {
        let w = &config.settings.wechat;
        let s = &config.settings.session;
        let (provider, sandbox_on) = Provider::from_config(config)?;
        let codec = session_codec(config)?;
        let client = wechat_client(w, &config.settings.limits, &provider)?;
        let exchanger = CodeExchanger::new(
            client.clone(),
            Arc::new(MemoryCodeCache::default()),
            ExchangerConfig::default(),
        );
        let (exchanger, shared) = SharedState::from_config(config, &codec, exchanger)?;
        let jssdk = w.jssdk.then(|| {
            let public = jssdk::origin_host(&w.public_url);
            let origins = w.jssdk_origins.iter().filter_map(|o| jssdk::origin_host(o));
            // Both credentials fetched by one replica for the fleet, with `redis_url`.
            let store = shared.redis.clone().map(|redis| {
                let lock_ttl = Duration::from_millis(2 * w.timeout_ms + 1000);
                let keys = codec.keys().clone();
                let store =
                    crate::shared::RedisCredentials::new(redis, keys, &provider.appid, lock_ttl);
                Arc::new(store) as Arc<dyn crate::wechat::jssdk::CredentialStore>
            });
            let credentials = crate::wechat::jssdk::Credentials::new(client.clone(), store);
            jssdk::JsSdkEndpoint::new(credentials, public.into_iter().chain(origins).collect())
        });
        let sandbox = sandbox_on.then(|| {
            Sandbox::new(SandboxConfig {
                appid: provider.appid.clone(),
                secret: provider.secret.clone(),
                latency: Duration::from_millis(w.sandbox_latency_ms),
                allowed_redirect_hosts: w.sandbox_authorized_domains.clone(),
                ..SandboxConfig::default()
            })
        });
        let header_names = identity_header_names(&s.identity_headers)?;
        Ok(Login {
            provider,
            codec,
            exchanger: Arc::new(exchanger),
            revocations: shared.revocations,
            redis_addr: shared.redis_addr,
            sandbox,
            header_names,
            callback_paths: w.callback_paths.clone(),
            frontend_states: w.frontend_states.clone(),
            require_session: s.require_session.clone(),
            public_url: w.public_url.clone(),
            secure: s.cookie_secure,
            relay: relay::Relay::from_config(w, &s.keys, shared.spent_tickets)?,
            jssdk,
        })
    }

    /// Start-up log lines.
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "wechat: appid {} via {} (scope {}){}",
            self.provider.appid,
            self.provider.api_base,
            self.provider.scope,
            if self.sandbox.is_some() {
                ", sandbox WeChat at /_wxedge/sandbox/"
            } else {
                ""
            }
        )];
        lines.push(format!(
            "wechat: callbacks intercepted on {}; frontend states accepted: {}",
            if self.callback_paths.is_empty() {
                "any SPA page".to_string()
            } else {
                self.callback_paths.join(", ")
            },
            if self.frontend_states.is_empty() {
                "any".to_string()
            } else {
                self.frontend_states.join(", ")
            }
        ));
        lines.push(match &self.redis_addr {
            Some(addr) => format!(
                "shared: Redis at {addr} (code cache across replicas, session revocation)"
            ),
            None => "shared: none (no redis_url): codes are cached per replica, logout clears only the browser's cookie".into(),
        });
        lines.extend(self.relay.describe());
        lines
    }

    /// The session the request's cookies carry, unless it was revoked (on any replica).
    async fn open_session(&self, cookies: &[&[u8]], now: u64) -> Option<Session> {
        let s = self.codec.open_from_cookie_header(cookies, now)?;
        match &self.revocations {
            Some(r) if r.is_revoked(&s).await => None,
            _ => Some(s),
        }
    }

    fn exchanger(&self) -> Arc<CodeExchanger> {
        self.exchanger.clone()
    }

    fn credentials(&self) -> (&str, &str) {
        (&self.provider.appid, &self.provider.secret)
    }

    fn marker_cookie(&self, on: bool) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        if on {
            format!("{RETRY_MARKER}=1; Max-Age=60; Path=/; HttpOnly; SameSite=Lax{secure}")
        } else {
            format!("{RETRY_MARKER}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax{secure}")
        }
    }

    /// The site's origin as the browser sees it, for `redirect_uri`.
    fn origin(&self, req: &AuthRequest) -> String {
        if !self.public_url.is_empty() {
            return self.public_url.clone();
        }
        let host = req
            .host
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })
            .unwrap_or("localhost");
        let proto = if req.https { "https" } else { "http" };
        format!("{proto}://{host}")
    }

    fn identity_headers(&self, s: &Session) -> Vec<(HeaderName, HeaderValue)> {
        let id = &s.identity;
        // Header values must be ASCII: nicknames and avatars are percent-encoded UTF-8.
        fn encoded(v: &Option<String>) -> Option<Cow<'_, str>> {
            v.as_deref()
                .map(|v| Cow::from(utf8_percent_encode(v, NON_ALPHANUMERIC)))
        }
        let mut out = Vec::with_capacity(self.header_names.len());
        for (name, field) in &self.header_names {
            let value = match field {
                Field::OpenId => Some(Cow::from(id.openid.as_str())),
                Field::UnionId => id.unionid.as_deref().map(Cow::from),
                Field::Scope => (!id.scope.is_empty()).then(|| Cow::from(id.scope.as_str())),
                Field::Snapshot => id.snapshot.then_some(Cow::from("1")),
                Field::Nickname => encoded(&id.nickname),
                Field::Avatar => encoded(&id.avatar),
            };
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                out.push((name.clone(), v));
            }
        }
        out
    }

    /// A page load that may carry an OAuth callback (`req` is not proxied).
    fn is_callback_page(&self, req: &AuthRequest) -> bool {
        let path = req.path;
        if req.method != "GET" || path.starts_with(crate::route::EDGE_PREFIX) {
            return false;
        }
        if !self.callback_paths.is_empty() {
            return self.callback_paths.iter().any(|p| p == path);
        }
        let last = path.rsplit('/').next().unwrap_or("");
        let page = !last.contains('.') || last.ends_with(".html");
        let html = req
            .fields
            .text("accept")
            .is_none_or(|a| a.contains("text/html") || a.contains("*/*"));
        page && html
    }

    /// Exchange `code`; the identity on success, the error label otherwise.
    async fn redeem(&self, code: &str) -> Result<Identity, (String, Option<String>)> {
        let result = self.exchanger.redeem(code).await;
        // A code refused before any call (malformed) is not a WeChat exchange.
        let called_wechat = result.obtained == Obtained::Fresh && !result.rejected_locally;
        match result.obtained {
            Obtained::Joined => METRICS.singleflight_joins.inc(),
            Obtained::Cached => METRICS.code_cache_hits.inc(),
            Obtained::Fresh => {}
        }
        match result.outcome.as_ref() {
            Ok(ex) => {
                if called_wechat {
                    METRICS
                        .wechat_exchanges
                        .with_label_values(&["ok", "0"])
                        .inc();
                }
                let t = &ex.token;
                let info = ex.userinfo.as_ref();
                Ok(Identity {
                    openid: t.openid.clone(),
                    unionid: t
                        .unionid
                        .clone()
                        .or_else(|| info.and_then(|i| i.unionid.clone())),
                    scope: t.scope.clone(),
                    snapshot: t.is_snapshotuser,
                    nickname: info.map(|i| i.nickname.clone()),
                    avatar: info.map(|i| i.headimgurl.clone()),
                })
            }
            Err(e) => {
                let label = e.errcode_label();
                // Not called at all when the calls in flight were at their bound.
                if called_wechat && *e != ExchangeError::Busy {
                    METRICS
                        .wechat_exchanges
                        .with_label_values(&["error", &label])
                        .inc();
                }
                let req_id = match e {
                    ExchangeError::WeChat { req_id, .. } => req_id.clone(),
                    _ => None,
                };
                Err((label, req_id))
            }
        }
    }

    /// Runs before static files and the proxy.
    async fn decide(
        &self,
        req: &AuthRequest<'_>,
        proxied: bool,
        out: &mut SetCookies,
    ) -> AuthAction {
        // Most requests are assets: no session to open, no code to redeem, no cookie to rewrite.
        let maybe_callback = req.query.is_some_and(|q| q.contains("code="));
        let edge_path = req.path.strip_prefix(crate::route::EDGE_PREFIX);
        if !proxied && !maybe_callback && edge_path.is_none() {
            return AuthAction::Continue(ForwardedIdentity::default());
        }
        let now = now_unix();
        if let Some(rest) = edge_path {
            if let Some(reply) = self.endpoint(req, rest, now, out).await {
                return AuthAction::Answer(reply);
            }
        }

        let mut current = self.open_session(&req.cookies, now).await;
        if !proxied && self.is_callback_page(req) {
            if let Some(reply) = self.intercept_callback(req, &mut current, now, out).await {
                return AuthAction::Answer(reply);
            }
        }
        if proxied && current.is_none() && self.requires_session(req.path) {
            let body = self.unauthorized_body(req, now, out);
            return AuthAction::Answer(Reply::json(RouteClass::Proxy, 401, body));
        }
        let (headers, upstream_cookie) =
            self.upstream_view(current.as_ref(), &req.cookies, proxied);
        AuthAction::Continue(ForwardedIdentity {
            authenticated: current.is_some(),
            headers,
            upstream_cookie,
        })
    }

    /// A page load with `?code=&state=`: redeem the code and issue a session (`current`), or
    /// the answer for a login that failed.
    async fn intercept_callback(
        &self,
        req: &AuthRequest<'_>,
        current: &mut Option<Session>,
        now: u64,
        out: &mut SetCookies,
    ) -> Option<Reply> {
        let (Some(code), Some(state)) = (
            query_param(req.query, "code"),
            query_param(req.query, "state"),
        ) else {
            return None;
        };
        let state_ok = !looks_like_login_state(&state)
            && (self.frontend_states.is_empty() || self.frontend_states.contains(&state));
        if !state_ok {
            log::info!(
                "callback on {} with a state outside wechat.frontend_states: not intercepted",
                req.path
            );
            return None;
        }
        if code.is_empty() {
            return None;
        }
        match self.redeem(&code).await {
            Ok(identity) => {
                let (s, set) = self.codec.issue(&identity, now);
                out.push(set);
                if cookies::has(&req.cookies, RETRY_MARKER) {
                    out.push(self.marker_cookie(false));
                }
                *current = Some(s);
                None
            }
            Err((label, req_id)) => {
                log::warn!(
                    "wechat code exchange failed on {}: errcode {label}{}",
                    req.path,
                    req_id.map(|r| format!(" (req_id {r})")).unwrap_or_default()
                );
                // A valid session already: the page is all the user needs.
                current
                    .is_none()
                    .then(|| self.callback_failed(req, &label, out))
            }
        }
    }

    /// The identity headers for `current`, and the `Cookie` header the backend gets (only
    /// for proxied requests; `Some(None)` = drop it) with the edge's own cookies removed.
    fn upstream_view(
        &self,
        current: Option<&Session>,
        cookies: &[&[u8]],
        proxied: bool,
    ) -> (Vec<(HeaderName, HeaderValue)>, Option<Option<String>>) {
        let identity_headers = current
            .map(|s| self.identity_headers(s))
            .unwrap_or_default();
        // Also keep the edge's retry marker to itself.
        let upstream_cookie = (!cookies.is_empty() && proxied)
            .then(|| self.codec.strip_cookie(cookies, &[RETRY_MARKER]));
        (identity_headers, upstream_cookie)
    }

    /// A callback whose code could not be exchanged, for a browser without a session:
    /// restart the page's own login once (the page reloads without the spent code and asks
    /// WeChat again), then show an error page instead of looping.
    fn callback_failed(&self, req: &AuthRequest, label: &str, out: &mut SetCookies) -> Reply {
        if label == BUSY {
            return busy_reply(req, out);
        }
        let clean = without_code(req.path, req.query);
        let config_error = matches!(label, "40125" | "40013" | "40002");
        if !config_error && !cookies::has(&req.cookies, RETRY_MARKER) {
            out.push(self.marker_cookie(true));
            return redirect_reply(clean);
        }
        login_failed_page(label, &clean, req.request_id)
    }

    fn authorize_for(
        &self,
        req: &AuthRequest,
        return_to: &str,
        now: u64,
        out: &mut SetCookies,
    ) -> String {
        let (state, nonce_cookie) = self.codec.new_login(return_to, now);
        out.push(nonce_cookie);
        let origin = self.origin(req);
        if let Some(url) = self.relay_authorize_url(&origin, &state) {
            return url;
        }
        let redirect_uri = format!("{origin}/_wxedge/callback");
        authorize_url(
            &self.provider.open_base,
            &self.provider.appid,
            &redirect_uri,
            &self.provider.scope,
            &state,
        )
    }

    /// `/_wxedge/*`; `None` when the path is not one of ours (health is handled by the edge).
    async fn endpoint(
        &self,
        req: &AuthRequest<'_>,
        rest: &str,
        now: u64,
        out: &mut SetCookies,
    ) -> Option<Reply> {
        if let Some(sub) = rest.strip_prefix("sandbox") {
            let sandbox = self.sandbox.as_ref()?;
            let target = match req.query {
                Some(q) => format!("{sub}?{q}"),
                None => sub.to_string(),
            };
            let r = sandbox.handle_delayed(req.method, &target, now).await;
            let mut reply = Reply::new(
                RouteClass::Sandbox,
                r.status,
                r.content_type,
                Bytes::from(r.body),
            );
            reply.headers.extend(r.headers.iter().filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            }));
            return Some(reply);
        }
        if let Some(name) = rest.strip_prefix("relay/") {
            return self.relay_endpoint(req, name, now, out).await;
        }
        if rest == "jssdk/config" {
            return Some(self.jssdk.as_ref()?.config(req).await);
        }
        Some(match rest {
            "session" => {
                let s = self.open_session(&req.cookies, now).await;
                let body = match &s {
                    Some(s) => serde_json::json!({
                        "authenticated": true,
                        "openid": s.identity.openid,
                        "unionid": s.identity.unionid,
                        "scope": s.identity.scope,
                        "snapshot": s.identity.snapshot,
                        "expires_at": s.expires_at,
                    }),
                    None => serde_json::json!({
                        "authenticated": false, "openid": null, "unionid": null, "snapshot": false, "expires_at": null,
                    }),
                };
                json_reply(200, Bytes::from(body.to_string()))
            }
            "logout" => {
                let current = self.codec.open_from_cookie_header(&req.cookies, now);
                if let (Some(r), Some(s)) = (&self.revocations, current) {
                    // Refused by every replica from now on: a copy of the cookie is worthless.
                    // Without Redis only this replica refuses it (the client logs and counts that).
                    let _ = r.revoke_session(&s).await;
                }
                out.push(self.codec.clear_cookie_header());
                let to = query_param(req.query, "return")
                    .and_then(|r| safe_return_path(&r))
                    .unwrap_or_else(|| "/".into());
                redirect_reply(to)
            }
            "login" => {
                let raw = query_param(req.query, "return").unwrap_or_else(|| "/".into());
                match safe_return_path(&raw) {
                    Some(to) => redirect_reply(self.authorize_for(req, &to, now, out)),
                    None => json_reply(
                        400,
                        json_error(
                            "bad_return",
                            "return must be a path on this site, such as /pages/index/index",
                        ),
                    ),
                }
            }
            "callback" => self.edge_callback(req, now, out).await,
            _ => return None,
        })
    }

    /// `/_wxedge/callback`: the end of an edge-started login.
    async fn edge_callback(&self, req: &AuthRequest<'_>, now: u64, out: &mut SetCookies) -> Reply {
        let state = query_param(req.query, "state").unwrap_or_default();
        let code = query_param(req.query, "code").unwrap_or_default();
        let to = match self.codec.finish_login(&state, &req.cookies, now) {
            Err(e) => {
                log::info!("edge login callback refused: {}", e.label());
                let page = pages::error_page("state", "/_wxedge/login?return=/", req.request_id);
                return page_reply(400, page);
            }
            Ok(to) => to,
        };
        out.push(self.codec.clear_login_cookie_header());
        if code.is_empty() {
            // The user refused authorization (snsapi_userinfo): no session, back to the page.
            return redirect_reply(to);
        }
        match self.redeem(&code).await {
            Ok(identity) => {
                let (_s, set) = self.codec.issue(&identity, now);
                out.push(set);
                redirect_reply(to)
            }
            Err((label, _)) if label == BUSY => busy_reply(req, out),
            Err((label, req_id)) => {
                log::warn!(
                    "wechat code exchange failed on the edge login: errcode {label}{}",
                    req_id.map(|r| format!(" (req_id {r})")).unwrap_or_default()
                );
                let retry = format!(
                    "/_wxedge/login?return={}",
                    utf8_percent_encode(&to, NON_ALPHANUMERIC)
                );
                login_failed_page(&label, &retry, req.request_id)
            }
        }
    }

    fn requires_session(&self, path: &str) -> bool {
        self.require_session
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    /// The 401 body: where to log in (the edge's login URL and a ready authorize URL).
    fn unauthorized_body(&self, req: &AuthRequest, now: u64, out: &mut SetCookies) -> Bytes {
        // Back to the page that made the call, when the browser said which (same site only).
        let back = req
            .fields
            .text("referer")
            .and_then(|r| r.split_once("://").map(|(_, rest)| rest))
            .and_then(|rest| rest.find('/').map(|i| rest[i..].to_string()))
            .and_then(|p| safe_return_path(&p))
            .unwrap_or_else(|| "/".into());
        let authorize = self.authorize_for(req, &back, now, out);
        let login = format!(
            "/_wxedge/login?return={}",
            utf8_percent_encode(&back, NON_ALPHANUMERIC)
        );
        Bytes::from(
            serde_json::json!({
                "error": "unauthorized",
                "message": "a WeChat session is required",
                "login_url": login,
                "authorize_url": authorize,
            })
            .to_string(),
        )
    }
}

/// Identity at the edge: the header names the backend trusts, and the WeChat login when it is on.
pub struct Auth {
    names: IdentityHeaderNames,
    login: Option<Login>,
}

impl Auth {
    pub fn from_config(config: &Config) -> Result<Auth, String> {
        let login = if config.settings.wechat.enabled {
            Some(Login::from_config(config)?)
        } else {
            None
        };
        Ok(Auth {
            names: config.settings.session.identity_headers.clone(),
            login,
        })
    }

    /// Start-up log lines.
    pub fn describe(&self) -> Vec<String> {
        match &self.login {
            Some(l) => l.describe(),
            None => vec!["wechat: login at the edge is off (WXEDGE_WECHAT_LOGIN=false)".into()],
        }
    }

    /// The WeChat-compatible endpoint (code exchange, and the backend's 中控 with the JS-SDK
    /// on), when the login is on.
    pub fn compat_endpoint(&self) -> Option<compat::CompatEndpoint> {
        self.login.as_ref().map(|l| {
            let (appid, secret) = l.credentials();
            compat::CompatEndpoint {
                exchanger: l.exchanger(),
                appid: appid.to_string(),
                secret: secret.to_string(),
                credentials: l.jssdk.as_ref().map(|j| j.credentials().clone()),
            }
        })
    }

    /// The JS-SDK credentials' state for readiness (`None`: the endpoint is off).
    pub fn jssdk_report(&self) -> Option<serde_json::Value> {
        let jssdk = self.login.as_ref()?.jssdk.as_ref()?;
        Some(jssdk.credentials().report())
    }

    /// Every name a client must never be able to send upstream, in canonical spelling.
    pub fn protected_header_names(&self) -> Vec<String> {
        self.names.all().iter().map(|h| canonical(h)).collect()
    }

    /// The login's decision for a request: an answer of its own, or who the backend is told
    /// is calling, with the `Set-Cookie` lines either answer carries.
    pub async fn decide(&self, req: &AuthRequest<'_>, proxied: bool) -> AuthOutcome {
        let mut out = SetCookies::default();
        let action = match &self.login {
            Some(l) => l.decide(req, proxied, &mut out).await,
            None => AuthAction::Continue(ForwardedIdentity::default()),
        };
        AuthOutcome {
            action,
            set_cookies: out.values,
        }
    }

    /// Session revocation, for the private listener's admin endpoint (with `redis_url`).
    pub fn revocations(&self) -> Option<Arc<Revocations>> {
        self.login.as_ref().and_then(|l| l.revocations.clone())
    }
}

/// `Set-Cookie` values collected while deciding.
#[derive(Default)]
struct SetCookies {
    values: Vec<HeaderValue>,
}

impl SetCookies {
    fn push(&mut self, value: String) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.values.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_helpers() {
        assert_eq!(
            query_param(Some("code=a%2Bb&state=S"), "code").as_deref(),
            Some("a+b")
        );
        assert_eq!(query_param(Some("x=1"), "code"), None);
        assert_eq!(
            without_code("/p", Some("code=1&state=2&from=share")),
            "/p?from=share"
        );
        assert_eq!(without_code("/p", Some("code=1&state=2")), "/p");
        assert_eq!(without_code("/p", None), "/p");
    }
}
