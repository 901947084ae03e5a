//! HTTP client for WeChat's web-OAuth API (`/sns/oauth2/access_token`, `/sns/userinfo`).
//!
//! Answers are parsed as JSON whatever their `Content-Type` (WeChat often says `text/plain`), and
//! decided by `errcode`, never by `errmsg`. `errcode -1` (system busy) gets exactly one retry after
//! a short backoff, within the total timeout. The app secret, the code and the tokens never appear
//! in errors, logs or `Debug` output.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use tokio::time::Instant;

use crate::ops::metrics::METRICS;
use crate::throttle::CallGate;

/// Everything but RFC 3986 unreserved characters is encoded in query values.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Largest answer body read from WeChat.
const MAX_BODY: usize = 64 * 1024;
/// Longest code accepted (WeChat's are 32 characters).
const MAX_CODE_LEN: usize = 128;
/// A retry is only started if at least this much of the total timeout would be left for it.
const MIN_RETRY_BUDGET: Duration = Duration::from_millis(100);

fn enc(s: &str) -> percent_encoding::PercentEncode<'_> {
    utf8_percent_encode(s, QUERY_VALUE)
}

/// Where and how to reach WeChat.
#[derive(Clone)]
pub struct WechatClientConfig {
    /// `https://api.weixin.qq.com`, or a stand-in (the sandbox).
    pub api_base: String,
    pub appid: String,
    pub secret: String,
    pub connect_timeout: Duration,
    /// Bound on a whole call, retry included.
    pub total_timeout: Duration,
    /// Calls in flight at once, calls that may wait for a place, and how long
    /// (`limits.wechat_*`).
    pub in_flight: usize,
    pub queue: usize,
    pub queue_wait: Duration,
}

impl WechatClientConfig {
    /// Defaults: connect timeout 2 s, total timeout 5 s.
    #[cfg(test)]
    pub fn new(
        api_base: impl Into<String>,
        appid: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        WechatClientConfig {
            api_base: api_base.into(),
            appid: appid.into(),
            secret: secret.into(),
            connect_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(5),
            in_flight: 64,
            queue: 256,
            queue_wait: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for WechatClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatClientConfig")
            .field("api_base", &self.api_base)
            .field("appid", &self.appid)
            .field("secret", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("total_timeout", &self.total_timeout)
            .finish()
    }
}

/// A successful code exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenAnswer {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub openid: String,
    pub scope: String,
    /// `is_snapshotuser: 1`: a snapshot-page user whose openid is virtual.
    pub is_snapshotuser: bool,
    pub unionid: Option<String>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &"<redacted>")
            .field("openid", &self.openid)
            .field("scope", &self.scope)
            .field("is_snapshotuser", &self.is_snapshotuser)
            .field("unionid", &self.unionid)
            .finish()
    }
}

impl TokenAnswer {
    /// Whether the token allows `/sns/userinfo`.
    pub fn is_userinfo_scope(&self) -> bool {
        self.scope.split(',').any(|s| s.trim() == "snsapi_userinfo")
    }

    /// The answer as WeChat would give it (for the WeChat-compatible endpoint).
    #[cfg(test)]
    pub fn to_wechat_json(&self) -> String {
        let mut m = serde_json::Map::new();
        m.insert("access_token".into(), self.access_token.clone().into());
        m.insert("expires_in".into(), self.expires_in.into());
        m.insert("refresh_token".into(), self.refresh_token.clone().into());
        m.insert("openid".into(), self.openid.clone().into());
        m.insert("scope".into(), self.scope.clone().into());
        if self.is_snapshotuser {
            m.insert("is_snapshotuser".into(), 1.into());
        }
        if let Some(u) = &self.unionid {
            m.insert("unionid".into(), u.clone().into());
        }
        Value::Object(m).to_string()
    }
}

/// `/sns/userinfo` answer (scope `snsapi_userinfo` only).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub nickname: String,
    pub headimgurl: String,
    pub unionid: Option<String>,
}

/// Why a call to WeChat gave no answer. Never contains the secret, the code or a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeError {
    /// WeChat answered `{"errcode":N,"errmsg":"..."}` (errmsg sanitized and capped).
    WeChat {
        errcode: i64,
        errmsg: String,
        req_id: Option<String>,
    },
    /// No complete answer within the timeout (connect or total).
    Timeout,
    /// Connection failed or broke (reason without URL).
    Connect(String),
    /// A non-2xx HTTP status.
    HttpStatus(u16),
    /// An answer that is not what WeChat sends (short description, no body content).
    Garbage(String),
    /// Not called: the calls in flight were at their bound and the queue full (or its wait
    /// ran out). The code is unspent.
    Busy,
}

impl ExchangeError {
    /// The local refusal of a malformed code, shaped like WeChat's 40029.
    pub fn invalid_code_locally() -> Self {
        ExchangeError::WeChat {
            errcode: 40029,
            errmsg: "invalid code (malformed, refused by wxedge without asking WeChat)".into(),
            req_id: None,
        }
    }

    /// Label for metrics and logs: the errcode (`"40163"`), `"timeout"`, `"connect"`,
    /// `"http_502"`, `"garbage"`.
    pub fn errcode_label(&self) -> String {
        match self {
            ExchangeError::WeChat { errcode, .. } => errcode.to_string(),
            ExchangeError::Timeout => "timeout".into(),
            ExchangeError::Connect(_) => "connect".into(),
            ExchangeError::HttpStatus(s) => format!("http_{s}"),
            ExchangeError::Garbage(_) => "garbage".into(),
            ExchangeError::Busy => "busy".into(),
        }
    }

    /// WeChat's errcode, if it answered one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            ExchangeError::WeChat { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// A transient failure: the same request may work later (busy, rate limited, timeout,
    /// connection trouble, 5xx/429). The code itself may or may not have been consumed.
    #[cfg(test)]
    pub fn is_retryable_later(&self) -> bool {
        match self {
            ExchangeError::WeChat { errcode, .. } => matches!(errcode, -1 | 45009 | 45011),
            ExchangeError::Timeout | ExchangeError::Connect(_) | ExchangeError::Busy => true,
            ExchangeError::HttpStatus(s) => *s >= 500 || *s == 429,
            ExchangeError::Garbage(_) => false,
        }
    }

    /// The code is unusable (invalid, expired, used, missing): the user must authorize again.
    pub fn is_code_problem(&self) -> bool {
        matches!(self.errcode(), Some(40029 | 40163 | 41008))
    }

    /// The edge is misconfigured (wrong appid or secret, bad grant_type): an operator problem.
    pub fn is_config_problem(&self) -> bool {
        matches!(
            self.errcode(),
            Some(40013 | 40125 | 40002 | 41002 | 41004 | 40164)
        )
    }

    /// WeChat-shaped JSON for the WeChat-compatible endpoint: WeChat errors as they were,
    /// anything else as `-1 system error`.
    #[cfg(test)]
    pub fn to_wechat_json(&self) -> String {
        let (code, msg) = match self {
            ExchangeError::WeChat {
                errcode, errmsg, ..
            } => (*errcode, errmsg.clone()),
            _ => (-1, "system error".to_string()),
        };
        serde_json::json!({ "errcode": code, "errmsg": msg }).to_string()
    }
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::WeChat {
                errcode,
                errmsg,
                req_id,
            } => {
                write!(f, "WeChat errcode {errcode}: {errmsg}")?;
                if let Some(r) = req_id {
                    write!(f, " (req_id {r})")?;
                }
                Ok(())
            }
            ExchangeError::Timeout => f.write_str("WeChat did not answer in time"),
            ExchangeError::Connect(m) => write!(f, "cannot reach WeChat: {m}"),
            ExchangeError::HttpStatus(s) => write!(f, "WeChat answered HTTP {s}"),
            ExchangeError::Garbage(m) => write!(f, "unexpected answer from WeChat: {m}"),
            ExchangeError::Busy => f.write_str("too many WeChat calls in flight: not called"),
        }
    }
}

impl std::error::Error for ExchangeError {}

/// Refuses codes WeChat could not have issued (empty, > 128 bytes, characters outside
/// `[A-Za-z0-9_-]`) with a 40029-shaped error, before any network call.
pub fn validate_code(code: &str) -> Result<(), ExchangeError> {
    if code.is_empty()
        || code.len() > MAX_CODE_LEN
        || !code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ExchangeError::invalid_code_locally());
    }
    Ok(())
}

/// `{open_base}/connect/oauth2/authorize?appid=..&redirect_uri=..&response_type=code&scope=..&state=..#wechat_redirect`
/// (`open_base` is `https://open.weixin.qq.com` or a stand-in; every value is URL-encoded).
pub fn authorize_url(
    open_base: &str,
    appid: &str,
    redirect_uri: &str,
    scope: &str,
    state: &str,
) -> String {
    format!(
        "{}/connect/oauth2/authorize?appid={}&redirect_uri={}&response_type=code&scope={}&state={}#wechat_redirect",
        open_base.trim_end_matches('/'),
        enc(appid),
        enc(redirect_uri),
        enc(scope),
        enc(state)
    )
}

/// The client. Cheap to share (`Arc`); the connection pool is inside.
pub struct WechatClient {
    cfg: WechatClientConfig,
    api_base: String,
    http: reqwest::Client,
    retry_backoff: Duration,
    /// The bound on calls in flight (`limits.wechat_*`).
    gate: CallGate,
}

impl std::fmt::Debug for WechatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatClient")
            .field("cfg", &self.cfg)
            .field("retry_backoff", &self.retry_backoff)
            .finish()
    }
}

impl WechatClient {
    pub fn new(cfg: WechatClientConfig) -> Result<Self, String> {
        let api_base = cfg.api_base.trim_end_matches('/').to_string();
        if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
            return Err(format!(
                "WeChat API base must start with http:// or https://, got {api_base:?}"
            ));
        }
        if cfg.appid.is_empty() || cfg.secret.is_empty() {
            return Err("WeChat appid and secret must not be empty".into());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.total_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wxedge/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|e| format!("cannot build the WeChat HTTP client: {}", e.without_url()))?;
        Ok(WechatClient {
            api_base,
            http,
            retry_backoff: Duration::from_millis(200),
            gate: CallGate::new(cfg.in_flight, cfg.queue, cfg.queue_wait),
            cfg,
        })
    }

    /// Backoff before the single retry after `errcode -1` (default 200 ms).
    #[cfg(test)]
    pub fn with_retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Whether `appid`/`secret` are ours (constant-time on the secret), for the
    /// WeChat-compatible endpoint.
    #[cfg(test)]
    pub fn credentials_match(&self, appid: &str, secret: &str) -> bool {
        let s = crate::session::ct_eq(secret.as_bytes(), self.cfg.secret.as_bytes());
        appid == self.cfg.appid && s
    }

    /// `GET {api_base}/sns/oauth2/access_token?appid=..&secret=..&code=..&grant_type=authorization_code`.
    pub async fn exchange_code(&self, code: &str) -> Result<TokenAnswer, ExchangeError> {
        validate_code(code)?;
        let url = format!(
            "{}/sns/oauth2/access_token?appid={}&secret={}&code={}&grant_type=authorization_code",
            self.api_base,
            enc(&self.cfg.appid),
            enc(&self.cfg.secret),
            enc(code)
        );
        let v = self.call(&url, None, &[&self.cfg.secret, code]).await?;
        parse_token(&v)
    }

    /// `GET {api_base}/sns/userinfo?access_token=..&openid=..&lang=zh_CN`.
    pub async fn userinfo(
        &self,
        access_token: &str,
        openid: &str,
    ) -> Result<UserInfo, ExchangeError> {
        let url = format!(
            "{}/sns/userinfo?access_token={}&openid={}&lang=zh_CN",
            self.api_base,
            enc(access_token),
            enc(openid)
        );
        let v = self
            .call(&url, None, &[&self.cfg.secret, access_token])
            .await?;
        Ok(UserInfo {
            nickname: clean(str_field(&v, "nickname").unwrap_or(""), 256),
            headimgurl: clean(str_field(&v, "headimgurl").unwrap_or(""), 1024),
            unionid: str_field(&v, "unionid")
                .filter(|u| valid_id(u))
                .map(String::from),
        })
    }

    /// `POST {api_base}/cgi-bin/stable_token` in normal mode (never `force_refresh`, which
    /// would kill every other holder's token): the account's global access_token, the same one
    /// while it is valid, with its time left as `expires_in`.
    pub async fn stable_token(&self) -> Result<Credential, ExchangeError> {
        let url = format!("{}/cgi-bin/stable_token", self.api_base);
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": self.cfg.appid,
            "secret": self.cfg.secret,
        });
        let v = self.call(&url, Some(&body), &[&self.cfg.secret]).await?;
        parse_credential(&v, "access_token")
    }

    /// `GET {api_base}/cgi-bin/ticket/getticket?access_token=..&type=jsapi`: the JS-SDK ticket.
    pub async fn jsapi_ticket(&self, access_token: &str) -> Result<Credential, ExchangeError> {
        let url = format!(
            "{}/cgi-bin/ticket/getticket?access_token={}&type=jsapi",
            self.api_base,
            enc(access_token)
        );
        let v = self
            .call(&url, None, &[&self.cfg.secret, access_token])
            .await?;
        parse_credential(&v, "ticket")
    }

    /// The app's id, as pages need it for `wx.config`.
    pub fn appid(&self) -> &str {
        &self.cfg.appid
    }

    /// One GET (or, with `body`, a POST of that JSON) with the `-1` retry, bounded by the
    /// total timeout. Returns the JSON object of a successful answer (`errcode` absent or 0).
    async fn call(
        &self,
        url: &str,
        body: Option<&Value>,
        scrub: &[&str],
    ) -> Result<Value, ExchangeError> {
        let Ok(_place) = self.gate.enter().await else {
            METRICS
                .limited
                .with_label_values(&["wechat_in_flight"])
                .inc();
            return Err(ExchangeError::Busy);
        };
        let deadline = Instant::now() + self.cfg.total_timeout;
        let work = async {
            match self.attempt(url, body, scrub).await {
                Err(ExchangeError::WeChat { errcode: -1, .. })
                    if Instant::now() + self.retry_backoff + MIN_RETRY_BUDGET < deadline =>
                {
                    log::debug!("WeChat busy (-1), retrying once");
                    tokio::time::sleep(self.retry_backoff).await;
                    self.attempt(url, body, scrub).await
                }
                other => other,
            }
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or(Err(ExchangeError::Timeout))
    }

    async fn attempt(
        &self,
        url: &str,
        body: Option<&Value>,
        scrub: &[&str],
    ) -> Result<Value, ExchangeError> {
        let request = match body {
            Some(json) => self
                .http
                .post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(json.to_string()),
            None => self.http.get(url),
        };
        let mut resp = request.send().await.map_err(|e| map_reqwest(e, scrub))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ExchangeError::HttpStatus(status.as_u16()));
        }
        let ctype = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| clean(s, 60))
            .unwrap_or_else(|| "none".into());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| map_reqwest(e, scrub))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(ExchangeError::Garbage(format!(
                    "answer larger than {} KiB",
                    MAX_BODY / 1024
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let v: Value = serde_json::from_slice(&body).map_err(|_| {
            ExchangeError::Garbage(format!(
                "answer is not JSON ({} bytes, content-type {ctype})",
                body.len()
            ))
        })?;
        if !v.is_object() {
            return Err(ExchangeError::Garbage("answer is not a JSON object".into()));
        }
        if let Some(ec) = v.get("errcode") {
            let errcode = match ec {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| ExchangeError::Garbage("errcode is not a number".into()))?;
            if errcode != 0 {
                let raw = str_field(&v, "errmsg").unwrap_or("");
                return Err(ExchangeError::WeChat {
                    errcode,
                    errmsg: scrub_text(&clean(raw, 200), scrub),
                    req_id: parse_req_id(raw),
                });
            }
        }
        Ok(v)
    }
}

/// An account credential (the global access_token, a JS-SDK ticket) and its lifetime.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub value: String,
    /// Seconds it stays valid from now, as WeChat said.
    pub expires_in: u64,
}

impl std::fmt::Debug for Credential {
    /// Never the value: tokens and tickets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credential({} chars, {} s)",
            self.value.len(),
            self.expires_in
        )
    }
}

/// The longest `expires_in` taken for an account credential (WeChat's: 7200 s).
const MAX_CREDENTIAL_LIFETIME: u64 = 7 * 86_400;

/// `{"<field>": "...", "expires_in": N}`; WeChat reserves 512 characters for tokens.
fn parse_credential(v: &Value, field: &str) -> Result<Credential, ExchangeError> {
    let value = str_field(v, field)
        .filter(|s| !s.is_empty() && s.len() <= 1024 && s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ExchangeError::Garbage(format!("answer has no valid {field}")))?;
    let expires_in = match v.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    // WeChat's are 7200 s at most; a garbage one must not reach the edge's clock arithmetic.
    .filter(|&s| s > 0 && s <= MAX_CREDENTIAL_LIFETIME)
    .ok_or_else(|| ExchangeError::Garbage("answer has no valid expires_in".into()))?;
    Ok(Credential {
        value: value.to_string(),
        expires_in,
    })
}

fn parse_token(v: &Value) -> Result<TokenAnswer, ExchangeError> {
    let access_token = str_field(v, "access_token")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ExchangeError::Garbage("answer has no access_token".into()))?;
    let openid = str_field(v, "openid")
        .filter(|s| valid_id(s))
        .ok_or_else(|| ExchangeError::Garbage("answer has no valid openid".into()))?;
    let expires_in = match v.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(7200);
    Ok(TokenAnswer {
        access_token: access_token.to_string(),
        expires_in,
        refresh_token: str_field(v, "refresh_token").unwrap_or("").to_string(),
        openid: openid.to_string(),
        scope: clean(str_field(v, "scope").unwrap_or(""), 64),
        is_snapshotuser: flag(v.get("is_snapshotuser")),
        unionid: str_field(v, "unionid")
            .filter(|u| valid_id(u))
            .map(String::from),
    })
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Number(n)) => n.as_i64().is_some_and(|i| i != 0),
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.trim(), "1" | "true"),
        _ => false,
    }
}

/// openid/unionid shape: what can safely go into a header and a cookie.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Control characters removed, at most `max` chars.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn scrub_text(s: &str, secrets: &[&str]) -> String {
    let mut out = s.to_string();
    for sec in secrets {
        if sec.len() >= 4 {
            out = out.replace(sec, "***");
        }
    }
    out
}

/// `req_id` from `"... hints: [ req_id: GL9B5a0685th52 ]"` (or `rid: ...` in newer answers).
fn parse_req_id(errmsg: &str) -> Option<String> {
    for marker in ["req_id:", "rid:"] {
        if let Some(i) = errmsg.find(marker) {
            let id: String = errmsg[i + marker.len()..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .take(64)
                .collect();
            if !id.is_empty() {
                return Some(id);
            }
        }
    }
    None
}

fn map_reqwest(e: reqwest::Error, scrub: &[&str]) -> ExchangeError {
    if e.is_timeout() {
        return ExchangeError::Timeout;
    }
    let connect = e.is_connect();
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    let msg = scrub_text(&clean(&msg, 200), scrub);
    if connect {
        ExchangeError::Connect(msg)
    } else {
        ExchangeError::Connect(format!("transport error: {msg}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::testserver::{Reply, TestServer};
    use std::sync::Arc;

    const SECRET: &str = "s3cr3t-app-secret-value";

    #[test]
    fn account_credentials_need_a_value_and_a_sane_lifetime() {
        let ok = serde_json::json!({"access_token": "T", "expires_in": 7200});
        assert_eq!(
            parse_credential(&ok, "access_token").unwrap().expires_in,
            7200
        );
        for bad in [
            serde_json::json!({"access_token": "T"}),
            serde_json::json!({"access_token": "T", "expires_in": 0}),
            serde_json::json!({"access_token": "T", "expires_in": u64::MAX}),
            serde_json::json!({"access_token": "", "expires_in": 7200}),
            serde_json::json!({"access_token": "a b", "expires_in": 7200}),
            serde_json::json!({"ticket": "T", "expires_in": 7200}),
        ] {
            assert!(parse_credential(&bad, "access_token").is_err(), "{bad}");
        }
    }

    fn client_for(base: &str, total_ms: u64) -> WechatClient {
        let mut cfg = WechatClientConfig::new(base, "wxAPPID", SECRET);
        cfg.connect_timeout = Duration::from_millis(500);
        cfg.total_timeout = Duration::from_millis(total_ms);
        WechatClient::new(cfg)
            .unwrap()
            .with_retry_backoff(Duration::from_millis(50))
    }

    const OK_BODY: &str = r#"{"access_token":"AT-1","expires_in":7200,"refresh_token":"RT-1","openid":"oUser1","scope":"snsapi_base","is_snapshotuser":1,"unionid":"uUnion1"}"#;

    #[tokio::test]
    async fn exchange_success_text_plain_and_query() {
        let srv = TestServer::start(Arc::new(|_n, _path| Reply::text(200, OK_BODY))).await;
        let c = client_for(&format!("{}/", srv.base()), 2000);
        let t = c.exchange_code("CODE_ab-1").await.unwrap();
        assert_eq!(t.openid, "oUser1");
        assert_eq!(t.access_token, "AT-1");
        assert_eq!(t.refresh_token, "RT-1");
        assert_eq!(t.expires_in, 7200);
        assert!(t.is_snapshotuser);
        assert_eq!(t.unionid.as_deref(), Some("uUnion1"));
        assert!(!t.is_userinfo_scope());
        let paths = srv.paths();
        assert_eq!(
            paths,
            vec![format!(
                "/sns/oauth2/access_token?appid=wxAPPID&secret={SECRET}&code=CODE_ab-1&grant_type=authorization_code"
            )]
        );
        // Debug never shows tokens.
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("AT-1") && !dbg.contains("RT-1") && dbg.contains("oUser1"));
        assert!(!format!("{c:?}").contains(SECRET));
        // Back to WeChat JSON.
        let v: Value = serde_json::from_str(&t.to_wechat_json()).unwrap();
        assert_eq!(v["is_snapshotuser"], 1);
        assert_eq!(v["access_token"], "AT-1");
    }

    #[tokio::test]
    async fn minimal_answer_defaults() {
        let srv = TestServer::start(Arc::new(|_n, _p| {
            Reply::text(200, r#"{"access_token":"a","openid":"o_1","scope":"snsapi_userinfo","is_snapshotuser":0}"#)
        }))
        .await;
        let t = client_for(&srv.base(), 2000)
            .exchange_code("c")
            .await
            .unwrap();
        assert!(!t.is_snapshotuser);
        assert_eq!(t.unionid, None);
        assert_eq!(t.expires_in, 7200);
        assert!(t.is_userinfo_scope());
        let v: Value = serde_json::from_str(&t.to_wechat_json()).unwrap();
        assert!(v.get("is_snapshotuser").is_none() && v.get("unionid").is_none());
    }

    #[tokio::test]
    async fn wechat_error_with_req_id() {
        let srv = TestServer::start(Arc::new(|_n, _p| {
            Reply::text(
                200,
                r#"{"errcode":40163,"errmsg":"code been used, hints: [ req_id: GL9B5a0685th52 ]"}"#,
            )
        }))
        .await;
        let e = client_for(&srv.base(), 2000)
            .exchange_code("abc")
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ExchangeError::WeChat {
                errcode: 40163,
                errmsg: "code been used, hints: [ req_id: GL9B5a0685th52 ]".into(),
                req_id: Some("GL9B5a0685th52".into()),
            }
        );
        assert_eq!(e.errcode_label(), "40163");
        assert!(e.is_code_problem() && !e.is_retryable_later() && !e.is_config_problem());
        assert_eq!(srv.calls(), 1);
        let v: Value = serde_json::from_str(&e.to_wechat_json()).unwrap();
        assert_eq!(v["errcode"], 40163);
    }

    #[tokio::test]
    async fn busy_then_ok_retries_once() {
        let srv = TestServer::start(Arc::new(|n, _p| {
            if n == 1 {
                Reply::text(200, r#"{"errcode":-1,"errmsg":"system error"}"#)
            } else {
                Reply::text(200, OK_BODY)
            }
        }))
        .await;
        let t = client_for(&srv.base(), 2000)
            .exchange_code("abc")
            .await
            .unwrap();
        assert_eq!(t.openid, "oUser1");
        assert_eq!(srv.calls(), 2);
    }

    #[tokio::test]
    async fn busy_twice_gives_up_after_one_retry() {
        let srv = TestServer::start(Arc::new(|_n, _p| {
            Reply::text(
                200,
                r#"{"errcode":-1,"errmsg":"system error, rid: 65a-b1"}"#,
            )
        }))
        .await;
        let e = client_for(&srv.base(), 2000)
            .exchange_code("abc")
            .await
            .unwrap_err();
        assert_eq!(e.errcode(), Some(-1));
        assert!(e.is_retryable_later());
        assert_eq!(srv.calls(), 2);
        if let ExchangeError::WeChat { req_id, .. } = e {
            assert_eq!(req_id.as_deref(), Some("65a-b1"));
        }
    }

    #[tokio::test]
    async fn http_status_and_garbage() {
        let srv = TestServer::start(Arc::new(|n, _p| match n {
            1 => Reply::text(502, "bad gateway"),
            2 => Reply::html(200, "<html>maintenance</html>"),
            3 => Reply::text(200, "[1,2]"),
            4 => Reply::text(200, r#"{"access_token":"x","openid":"bad openid\r\n"}"#),
            _ => Reply::text(200, r#"{"errcode":"x"}"#),
        }))
        .await;
        let c = client_for(&srv.base(), 2000);
        let e = c.exchange_code("abc").await.unwrap_err();
        assert_eq!(e, ExchangeError::HttpStatus(502));
        assert_eq!(e.errcode_label(), "http_502");
        assert!(e.is_retryable_later());
        for _ in 0..4 {
            let e = c.exchange_code("abc").await.unwrap_err();
            assert!(matches!(e, ExchangeError::Garbage(_)), "{e:?}");
            assert_eq!(e.errcode_label(), "garbage");
            let s = e.to_string();
            assert!(!s.contains(SECRET) && !s.contains("maintenance"), "{s}");
        }
    }

    #[tokio::test]
    async fn hanging_server_times_out_within_bound() {
        let srv = TestServer::start(Arc::new(|_n, _p| Reply::Hang)).await;
        let c = client_for(&srv.base(), 300);
        let t0 = std::time::Instant::now();
        let e = c.exchange_code("abc").await.unwrap_err();
        let took = t0.elapsed();
        assert_eq!(e, ExchangeError::Timeout);
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
        assert_eq!(e.errcode_label(), "timeout");
    }

    #[tokio::test]
    async fn connection_refused_hides_secret_and_code() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = client_for(&format!("http://{addr}"), 2000);
        let e = c.exchange_code("THECODE123").await.unwrap_err();
        match &e {
            ExchangeError::Connect(m) => {
                assert!(!m.contains(SECRET) && !m.contains("THECODE123"), "{m}");
            }
            other => panic!("expected Connect, got {other:?}"),
        }
        assert_eq!(e.errcode_label(), "connect");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(SECRET) && !shown.contains("THECODE123"));
    }

    #[tokio::test]
    async fn bad_codes_refused_without_call() {
        let srv = TestServer::start(Arc::new(|_n, _p| Reply::text(200, OK_BODY))).await;
        let c = client_for(&srv.base(), 2000);
        let long = "a".repeat(129);
        for bad in ["", "a b", "a&secret=x", "../x", "码", long.as_str()] {
            let e = c.exchange_code(bad).await.unwrap_err();
            assert_eq!(e.errcode(), Some(40029), "{bad:?}");
        }
        assert_eq!(srv.calls(), 0);
        assert!(validate_code(&"a".repeat(128)).is_ok());
        assert!(validate_code("Ab_9-z").is_ok());
    }

    #[tokio::test]
    async fn userinfo_ok_and_unauthorized() {
        let srv = TestServer::start(Arc::new(|_n, p| {
            if p.contains("access_token=BASE") {
                Reply::text(200, r#"{"errcode":48001,"errmsg":"api unauthorized, hints: [ req_id: x1 ]"}"#)
            } else {
                Reply::text(
                    200,
                    r#"{"openid":"o1","nickname":"小明\u0007","headimgurl":"https://thirdwx.qlogo.cn/a/132","privilege":[],"unionid":"u1"}"#,
                )
            }
        }))
        .await;
        let c = client_for(&srv.base(), 2000);
        let u = c.userinfo("UI/TOKEN", "o1").await.unwrap();
        assert_eq!(u.nickname, "小明");
        assert_eq!(u.headimgurl, "https://thirdwx.qlogo.cn/a/132");
        assert_eq!(u.unionid.as_deref(), Some("u1"));
        assert!(srv.paths()[0]
            .starts_with("/sns/userinfo?access_token=UI%2FTOKEN&openid=o1&lang=zh_CN"));
        let e = c.userinfo("BASE", "o1").await.unwrap_err();
        assert_eq!(e.errcode(), Some(48001));
    }

    #[test]
    fn authorize_url_shape() {
        let u = authorize_url(
            "https://open.weixin.qq.com/",
            "wx123",
            "https://h5.example.com/pages/a?x=1#/b",
            "snsapi_base",
            "wxe1abc",
        );
        assert_eq!(
            u,
            "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx123&redirect_uri=https%3A%2F%2Fh5.example.com%2Fpages%2Fa%3Fx%3D1%23%2Fb&response_type=code&scope=snsapi_base&state=wxe1abc#wechat_redirect"
        );
    }

    #[test]
    fn config_checks_and_credentials() {
        assert!(WechatClient::new(WechatClientConfig::new("ftp://x", "a", "b")).is_err());
        assert!(WechatClient::new(WechatClientConfig::new("http://x", "", "b")).is_err());
        let c = WechatClient::new(WechatClientConfig::new("http://x", "wxA", SECRET)).unwrap();
        assert!(c.credentials_match("wxA", SECRET));
        assert!(!c.credentials_match("wxB", SECRET));
        assert!(!c.credentials_match("wxA", "nope"));
    }

    #[test]
    fn req_id_parsing() {
        assert_eq!(
            parse_req_id("invalid code, hints: [ req_id: ABC-12 ]").as_deref(),
            Some("ABC-12")
        );
        assert_eq!(
            parse_req_id("invalid code, rid: 6512ab").as_deref(),
            Some("6512ab")
        );
        assert_eq!(parse_req_id("invalid code"), None);
        assert_eq!(parse_req_id("req_id: ]"), None);
    }
}
