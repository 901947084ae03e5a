//! A built-in stand-in for WeChat, framework-agnostic: the edge serves [`Sandbox::handle`] under
//! `/_wxedge/sandbox/...` (paths given to `handle` are relative to that base), tests call it
//! directly or behind a loopback server.
//!
//! * `GET /connect/oauth2/authorize?appid&redirect_uri&response_type=code&scope&state` — an HTML
//!   page listing the test users; each link redirects to `redirect_uri?code=CODE&state=STATE`
//!   with a fresh single-use code. `&auto=<user key>` answers that 302 at once (scripted tests),
//!   `&auto=deny` redirects without a code (the user refused), `&fail=<errcode>` makes the code's
//!   first redemption answer that errcode (e.g. `-1` to exercise the retry; the code stays usable).
//! * `GET /sns/oauth2/access_token` — real checks and error codes: 41002/40013 appid, 41004/40125
//!   secret, 40002 grant_type, 41008 missing code, 40029 unknown or expired (5 min) code, 40163 used
//!   code; `is_snapshotuser: 1` for the snapshot user; `unionid` when the user has one. Besides
//!   issued codes it accepts self-minted ones, `auto-<user key>-<anything>` (`snsapi_base`, single
//!   use like the others), so a load generator can make distinct valid codes without asking first.
//!   [`SandboxConfig::latency`] delays these answers (through [`Sandbox::handle_delayed`]).
//! * `GET /sns/userinfo` — 48001 for `snsapi_base` tokens; `GET /sns/auth`.
//!
//! API answers are JSON with `Content-Type: text/plain` and `errmsg` ending in
//! `hints: [ req_id: ... ]`, like WeChat's. Issued codes and tokens are bounded and expire.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::json;
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Prefix of self-minted codes: `auto-<user key>-<nonce>`.
pub const SELF_MINTED_PREFIX: &str = "auto-";

/// A code's life, in seconds.
pub const CODE_TTL_SECS: u64 = 300;
/// An access token's life, in seconds.
pub const TOKEN_TTL_SECS: u64 = 7200;

pub const DEFAULT_APPID: &str = "wxedgesandbox001";
pub const DEFAULT_SECRET: &str = "wxedge-sandbox-secret";

const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const API_CT: &str = "text/plain";
const HTML_CT: &str = "text/html; charset=utf-8";

/// A test user offered on the authorize page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxUser {
    /// Used in `auto=<key>`.
    pub key: String,
    pub label: String,
    pub openid: String,
    pub unionid: Option<String>,
    /// Snapshot-page user: `is_snapshotuser: 1`, virtual openid.
    pub snapshot: bool,
    pub nickname: String,
    pub headimgurl: String,
}

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub appid: String,
    pub secret: String,
    /// Hosts (`host` or `host:port`) accepted in `redirect_uri`; empty = any (10003 otherwise,
    /// like WeChat's "redirect_uri domain mismatch").
    pub allowed_redirect_hosts: Vec<String>,
    /// Bound on codes (and on tokens) kept in memory.
    pub max_codes: usize,
    /// Test users; empty = the default ones for this appid: `alice` (no unionid), `bob` (with
    /// unionid), `snap` (snapshot-page user).
    pub users: Vec<SandboxUser>,
    /// How long a code exchange waits before answering (WeChat takes tens of milliseconds;
    /// benchmarks want that, tests mostly not); zero = at once.
    pub latency: Duration,
}

impl SandboxConfig {
    pub fn new(appid: impl Into<String>, secret: impl Into<String>) -> Self {
        SandboxConfig {
            appid: appid.into(),
            secret: secret.into(),
            allowed_redirect_hosts: Vec::new(),
            max_codes: 10_000,
            users: Vec::new(),
            latency: Duration::ZERO,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig::new(DEFAULT_APPID, DEFAULT_SECRET)
    }
}

fn derive_id(seed: &str) -> String {
    let h = xxh3_128_with_seed(seed.as_bytes(), 0x77_78_65_64_67_65);
    format!("o{}", &format!("{h:032x}")[..27])
}

fn default_users(appid: &str) -> Vec<SandboxUser> {
    vec![
        SandboxUser {
            key: "alice".into(),
            label: "Alice — 普通用户 (no unionid)".into(),
            openid: derive_id(&format!("{appid}/alice")),
            unionid: None,
            snapshot: false,
            nickname: "Alice 爱丽丝".into(),
            headimgurl: "https://thirdwx.qlogo.cn/mmopen/vi_32/sandbox-alice/132".into(),
        },
        SandboxUser {
            key: "bob".into(),
            label: "Bob — 普通用户 (with unionid)".into(),
            openid: derive_id(&format!("{appid}/bob")),
            unionid: Some(derive_id("union/bob")),
            snapshot: false,
            nickname: "Bob 鲍勃".into(),
            headimgurl: "https://thirdwx.qlogo.cn/mmopen/vi_32/sandbox-bob/132".into(),
        },
        SandboxUser {
            key: "snap".into(),
            label: "快照页用户 — snapshot-page user (virtual openid)".into(),
            openid: derive_id(&format!("{appid}/snapshot")),
            unionid: None,
            snapshot: true,
            nickname: "微信用户".into(),
            headimgurl: "https://thirdwx.qlogo.cn/mmopen/vi_32/sandbox-default/132".into(),
        },
    ]
}

/// What the sandbox answers; the caller turns it into an HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxResponse {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers (`Location`, `Cache-Control`).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SandboxResponse {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        SandboxResponse {
            status,
            content_type,
            headers: vec![("Cache-Control".into(), "no-store".into())],
            body: body.into(),
        }
    }

    /// The body as text (lossy), for tests and logs.
    #[cfg(test)]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, by case-insensitive name.
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct CodeEntry {
    user: usize,
    userinfo: bool,
    issued: u64,
    used: bool,
    fail_first: Option<i64>,
}

struct TokenEntry {
    user: usize,
    userinfo: bool,
    expires: u64,
}

#[derive(Default)]
struct State {
    codes: HashMap<String, CodeEntry>,
    tokens: HashMap<String, TokenEntry>,
}

/// The WeChat stand-in. Shareable (`&self` everywhere).
pub struct Sandbox {
    cfg: SandboxConfig,
    seed: u64,
    seq: AtomicU64,
    state: Mutex<State>,
    access_token_calls: AtomicU64,
    /// The account credentials and the JS-SDK stand-in.
    jssdk: super::sandbox_jssdk::SandboxJsSdk,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("appid", &self.cfg.appid)
            .field("users", &self.cfg.users.len())
            .finish()
    }
}

impl Sandbox {
    pub fn new(mut cfg: SandboxConfig) -> Self {
        if cfg.users.is_empty() {
            cfg.users = default_users(&cfg.appid);
        }
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Sandbox {
            jssdk: super::sandbox_jssdk::SandboxJsSdk::new(&cfg.appid),
            cfg,
            seed: h.finish(),
            seq: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            access_token_calls: AtomicU64::new(0),
        }
    }

    #[cfg(test)]
    pub fn users(&self) -> &[SandboxUser] {
        &self.cfg.users
    }

    #[cfg(test)]
    pub fn user(&self, key: &str) -> Option<&SandboxUser> {
        self.cfg.users.iter().find(|u| u.key == key)
    }

    /// How many `/sns/oauth2/access_token` requests were answered (any outcome).
    #[cfg(test)]
    pub fn access_token_calls(&self) -> u64 {
        self.access_token_calls.load(Ordering::Relaxed)
    }

    /// Codes currently held (for tests of the memory bound).
    #[cfg(test)]
    pub fn codes_held(&self) -> usize {
        self.state.lock().unwrap().codes.len()
    }

    /// Issues a code for user `key` directly (what picking the user on the page does).
    #[cfg(test)]
    pub fn issue_code(&self, key: &str, userinfo_scope: bool, now: u64) -> Option<String> {
        self.issue_code_with(key, userinfo_scope, None, now)
    }

    fn issue_code_with(
        &self,
        key: &str,
        userinfo: bool,
        fail_first: Option<i64>,
        now: u64,
    ) -> Option<String> {
        let user = self.cfg.users.iter().position(|u| u.key == key)?;
        let code = self.random_token();
        let mut st = self.state.lock().unwrap();
        self.insert_code(
            &mut st,
            code.clone(),
            CodeEntry {
                user,
                userinfo,
                issued: now,
                used: false,
                fail_first,
            },
            now,
        );
        Some(code)
    }

    /// Holds `entry`, within `max_codes`: expired codes go first, then the oldest.
    fn insert_code(&self, st: &mut State, code: String, entry: CodeEntry, now: u64) {
        make_room(
            &mut st.codes,
            self.cfg.max_codes,
            |c| now < c.issued.saturating_add(CODE_TTL_SECS),
            |c| c.issued,
        );
        st.codes.insert(code, entry);
    }

    /// The user of a self-minted code (`auto-<user key>-<nonce>`), if it is one.
    fn self_minted_user(&self, code: &str) -> Option<usize> {
        let (key, nonce) = code.strip_prefix(SELF_MINTED_PREFIX)?.split_once('-')?;
        if nonce.is_empty() {
            return None;
        }
        self.cfg.users.iter().position(|u| u.key == key)
    }

    /// [`Sandbox::handle`], after [`SandboxConfig::latency`] when it is a code exchange. The
    /// wait is a timer, so no thread is held while the "WeChat" is slow.
    pub async fn handle_delayed(
        &self,
        method: &str,
        path_and_query: &str,
        now: u64,
    ) -> SandboxResponse {
        if !self.cfg.latency.is_zero() && is_access_token(path_and_query) {
            tokio::time::sleep(self.cfg.latency).await;
        }
        self.handle(method, path_and_query, now)
    }

    /// Answers one request. `path_and_query` is relative to the sandbox base
    /// (`/connect/oauth2/authorize?...`, `/sns/oauth2/access_token?...`); `now` is Unix seconds.
    pub fn handle(&self, method: &str, path_and_query: &str, now: u64) -> SandboxResponse {
        let without_fragment = path_and_query.split('#').next().unwrap_or("");
        let (path, query) = without_fragment
            .split_once('?')
            .unwrap_or((without_fragment, ""));
        let q = parse_query(query);
        let is_get = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
        let is_api_method = is_get || method.eq_ignore_ascii_case("POST");
        let mint = || self.random_token();
        let error = |code, msg: &str| self.api_error_body(code, msg);
        let upper = method.to_ascii_uppercase();
        if let Some(a) = self.jssdk.handle(&upper, path, &q, now, mint, error) {
            return SandboxResponse::new(a.status, a.content_type, a.body);
        }
        match path {
            "/connect/oauth2/authorize" if is_get => self.authorize(&q, query, now),
            "/sns/oauth2/access_token" if is_api_method => self.access_token(&q, now),
            "/sns/userinfo" if is_api_method => self.userinfo(&q, now),
            "/sns/auth" if is_api_method => self.auth(&q, now),
            "" | "/" if is_get => self.index(),
            "/connect/oauth2/authorize"
            | "/sns/oauth2/access_token"
            | "/sns/userinfo"
            | "/sns/auth"
            | ""
            | "/" => {
                let mut r = SandboxResponse::new(405, API_CT, "method not allowed");
                r.headers.push(("Allow".into(), "GET, HEAD, POST".into()));
                r
            }
            _ => SandboxResponse::new(404, API_CT, "not found in the wxedge sandbox"),
        }
    }

    fn random_token(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let h = xxh3_128_with_seed(&n.to_le_bytes(), self.seed);
        format!("{h:032x}")
    }

    fn req_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let h = xxh3_128_with_seed(&n.to_le_bytes(), self.seed ^ 0x5eed);
        format!("sbx{}", &format!("{h:032x}")[..11])
    }

    fn api_error(&self, errcode: i64, msg: &str) -> SandboxResponse {
        SandboxResponse::new(200, API_CT, self.api_error_body(errcode, msg))
    }

    fn api_error_body(&self, errcode: i64, msg: &str) -> String {
        let body = json!({
            "errcode": errcode,
            "errmsg": format!("{msg}, hints: [ req_id: {} ]", self.req_id()),
        });
        body.to_string()
    }

    fn api_ok(&self, v: serde_json::Value) -> SandboxResponse {
        SandboxResponse::new(200, API_CT, v.to_string())
    }

    fn access_token(&self, q: &HashMap<String, String>, now: u64) -> SandboxResponse {
        self.access_token_calls.fetch_add(1, Ordering::Relaxed);
        let code = match self.check_client(q) {
            Ok(code) => code,
            Err(r) => return r,
        };
        let (token, user_ix, userinfo) = match self.redeem(code, now) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let user = &self.cfg.users[user_ix];
        let mut v = json!({
            "access_token": token,
            "expires_in": TOKEN_TTL_SECS,
            "refresh_token": self.random_token(),
            "openid": user.openid,
            "scope": if userinfo { "snsapi_userinfo" } else { "snsapi_base" },
        });
        if user.snapshot {
            v["is_snapshotuser"] = json!(1);
        }
        if let Some(u) = &user.unionid {
            v["unionid"] = json!(u);
        }
        self.api_ok(v)
    }

    /// The code exchange's `appid`, `secret` and `grant_type` checked; its `code`.
    fn check_client<'q>(&self, q: &'q HashMap<String, String>) -> Result<&'q str, SandboxResponse> {
        match q.get("appid").map(String::as_str) {
            None | Some("") => return Err(self.api_error(41002, "appid missing")),
            Some(a) if a != self.cfg.appid => return Err(self.api_error(40013, "invalid appid")),
            _ => {}
        }
        match q.get("secret").map(String::as_str) {
            None | Some("") => return Err(self.api_error(41004, "appsecret missing")),
            Some(s) if s != self.cfg.secret => {
                return Err(self.api_error(40125, "invalid appsecret"))
            }
            _ => {}
        }
        if q.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return Err(self.api_error(40002, "invalid grant_type"));
        }
        match q.get("code").map(String::as_str) {
            None | Some("") => Err(self.api_error(41008, "missing code")),
            Some(c) => Ok(c),
        }
    }

    /// Uses `code` up and issues an access token for it, under one lock: (token, user, userinfo).
    fn redeem(&self, code: &str, now: u64) -> Result<(String, usize, bool), SandboxResponse> {
        let mut st = self.state.lock().unwrap();
        if !st.codes.contains_key(code) {
            // Issued on first use; then single-use like any other, while it is held.
            if let Some(user) = self.self_minted_user(code) {
                let entry = CodeEntry {
                    user,
                    userinfo: false,
                    issued: now,
                    used: false,
                    fail_first: None,
                };
                self.insert_code(&mut st, code.to_string(), entry, now);
            }
        }
        let Some(entry) = st.codes.get_mut(code) else {
            drop(st);
            return Err(self.api_error(40029, "invalid code"));
        };
        if now >= entry.issued.saturating_add(CODE_TTL_SECS) {
            st.codes.remove(code);
            drop(st);
            return Err(self.api_error(40029, "invalid code"));
        }
        if let Some(errcode) = entry.fail_first.take() {
            drop(st);
            return Err(self.api_error(errcode, "error injected by the sandbox (fail=)"));
        }
        if entry.used {
            drop(st);
            return Err(self.api_error(40163, "code been used"));
        }
        entry.used = true;
        let (user_ix, userinfo) = (entry.user, entry.userinfo);
        let token = self.random_token();
        make_room(
            &mut st.tokens,
            self.cfg.max_codes,
            |t| now < t.expires,
            |t| t.expires,
        );
        st.tokens.insert(
            token.clone(),
            TokenEntry {
                user: user_ix,
                userinfo,
                expires: now + TOKEN_TTL_SECS,
            },
        );
        Ok((token, user_ix, userinfo))
    }

    /// Checks `access_token` + `openid`; the token's (user, userinfo scope) or an error answer.
    fn check_token(
        &self,
        q: &HashMap<String, String>,
        now: u64,
    ) -> Result<(usize, bool), SandboxResponse> {
        let token = match q.get("access_token").map(String::as_str) {
            None | Some("") => return Err(self.api_error(41001, "access_token missing")),
            Some(t) => t,
        };
        let found = {
            let st = self.state.lock().unwrap();
            st.tokens
                .get(token)
                .filter(|t| now < t.expires)
                .map(|t| (t.user, t.userinfo))
        };
        let Some((user, userinfo)) = found else {
            return Err(self.api_error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            ));
        };
        match q.get("openid").map(String::as_str) {
            None | Some("") => Err(self.api_error(41009, "missing openid")),
            Some(o) if o != self.cfg.users[user].openid => {
                Err(self.api_error(40003, "invalid openid"))
            }
            _ => Ok((user, userinfo)),
        }
    }

    fn userinfo(&self, q: &HashMap<String, String>, now: u64) -> SandboxResponse {
        let (user, userinfo) = match self.check_token(q, now) {
            Ok(x) => x,
            Err(r) => return r,
        };
        if !userinfo {
            return self.api_error(48001, "api unauthorized");
        }
        let u = &self.cfg.users[user];
        let mut v = json!({
            "openid": u.openid,
            "nickname": u.nickname,
            "sex": 0,
            "province": "",
            "city": "",
            "country": "",
            "headimgurl": u.headimgurl,
            "privilege": [],
        });
        if let Some(un) = &u.unionid {
            v["unionid"] = json!(un);
        }
        self.api_ok(v)
    }

    fn auth(&self, q: &HashMap<String, String>, now: u64) -> SandboxResponse {
        match self.check_token(q, now) {
            Ok(_) => self.api_ok(json!({"errcode": 0, "errmsg": "ok"})),
            Err(r) => r,
        }
    }

    fn authorize(&self, q: &HashMap<String, String>, raw_query: &str, now: u64) -> SandboxResponse {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        let (redirect_uri, userinfo) = match self.check_authorize(q) {
            Ok(x) => x,
            Err(page) => return page,
        };
        let state = get("state");

        match get("auto") {
            "" => {}
            "deny" => return redirect(callback_location(redirect_uri, None, state)),
            key => {
                let fail = q.get("fail").and_then(|f| f.parse::<i64>().ok());
                return match self.issue_code_with(key, userinfo, fail, now) {
                    Some(code) => redirect(callback_location(redirect_uri, Some(&code), state)),
                    None => error_page(10016, "unknown sandbox user in auto="),
                };
            }
        }
        self.picker_page(raw_query, get("appid"), get("scope"), redirect_uri, state)
    }

    /// The authorize URL's `appid`, `redirect_uri`, `response_type` and `scope` checked as
    /// WeChat does (its error pages); the redirect URI and whether the scope is userinfo.
    fn check_authorize<'q>(
        &self,
        q: &'q HashMap<String, String>,
    ) -> Result<(&'q str, bool), SandboxResponse> {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        let appid = get("appid");
        if appid.is_empty() {
            return Err(error_page(10012, "appid 参数错误 (appid missing)"));
        }
        if appid != self.cfg.appid {
            return Err(error_page(40013, "invalid appid"));
        }
        let redirect_uri = get("redirect_uri");
        if redirect_uri.is_empty() {
            return Err(error_page(
                10011,
                "redirect_uri 参数错误 (redirect_uri missing)",
            ));
        }
        let Some(authority) = redirect_authority(redirect_uri) else {
            return Err(error_page(
                10011,
                "redirect_uri 参数错误 (not an http(s) URL)",
            ));
        };
        if !self.cfg.allowed_redirect_hosts.is_empty() && !self.redirect_allowed(authority) {
            return Err(error_page(10003, "redirect_uri 域名与后台配置不一致"));
        }
        if get("response_type") != "code" {
            return Err(error_page(10004, "response_type 参数错误 (must be code)"));
        }
        let userinfo = match get("scope") {
            "" => return Err(error_page(10010, "scope 参数错误 (scope missing)")),
            "snsapi_base" => false,
            "snsapi_userinfo" => true,
            _ => return Err(error_page(10005, "scope 参数错误或没有 scope 权限")),
        };
        Ok((redirect_uri, userinfo))
    }

    /// Whether the redirect URI's authority (`host` or `host:port`) is an authorized domain.
    fn redirect_allowed(&self, authority: &str) -> bool {
        let host = authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        });
        self.cfg
            .allowed_redirect_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(authority) || a.eq_ignore_ascii_case(host))
    }

    /// The picker page. Links repeat the query (minus auto=) with auto=<user>.
    fn picker_page(
        &self,
        raw_query: &str,
        appid: &str,
        scope: &str,
        redirect_uri: &str,
        state: &str,
    ) -> SandboxResponse {
        let base_query: String = raw_query
            .split('&')
            .filter(|kv| {
                let k = kv.split('=').next().unwrap_or("");
                k != "auto" && !k.is_empty()
            })
            .collect::<Vec<_>>()
            .join("&");
        let mut items = String::new();
        for u in &self.cfg.users {
            let href = format!(
                "authorize?{base_query}&auto={}",
                utf8_percent_encode(&u.key, QUERY_VALUE)
            );
            items.push_str(&format!(
                "<li><a class=\"user\" data-user=\"{k}\" href=\"{href}\"><b>{label}</b><br><small>openid {openid}{union}{snap}</small></a></li>\n",
                k = esc(&u.key),
                href = esc(&href),
                label = esc(&u.label),
                openid = esc(&u.openid),
                union = u
                    .unionid
                    .as_deref()
                    .map(|x| format!(" · unionid {}", esc(x)))
                    .unwrap_or_default(),
                snap = if u.snapshot { " · is_snapshotuser 1" } else { "" },
            ));
        }
        let deny_href = format!("authorize?{base_query}&auto=deny");
        let body = format!(
            "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <title>wxedge sandbox · 微信授权</title>\
             <style>body{{font-family:sans-serif;max-width:32rem;margin:1rem auto;padding:0 1rem}}\
             ul{{list-style:none;padding:0}}li{{margin:.6rem 0}}\
             a.user{{display:block;padding:.8rem;border:1px solid #ccc;border-radius:8px;text-decoration:none;color:#111}}\
             small{{color:#666;word-break:break-all}}.note{{color:#a60}}</style></head><body>\
             <h1>wxedge sandbox</h1>\
             <p class=\"note\">This is not WeChat: a local stand-in for development and tests.</p>\
             <p>appid <code>{appid}</code> · scope <code>{scope}</code><br>\
             redirect_uri <code>{redirect}</code><br>state <code>{state}</code></p>\
             <p>选择一个测试用户 / pick a test user:</p><ul>\n{items}</ul>\
             <p><a id=\"deny\" href=\"{deny}\">拒绝 / refuse (no code)</a></p></body></html>",
            appid = esc(appid),
            scope = esc(scope),
            redirect = esc(redirect_uri),
            state = esc(state),
            deny = esc(&deny_href),
        );
        SandboxResponse::new(200, HTML_CT, body)
    }

    fn index(&self) -> SandboxResponse {
        let mut users = String::new();
        for u in &self.cfg.users {
            users.push_str(&format!(
                "<li><code>{}</code>: {}</li>",
                esc(&u.key),
                esc(&u.label)
            ));
        }
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>wxedge sandbox</title></head><body>\
             <h1>wxedge sandbox</h1><p>A WeChat stand-in. appid <code>{}</code>.</p>\
             <p>Endpoints: <code>connect/oauth2/authorize</code>, <code>sns/oauth2/access_token</code>, \
             <code>sns/userinfo</code>, <code>sns/auth</code>, <code>cgi-bin/stable_token</code>, \
             <code>cgi-bin/ticket/getticket</code>; the JS-SDK stand-in at <code>jweixin.js</code>.</p>\
             <ul>{users}</ul></body></html>",
            esc(&self.cfg.appid)
        );
        SandboxResponse::new(200, HTML_CT, body)
    }
}

fn error_page(code: i64, msg: &str) -> SandboxResponse {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>wxedge sandbox · error</title></head>\
         <body><h1>Oops! Something went wrong :(</h1><p>错误码 <b id=\"errcode\">{code}</b>: {}</p></body></html>",
        esc(msg)
    );
    SandboxResponse::new(400, HTML_CT, body)
}

fn redirect(location: String) -> SandboxResponse {
    let body = format!("<!doctype html><a href=\"{}\">continue</a>", esc(&location));
    let mut r = SandboxResponse::new(302, HTML_CT, body);
    r.headers.push(("Location".into(), location));
    r
}

/// `scheme://authority` of an http(s) URL, refusing whitespace, controls and userinfo.
fn redirect_authority(uri: &str) -> Option<&str> {
    if uri
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'\\' || b == b'"' || b == b'<' || b == b'>')
    {
        return None;
    }
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(authority)
}

/// `redirect_uri` + `code`/`state`, inserted before any fragment (as WeChat does, which is why
/// hash-routed SPAs see `/?code=..&state=..#/page`). Non-ASCII bytes are percent-encoded.
fn callback_location(redirect_uri: &str, code: Option<&str>, state: &str) -> String {
    let (base, frag) = match redirect_uri.find('#') {
        Some(i) => redirect_uri.split_at(i),
        None => (redirect_uri, ""),
    };
    let sep = if base.ends_with('?') || base.ends_with('&') {
        ""
    } else if base.contains('?') {
        "&"
    } else {
        "?"
    };
    let mut params = String::new();
    if let Some(c) = code {
        params.push_str("code=");
        params.push_str(c);
        params.push('&');
    }
    params.push_str("state=");
    params.push_str(&utf8_percent_encode(state, QUERY_VALUE).to_string());
    let loc = format!("{base}{sep}{params}{frag}");
    let mut out = String::with_capacity(loc.len());
    for b in loc.bytes() {
        if b >= 0x80 {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// `application/x-www-form-urlencoded` query → first value per key (lossy UTF-8).
/// Makes room for one more entry in a map bounded by `max`: expired entries go first, then the
/// oldest tenth in one pass, so a load generator that keeps the sandbox full does not pay a
/// full scan for every code.
fn make_room<V>(
    map: &mut HashMap<String, V>,
    max: usize,
    live: impl Fn(&V) -> bool,
    age: impl Fn(&V) -> u64,
) {
    let max = max.max(1);
    if map.len() < max {
        return;
    }
    map.retain(|_, v| live(v));
    if map.len() < max {
        return;
    }
    let n = (map.len() + 1 - max).max(max / 10);
    let mut by_age: Vec<(u64, &String)> = map.iter().map(|(k, v)| (age(v), k)).collect();
    by_age.select_nth_unstable_by_key(n - 1, |(a, _)| *a);
    let oldest: Vec<String> = by_age[..n].iter().map(|(_, k)| (*k).clone()).collect();
    for k in oldest {
        map.remove(&k);
    }
}

/// Whether `path_and_query` is the code exchange (parsed like [`Sandbox::handle`] does).
fn is_access_token(path_and_query: &str) -> bool {
    let path = path_and_query.split(['#', '?']).next().unwrap_or("");
    path == "/sns/oauth2/access_token"
}

fn parse_query(q: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for kv in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let dec = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        m.entry(dec(k)).or_insert_with(|| dec(v));
    }
    m
}

use crate::html::escape as esc;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const NOW: u64 = 1_700_000_000;

    fn sb() -> Sandbox {
        Sandbox::new(SandboxConfig::new("wxSB", "sbsecret"))
    }

    fn token_path(code: &str) -> String {
        format!(
            "/sns/oauth2/access_token?appid=wxSB&secret=sbsecret&code={code}&grant_type=authorization_code"
        )
    }

    fn json_of(r: &SandboxResponse) -> Value {
        assert_eq!(r.content_type, "text/plain");
        serde_json::from_slice(&r.body).unwrap()
    }

    fn errcode(r: &SandboxResponse) -> i64 {
        json_of(r)["errcode"].as_i64().unwrap_or(0)
    }

    fn authorize(s: &Sandbox, extra: &str) -> SandboxResponse {
        s.handle(
            "GET",
            &format!(
                "/connect/oauth2/authorize?appid=wxSB&redirect_uri=https%3A%2F%2Fh5.example.com%2Fpages%2Fa&response_type=code&scope=snsapi_base&state=S1{extra}"
            ),
            NOW,
        )
    }

    fn code_from(location: &str) -> String {
        let q = location.split_once('?').unwrap().1;
        parse_query(q.split('#').next().unwrap())["code"].clone()
    }

    #[test]
    fn users_are_as_promised() {
        let s = sb();
        let normal = s.users().iter().filter(|u| !u.snapshot).count();
        assert!(normal >= 2);
        assert!(s.users().iter().any(|u| u.unionid.is_some() && !u.snapshot));
        assert!(s.users().iter().any(|u| u.snapshot));
        assert_eq!(s.user("alice").unwrap().openid.len(), 28);
        // openids are per appid, unionids are not.
        let other = Sandbox::new(SandboxConfig::new("wxOTHER", "x"));
        assert_ne!(
            other.user("alice").unwrap().openid,
            s.user("alice").unwrap().openid
        );
        assert_eq!(
            other.user("bob").unwrap().unionid,
            s.user("bob").unwrap().unionid
        );
    }

    #[test]
    fn authorize_page_lists_users_and_escapes() {
        let s = sb();
        let r = s.handle(
            "GET",
            "/connect/oauth2/authorize?appid=wxSB&redirect_uri=https%3A%2F%2Fh5.example.com%2F%3Fx%3D1%26y%3D%27a%27&response_type=code&scope=snsapi_userinfo&state=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E%3Cimg%3E#wechat_redirect",
            NOW,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, HTML_CT);
        let html = r.text();
        for u in s.users() {
            assert!(
                html.contains(&format!("data-user=\"{}\"", u.key)),
                "{}",
                u.key
            );
        }
        assert!(!html.contains("<script>") && !html.contains("<img>"));
        assert!(html.contains("&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img&gt;"));
        assert!(html.contains("https://h5.example.com/?x=1&amp;y=&#39;a&#39;"));
        assert!(html.contains("auto=alice") && html.contains("auto=deny"));
        // The page issues no code by itself.
        assert_eq!(s.codes_held(), 0);
    }

    #[test]
    fn auto_redirects_with_fresh_codes() {
        let s = sb();
        let r = authorize(&s, "&auto=alice");
        assert_eq!(r.status, 302);
        let loc = r.header("location").unwrap().to_string();
        assert!(
            loc.starts_with("https://h5.example.com/pages/a?code="),
            "{loc}"
        );
        assert!(loc.ends_with("&state=S1"));
        let r2 = authorize(&s, "&auto=alice");
        assert_ne!(code_from(&loc), code_from(r2.header("Location").unwrap()));

        // Fragment and existing query.
        let r = s.handle(
            "GET",
            "/connect/oauth2/authorize?appid=wxSB&redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2F%3Fa%3D1%23%2Fpages%2Fx&response_type=code&scope=snsapi_base&state=st&auto=bob",
            NOW,
        );
        let loc = r.header("Location").unwrap();
        assert!(loc.starts_with("http://127.0.0.1:8080/?a=1&code="), "{loc}");
        assert!(loc.ends_with("&state=st#/pages/x"), "{loc}");

        // Refusal: no code.
        let r = authorize(&s, "&auto=deny");
        assert_eq!(
            r.header("Location"),
            Some("https://h5.example.com/pages/a?state=S1")
        );
        assert_eq!(authorize(&s, "&auto=nobody").status, 400);
    }

    #[test]
    fn authorize_errors() {
        let s = Sandbox::new(SandboxConfig {
            allowed_redirect_hosts: vec!["h5.example.com".into()],
            ..SandboxConfig::new("wxSB", "sbsecret")
        });
        let page = |q: &str| s.handle("GET", &format!("/connect/oauth2/authorize?{q}"), NOW);
        let code_in = |r: SandboxResponse| -> String {
            assert_eq!(r.status, 400);
            let t = r.text();
            let i = t.find("id=\"errcode\">").unwrap() + 13;
            t[i..].split('<').next().unwrap().to_string()
        };
        let ok_uri = "redirect_uri=https%3A%2F%2Fh5.example.com%3A443%2F";
        assert_eq!(
            code_in(page(&format!(
                "{ok_uri}&response_type=code&scope=snsapi_base"
            ))),
            "10012"
        );
        assert_eq!(
            code_in(page(&format!(
                "appid=wxX&{ok_uri}&response_type=code&scope=snsapi_base"
            ))),
            "40013"
        );
        assert_eq!(
            code_in(page("appid=wxSB&response_type=code&scope=snsapi_base")),
            "10011"
        );
        assert_eq!(code_in(page("appid=wxSB&redirect_uri=javascript%3Aalert(1)&response_type=code&scope=snsapi_base")), "10011");
        assert_eq!(code_in(page("appid=wxSB&redirect_uri=https%3A%2F%2Fh5.example.com%0d%0aX%3A1&response_type=code&scope=snsapi_base")), "10011");
        assert_eq!(code_in(page("appid=wxSB&redirect_uri=https%3A%2F%2Fevil.com%2F&response_type=code&scope=snsapi_base")), "10003");
        assert_eq!(
            code_in(page(&format!(
                "appid=wxSB&{ok_uri}&response_type=token&scope=snsapi_base"
            ))),
            "10004"
        );
        assert_eq!(
            code_in(page(&format!("appid=wxSB&{ok_uri}&response_type=code"))),
            "10010"
        );
        assert_eq!(
            code_in(page(&format!(
                "appid=wxSB&{ok_uri}&response_type=code&scope=snsapi_login"
            ))),
            "10005"
        );
        let r = page(&format!(
            "appid=wxSB&{ok_uri}&response_type=code&scope=snsapi_base&auto=alice"
        ));
        assert_eq!(r.status, 302);
        assert_eq!(
            s.handle("DELETE", "/connect/oauth2/authorize", NOW).status,
            405
        );
        assert_eq!(s.handle("GET", "/nope", NOW).status, 404);
    }

    #[test]
    fn access_token_error_codes() {
        let s = sb();
        let code = s.issue_code("alice", false, NOW).unwrap();
        let call = |p: &str| errcode(&s.handle("GET", p, NOW));
        let base = "/sns/oauth2/access_token";
        assert_eq!(
            call(&format!(
                "{base}?secret=sbsecret&code={code}&grant_type=authorization_code"
            )),
            41002
        );
        assert_eq!(
            call(&format!(
                "{base}?appid=wxNO&secret=sbsecret&code={code}&grant_type=authorization_code"
            )),
            40013
        );
        assert_eq!(
            call(&format!(
                "{base}?appid=wxSB&code={code}&grant_type=authorization_code"
            )),
            41004
        );
        assert_eq!(
            call(&format!(
                "{base}?appid=wxSB&secret=bad&code={code}&grant_type=authorization_code"
            )),
            40125
        );
        assert_eq!(
            call(&format!("{base}?appid=wxSB&secret=sbsecret&code={code}")),
            40002
        );
        assert_eq!(
            call(&format!(
                "{base}?appid=wxSB&secret=sbsecret&code={code}&grant_type=client_credential"
            )),
            40002
        );
        assert_eq!(
            call(&format!(
                "{base}?appid=wxSB&secret=sbsecret&grant_type=authorization_code"
            )),
            41008
        );
        assert_eq!(call(&token_path("unknown")), 40029);
        // None of the failures consumed the code.
        let ok = s.handle("GET", &token_path(&code), NOW + 10);
        let v = json_of(&ok);
        assert_eq!(v["openid"], s.user("alice").unwrap().openid.as_str());
        assert_eq!(v["scope"], "snsapi_base");
        assert!(v.get("unionid").is_none() && v.get("is_snapshotuser").is_none());
        assert!(v.get("errcode").is_none());
        // Second use.
        let again = s.handle("GET", &token_path(&code), NOW + 11);
        assert_eq!(errcode(&again), 40163);
        let msg = json_of(&again)["errmsg"].as_str().unwrap().to_string();
        assert!(
            msg.starts_with("code been used, hints: [ req_id: sbx") && msg.ends_with(" ]"),
            "{msg}"
        );
        assert_eq!(s.access_token_calls(), 10);
        assert_eq!(s.handle("PUT", &token_path(&code), NOW).status, 405);
    }

    #[test]
    fn codes_expire_after_five_minutes() {
        let s = sb();
        let c1 = s.issue_code("bob", false, NOW).unwrap();
        let c2 = s.issue_code("bob", false, NOW).unwrap();
        assert_eq!(
            errcode(&s.handle("GET", &token_path(&c1), NOW + CODE_TTL_SECS)),
            40029
        );
        let v = json_of(&s.handle("GET", &token_path(&c2), NOW + CODE_TTL_SECS - 1));
        assert_eq!(
            v["unionid"],
            s.user("bob").unwrap().unionid.clone().unwrap().as_str()
        );
    }

    #[test]
    fn snapshot_user_and_userinfo() {
        let s = sb();
        let c = s.issue_code("snap", true, NOW).unwrap();
        let v = json_of(&s.handle("POST", &token_path(&c), NOW));
        assert_eq!(v["is_snapshotuser"], 1);
        assert_eq!(v["scope"], "snsapi_userinfo");
        let at = v["access_token"].as_str().unwrap().to_string();
        let openid = v["openid"].as_str().unwrap().to_string();
        let ui = json_of(&s.handle(
            "GET",
            &format!("/sns/userinfo?access_token={at}&openid={openid}&lang=zh_CN"),
            NOW,
        ));
        assert_eq!(ui["nickname"], "微信用户");
        assert_eq!(ui["openid"], openid.as_str());
        assert_eq!(
            errcode(&s.handle(
                "GET",
                &format!("/sns/userinfo?access_token={at}&openid=oOther"),
                NOW
            )),
            40003
        );
        assert_eq!(
            errcode(&s.handle("GET", &format!("/sns/userinfo?access_token={at}"), NOW)),
            41009
        );
        assert_eq!(
            errcode(&s.handle("GET", &format!("/sns/userinfo?openid={openid}"), NOW)),
            41001
        );
        assert_eq!(
            errcode(&s.handle(
                "GET",
                &format!("/sns/userinfo?access_token=nope&openid={openid}"),
                NOW
            )),
            40001
        );
        assert_eq!(
            errcode(&s.handle(
                "GET",
                &format!("/sns/userinfo?access_token={at}&openid={openid}"),
                NOW + TOKEN_TTL_SECS
            )),
            40001
        );
        // /sns/auth
        let ok = json_of(&s.handle(
            "GET",
            &format!("/sns/auth?access_token={at}&openid={openid}"),
            NOW,
        ));
        assert_eq!(ok["errcode"], 0);
        assert_eq!(ok["errmsg"], "ok");
        assert_eq!(
            errcode(&s.handle(
                "GET",
                &format!("/sns/auth?access_token=x&openid={openid}"),
                NOW
            )),
            40001
        );

        // snsapi_base token → 48001 on userinfo; unionid in userinfo for bob.
        let c = s.issue_code("bob", false, NOW).unwrap();
        let v = json_of(&s.handle("GET", &token_path(&c), NOW));
        let (at, oid) = (
            v["access_token"].as_str().unwrap(),
            v["openid"].as_str().unwrap(),
        );
        assert_eq!(
            errcode(&s.handle(
                "GET",
                &format!("/sns/userinfo?access_token={at}&openid={oid}"),
                NOW
            )),
            48001
        );
        let c = s.issue_code("bob", true, NOW).unwrap();
        let v = json_of(&s.handle("GET", &token_path(&c), NOW));
        let (at, oid) = (
            v["access_token"].as_str().unwrap(),
            v["openid"].as_str().unwrap(),
        );
        let ui = json_of(&s.handle(
            "GET",
            &format!("/sns/userinfo?access_token={at}&openid={oid}"),
            NOW,
        ));
        assert_eq!(ui["unionid"], v["unionid"]);
    }

    #[test]
    fn injected_failure_then_success() {
        let s = sb();
        let r = authorize(&s, "&auto=alice&fail=-1");
        let code = code_from(r.header("Location").unwrap());
        assert_eq!(errcode(&s.handle("GET", &token_path(&code), NOW)), -1);
        assert!(json_of(&s.handle("GET", &token_path(&code), NOW))["openid"].is_string());
        assert_eq!(errcode(&s.handle("GET", &token_path(&code), NOW)), 40163);
    }

    #[test]
    fn self_minted_codes_are_single_use() {
        let s = sb();
        let v = json_of(&s.handle("GET", &token_path("auto-bob-7"), NOW));
        assert_eq!(v["openid"], s.user("bob").unwrap().openid.as_str());
        assert_eq!(v["scope"], "snsapi_base");
        assert_eq!(
            errcode(&s.handle("GET", &token_path("auto-bob-7"), NOW)),
            40163
        );
        let v = json_of(&s.handle("GET", &token_path("auto-snap-x_1"), NOW));
        assert_eq!(v["is_snapshotuser"], 1);
        for bad in ["auto-bob-", "auto-bob", "auto-nobody-1", "xauto-bob-1"] {
            assert_eq!(
                errcode(&s.handle("GET", &token_path(bad), NOW)),
                40029,
                "{bad}"
            );
        }
        // Held like issued codes: bounded, and they expire.
        assert_eq!(s.codes_held(), 2);
        assert_eq!(
            errcode(&s.handle("GET", &token_path("auto-bob-7"), NOW + CODE_TTL_SECS)),
            40029
        );
    }

    #[tokio::test]
    async fn latency_delays_only_the_code_exchange() {
        let s = Sandbox::new(SandboxConfig {
            latency: Duration::from_millis(300),
            ..SandboxConfig::new("wxSB", "sbsecret")
        });
        let t = std::time::Instant::now();
        let r = s
            .handle_delayed("GET", &token_path("auto-alice-1"), NOW)
            .await;
        assert!(json_of(&r)["openid"].is_string());
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        let t = std::time::Instant::now();
        let r = s
            .handle_delayed("GET", "/connect/oauth2/authorize?appid=wxSB", NOW)
            .await;
        assert_eq!(r.status, 400);
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "the authorize page is not delayed"
        );
    }

    #[test]
    fn issued_codes_are_bounded() {
        let s = Sandbox::new(SandboxConfig {
            max_codes: 5,
            ..SandboxConfig::new("wxSB", "sbsecret")
        });
        let first = s.issue_code("alice", false, NOW).unwrap();
        for i in 0..20 {
            s.issue_code("alice", false, NOW + 1 + i).unwrap();
        }
        assert_eq!(s.codes_held(), 5);
        // The oldest went first.
        assert_eq!(
            errcode(&s.handle("GET", &token_path(&first), NOW + 30)),
            40029
        );
        // Expired ones are purged when full.
        for _ in 0..3 {
            s.issue_code("bob", false, NOW + 10_000).unwrap();
        }
        assert_eq!(s.codes_held(), 3);
    }

    #[test]
    fn a_full_sandbox_drops_its_oldest_tenth_at_once() {
        let s = Sandbox::new(SandboxConfig {
            max_codes: 100,
            ..SandboxConfig::new("wxSB", "sbsecret")
        });
        let codes: Vec<String> = (0..150)
            .map(|i| s.issue_code("alice", false, NOW + i).unwrap())
            .collect();
        // Full at the 101st code: the oldest 10 went at once, and again every 10 codes.
        assert_eq!(s.codes_held(), 100);
        assert_eq!(
            errcode(&s.handle("GET", &token_path(&codes[49]), NOW + 200)),
            40029
        );
        assert!(
            json_of(&s.handle("GET", &token_path(&codes[50]), NOW + 200))["openid"].is_string()
        );
    }

    #[tokio::test]
    async fn client_and_exchanger_against_sandbox_over_http() {
        use crate::wechat::testserver::{Reply, TestServer};
        use crate::wechat::{
            CodeExchanger, MemoryCodeCache, Obtained, WechatClient, WechatClientConfig,
        };
        use std::sync::Arc;

        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let s = Arc::new(sb());
        let s2 = s.clone();
        let srv = TestServer::start(Arc::new(move |_n, p| {
            let r = s2.handle("GET", &p, now());
            Reply::Full {
                status: r.status,
                content_type: r.content_type.to_string(),
                headers: r.headers,
                body: r.body,
            }
        }))
        .await;
        let client = Arc::new(
            WechatClient::new(WechatClientConfig::new(srv.base(), "wxSB", "sbsecret")).unwrap(),
        );
        let ex = CodeExchanger::new(
            client.clone(),
            Arc::new(MemoryCodeCache::default()),
            crate::wechat::ExchangerConfig::default(),
        );

        let r = s.handle(
            "GET",
            "/connect/oauth2/authorize?appid=wxSB&redirect_uri=http%3A%2F%2F127.0.0.1%2F&response_type=code&scope=snsapi_userinfo&state=x&auto=bob",
            now(),
        );
        let code = code_from(r.header("Location").unwrap());
        let first = ex.redeem(&code).await;
        assert_eq!(first.obtained, Obtained::Fresh);
        let x = first.outcome.as_ref().as_ref().unwrap();
        assert_eq!(x.token.openid, s.user("bob").unwrap().openid);
        assert_eq!(x.userinfo.as_ref().unwrap().nickname, "Bob 鲍勃");
        assert_eq!(x.unionid(), s.user("bob").unwrap().unionid.as_deref());
        assert!(!x.token.is_snapshotuser);
        // The same code again: cached, WeChat (the sandbox) asked once.
        assert_eq!(ex.redeem(&code).await.obtained, Obtained::Cached);
        assert_eq!(s.access_token_calls(), 1);
        // Used code straight to the client: 40163 with the sandbox's req_id.
        match client.exchange_code(&code).await.unwrap_err() {
            crate::wechat::ExchangeError::WeChat {
                errcode, req_id, ..
            } => {
                assert_eq!(errcode, 40163);
                assert!(req_id.unwrap().starts_with("sbx"));
            }
            e => panic!("{e:?}"),
        }
        // Snapshot user through the client.
        let c = s.issue_code("snap", false, now()).unwrap();
        let t = client.exchange_code(&c).await.unwrap();
        assert!(t.is_snapshotuser);
        // Wrong secret.
        let bad = WechatClient::new(WechatClientConfig::new(srv.base(), "wxSB", "wrong")).unwrap();
        let c = s.issue_code("alice", false, now()).unwrap();
        let e = bad.exchange_code(&c).await.unwrap_err();
        assert_eq!(e.errcode(), Some(40125));
        assert!(e.is_config_problem());
        // Injected busy answer: the client retries once and succeeds.
        let r = s.handle(
            "GET",
            "/connect/oauth2/authorize?appid=wxSB&redirect_uri=http%3A%2F%2F127.0.0.1%2F&response_type=code&scope=snsapi_base&state=x&auto=alice&fail=-1",
            now(),
        );
        let c = code_from(r.header("Location").unwrap());
        let before = s.access_token_calls();
        assert!(client.exchange_code(&c).await.is_ok());
        assert_eq!(s.access_token_calls(), before + 2);
    }

    #[test]
    fn helpers() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let q = parse_query("a=1&a=2&b=x+y%20z&c&=v");
        assert_eq!(q["a"], "1");
        assert_eq!(q["b"], "x y z");
        assert_eq!(q["c"], "");
        assert_eq!(
            callback_location("https://x/p?", Some("C"), "s t"),
            "https://x/p?code=C&state=s%20t"
        );
        assert_eq!(
            callback_location("https://x/页", None, "s"),
            "https://x/%E9%A1%B5?state=s"
        );
        assert_eq!(redirect_authority("https://u@evil.com/"), None);
        assert_eq!(redirect_authority("http://h:1/x"), Some("h:1"));
    }
}
