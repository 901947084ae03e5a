//! The settings as read (file, then environment, then defaults), before validation: the data
//! both the YAML file and the environment overrides (`env.rs`) fill in, and the error both report.

use std::path::PathBuf;

use serde::Deserialize;

/// A configuration problem, worded for the operator: one line, no backtrace.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Everything wxedge reads, after file + environment + defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Public listeners, `host:port`.
    pub listen: Vec<String>,
    /// Public listeners whose connections start with a PROXY protocol header (v1 or v2), from
    /// a load balancer listed in `real_ip.trusted`.
    pub listen_proxy_protocol: Vec<String>,
    /// Who may tell the edge the client's address.
    pub real_ip: RealIpSettings,
    /// HTTPS (and HTTP/2) listeners, certificates, the HTTP→HTTPS redirect, HSTS.
    pub tls: TlsSettings,
    /// The H5 build folder.
    pub dist: PathBuf,
    /// Tokens whose `/MP_verify_<token>.txt` is always served, whatever `dist/` holds.
    pub mp_verify: Vec<String>,
    pub static_files: StaticSettings,
    pub proxy: ProxySettings,
    pub wechat: WechatSettings,
    pub session: SessionSettings,
    pub ops: OpsSettings,
    /// Request rates per client address (nginx's `limit_req`).
    pub limits: LimitSettings,
    /// Redis shared by the replicas (code cache, session revocation); empty = none.
    pub redis_url: String,
    /// Bound of one Redis operation; past it the edge goes on without Redis.
    pub redis_timeout_ms: u64,
}

/// nginx's `limit_req`, keyed by the real client address (an IPv6 client by its /64): a rate
/// with a burst for the requests that cost WeChat calls or state (every `/_wxedge/` endpoint
/// but health and the sandbox, and page loads carrying an OAuth `code`), and for prefixes the
/// site names. Past it: 429 with `Retry-After`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Login requests per second per client address; 0 = no limit.
    pub login_rate: u32,
    /// Login requests a client may make at once before the rate applies.
    pub login_burst: u32,
    /// More limits, each for the paths under a prefix.
    pub prefixes: Vec<PrefixLimit>,
    /// Open connections per client address (nginx's `limit_conn`); 0 = no bound.
    pub connections_per_client: u32,
    /// WeChat API calls in flight at once, all clients together.
    pub wechat_in_flight: usize,
    /// Calls that may wait for a place; past it a login gets "busy, retry" at once.
    pub wechat_queue: usize,
    /// The longest wait for a place.
    pub wechat_queue_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixLimit {
    pub prefix: String,
    /// Requests per second per client address.
    pub rate: u32,
    pub burst: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        // A login is 3 or 4 of these (the page with its code, perhaps loaded twice by WeChat's
        // browser, /_wxedge/login, /_wxedge/callback): 20 at once and 5 a second never touch a
        // person, even several behind one NAT address, yet hold a flood of forged codes from
        // one address to 5 WeChat calls a second.
        LimitSettings {
            login_rate: 5,
            login_burst: 20,
            prefixes: Vec::new(),
            // A browser opens 6 to a host; a few dozen people behind one NAT address stay
            // well inside it, one client opening thousands does not.
            connections_per_client: 256,
            // WeChat answers in 50-200 ms: 64 at once is hundreds of logins a second.
            wechat_in_flight: 64,
            wechat_queue: 256,
            wechat_queue_ms: 1000,
        }
    }
}

/// nginx's `listen 443 ssl http2`, `ssl_certificate`, and the port-80 server that redirects.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// HTTPS listeners, `host:port`.
    pub listen: Vec<String>,
    /// HTTPS listeners whose connections start with a PROXY protocol header (before TLS).
    pub listen_proxy_protocol: Vec<String>,
    /// Certificate chains and keys (PEM); chosen by the name the client asks for (SNI), the
    /// first one for any other name.
    pub certificates: Vec<crate::tls::CertificateFiles>,
    /// Offer HTTP/2 (ALPN `h2`) beside HTTP/1.1.
    pub http2: bool,
    /// `Strict-Transport-Security` value on every HTTPS answer; empty = none.
    pub hsts: String,
    /// Plain-HTTP listeners that answer `301` to `https://host/path?query`, except
    /// `/MP_verify_*.txt` and `/.well-known/acme-challenge/` (WeChat's domain check and
    /// certificate renewal use plain HTTP).
    pub redirect_listen: Vec<String>,
    /// Where an ACME client (certbot `--webroot -w DIR`) writes `.well-known/acme-challenge/`;
    /// empty = the dist folder.
    pub acme_webroot: String,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            listen: vec![],
            listen_proxy_protocol: vec![],
            certificates: vec![],
            http2: true,
            hsts: String::new(),
            redirect_listen: vec![],
            acme_webroot: String::new(),
        }
    }
}

/// nginx's `set_real_ip_from` / `real_ip_header` / `real_ip_recursive on`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealIpSettings {
    /// Addresses or CIDRs of load balancers and proxies whose forwarding headers (and PROXY
    /// protocol headers) are believed.
    pub trusted: Vec<String>,
    /// `X-Forwarded-For` (walked right to left past trusted hops) or `X-Real-IP`.
    pub header: String,
}

impl Default for RealIpSettings {
    fn default() -> Self {
        RealIpSettings {
            trusted: vec![],
            header: "X-Forwarded-For".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticSettings {
    /// History-mode fallback to `/index.html` for navigations.
    pub spa_fallback: bool,
    /// Prefixes that never fall back to `index.html` (a missing asset is a real 404).
    pub fallback_exclude: Vec<String>,
    /// Upper bound of the bytes (files and their compressed variants) kept in memory.
    pub memory_max_bytes: u64,
    /// Files larger than this are served from disk.
    pub memory_max_file_bytes: u64,
    /// Text files at least this large get gzip and br variants (in the background after start-up,
    /// or ahead of time by `wxedge compress`).
    pub compress_min_bytes: u64,
    /// A directory where variants made in the background are kept by content, for the next start
    /// and other versions; empty = none.
    pub compress_cache: String,
    /// `Cache-Control` overrides by path prefix; the longest matching prefix wins.
    pub cache_control: Vec<CacheRule>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    pub prefix: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySettings {
    /// Path prefixes forwarded to the backend.
    pub prefixes: Vec<String>,
    /// Backend base URLs, `http://host:port`; round-robin, skipping unhealthy ones.
    pub backends: Vec<String>,
    /// `Host` sent upstream; empty = the client's own `Host` (like `proxy_set_header Host $host`).
    pub host: String,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// Request bodies above this are refused with 413.
    pub max_body_bytes: u64,
    /// The most of one request body kept in memory (nginx's `client_body_buffer_size`); the
    /// rest waits in an unnamed temporary file until the body is whole and sent on.
    pub body_buffer_bytes: u64,
    /// The directory of those temporary files (nginx's `client_body_temp_path`); empty = the
    /// system's (`TMPDIR`, else `/tmp`).
    pub body_temp_dir: String,
    /// The most bytes all request bodies may hold in temporary files at once; a new upload
    /// past it gets 503.
    pub body_temp_max_bytes: u64,
    /// How long a backend that refused a connection is skipped.
    pub backend_retry_seconds: u64,
    /// Upstream keep-alive idle timeout.
    pub keepalive_idle_seconds: u64,
    /// Drop client request headers whose names contain `_` (nginx's `underscores_in_headers off`).
    pub drop_underscore_headers: bool,
    /// Active health checks of the backends (nginx Plus's `health_check`).
    pub health_check: HealthCheckSettings,
}

/// Active health checks: each backend is checked every `interval_ms` in the background, and
/// leaves the rotation after `fails` failed checks in a row, until `passes` pass in a row.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckSettings {
    /// `GET` this path (and query) on each backend, expecting a 2xx or 3xx answer; empty = a
    /// TCP connect check.
    pub path: String,
    /// Between the starts of two rounds of checks; 0 = no active checks (passive health only:
    /// a refused connection, `backend_retry_seconds`).
    pub interval_ms: u64,
    /// One check's bound: connecting, sending, and the answer's head and body.
    pub timeout_ms: u64,
    /// Consecutive failed checks that take a backend out of the rotation.
    pub fails: usize,
    /// Consecutive passed checks that bring it back.
    pub passes: usize,
}

/// On by default, as a TCP connect check: it needs no path the backend must serve, costs one
/// connection per backend every 5 s, and takes a backend that stopped accepting (or whose host
/// vanished, where every request would wait `connect_timeout_ms`) out of the rotation before
/// requests meet it. 1 s bounds a check on a network where connecting takes a millisecond (and
/// a health endpoint slower than that is itself a sign of trouble). Two failures, not one: a
/// single lost check does not move traffic (a refused request still marks a backend down at
/// once); two passes: a restarting backend that accepts once is not sent traffic before it is
/// steady. Out within ~10 s, back within ~10 s.
impl Default for HealthCheckSettings {
    fn default() -> Self {
        HealthCheckSettings {
            path: String::new(),
            interval_ms: 5_000,
            timeout_ms: 1_000,
            fails: 2,
            passes: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WechatSettings {
    /// The login at the edge; off leaves only static files and the proxy (identity headers are
    /// still stripped from clients).
    pub enabled: bool,
    pub appid: String,
    pub secret: String,
    /// Where the edge calls `sns/*`; empty = real WeChat or the sandbox.
    pub api_base: String,
    /// Where the browser is sent to authorize; empty = real WeChat or the sandbox.
    pub open_base: String,
    pub scope: String,
    /// Run the built-in WeChat stand-in (defaults to on when no appid is configured).
    pub sandbox: Option<bool>,
    pub connect_timeout_ms: u64,
    pub timeout_ms: u64,
    /// The sandbox's delay before answering a code exchange, to measure the callback against
    /// a WeChat as slow as the real one; 0 = at once.
    pub sandbox_latency_ms: u64,
    /// Paths whose `?code=&state=` page loads are intercepted; empty = any page of the SPA.
    pub callback_paths: Vec<String>,
    /// `state` values accepted on frontend-started callbacks; empty = any (see
    /// docs/wechat-login.md: login CSRF).
    pub frontend_states: Vec<String>,
    /// The site's public origin (`https://h5.example.com`) for the edge-started login's
    /// `redirect_uri`; empty = taken from the request's Host.
    pub public_url: String,
    /// Listener for the WeChat-compatible `GET /sns/oauth2/access_token` (unchanged backends); empty = off.
    pub compat_listen: String,
    /// `GET /_wxedge/jssdk/config`: `wx.config` signatures, over the account's access_token and
    /// jsapi_ticket, which this edge then fetches and keeps fresh.
    pub jssdk: bool,
    /// Origins (`https://h5.example.com`) whose pages are signed besides the request's own
    /// `Host` and `public_url`'s.
    pub jssdk_origins: Vec<String>,
    /// The sandbox's 网页授权域名: hosts (`host` or `host:port`) its authorize page accepts in
    /// `redirect_uri` (10003 otherwise, as WeChat); empty = any.
    pub sandbox_authorized_domains: Vec<String>,
    /// Login relay, on the edge owning the authorized domain: the exact origins
    /// (`https://shop.example.com`) it logs users in for; empty = no relay here.
    pub relay_targets: Vec<String>,
    /// Secrets (≥ 32 bytes) the relay edge and its identity-relay targets share to seal tickets;
    /// the first seals, all open. Never the session key.
    pub relay_key: Vec<String>,
    /// On a target site: the relay edge's origin; its edge-started login goes through it.
    pub relay_url: String,
    /// On a target site: `ticket` (identity relay, the default) or `code` (code relay).
    pub relay_mode: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    pub cookie_name: String,
    pub keys: Vec<String>,
    pub lifetime_seconds: u64,
    pub cookie_secure: bool,
    /// Proxied prefixes that answer 401 without a session instead of reaching the backend.
    pub require_session: Vec<String>,
    pub identity_headers: IdentityHeaderNames,
}

/// Header names the backend receives the verified identity in.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityHeaderNames {
    pub openid: String,
    pub unionid: String,
    pub scope: String,
    pub snapshot: String,
    pub nickname: String,
    pub avatar: String,
}

impl IdentityHeaderNames {
    /// Every identity header, in one list: what the edge injects for a session and strips
    /// from every client request (openid, unionid, scope, snapshot, nickname, avatar).
    pub fn all(&self) -> [&str; 6] {
        [
            &self.openid,
            &self.unionid,
            &self.scope,
            &self.snapshot,
            &self.nickname,
            &self.avatar,
        ]
    }
}

impl Default for IdentityHeaderNames {
    fn default() -> Self {
        IdentityHeaderNames {
            openid: "X-WX-OpenID".into(),
            unionid: "X-WX-UnionID".into(),
            scope: "X-WX-Scope".into(),
            snapshot: "X-WX-Snapshot".into(),
            nickname: "X-WX-Nickname".into(),
            avatar: "X-WX-Avatar".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsSettings {
    /// `combined`, `json` or `off`.
    pub access_log: String,
    /// Where access-log lines go: a file appended to; empty = stdout.
    pub access_log_path: String,
    /// Prometheus listener, empty = off.
    pub metrics_listen: String,
    /// Largest request head (request line and headers) accepted; more is 431.
    pub max_header_bytes: usize,
    /// Whole-head deadline from its first byte (nginx's `client_header_timeout`).
    pub client_header_timeout_ms: u64,
    /// Longest wait between two reads of a request body (nginx's `client_body_timeout`).
    pub client_body_timeout_ms: u64,
    /// Longest wait for the client to take a part of an answer (nginx's `send_timeout`).
    pub send_timeout_ms: u64,
    /// Idle keep-alive connections close after this (nginx's `keepalive_timeout`).
    pub keepalive_timeout_seconds: u64,
    /// Most client connections at once (nginx's `worker_connections`); 0 = from the open-file
    /// limit (half of it, less a reserve: a proxied request holds two descriptors).
    pub max_connections: usize,
    /// Retired: every request now takes the one answer path. Still accepted, so a
    /// configuration that sets it keeps loading; start-up warns that it does nothing.
    pub short_path: Option<bool>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: vec!["127.0.0.1:8080".into()],
            listen_proxy_protocol: vec![],
            real_ip: RealIpSettings::default(),
            tls: TlsSettings::default(),
            dist: PathBuf::from("dist"),
            mp_verify: vec![],
            static_files: StaticSettings::default(),
            proxy: ProxySettings::default(),
            wechat: WechatSettings::default(),
            session: SessionSettings::default(),
            ops: OpsSettings::default(),
            limits: LimitSettings::default(),
            redis_url: String::new(),
            redis_timeout_ms: 50,
        }
    }
}

// Written out, not derived: a file with a partial `wechat:` or `session:` section keeps the
// defaults of the keys it leaves out (a derived default would turn the login off, with zero
// timeouts, and leave the cookie without a name).
impl Default for WechatSettings {
    fn default() -> Self {
        WechatSettings {
            enabled: true,
            appid: String::new(),
            secret: String::new(),
            api_base: String::new(),
            open_base: String::new(),
            scope: "snsapi_base".into(),
            sandbox: None,
            connect_timeout_ms: 2_000,
            timeout_ms: 5_000,
            sandbox_latency_ms: 0,
            callback_paths: vec![],
            frontend_states: vec![],
            public_url: String::new(),
            compat_listen: String::new(),
            jssdk: true,
            jssdk_origins: vec![],
            sandbox_authorized_domains: vec![],
            relay_targets: vec![],
            relay_key: vec![],
            relay_url: String::new(),
            relay_mode: String::new(), // ticket, when relay_url is set
        }
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            cookie_name: "wxedge_session".into(),
            keys: vec![],
            lifetime_seconds: 7 * 24 * 3600,
            cookie_secure: true,
            require_session: vec![],
            identity_headers: IdentityHeaderNames::default(),
        }
    }
}

impl Default for StaticSettings {
    fn default() -> Self {
        StaticSettings {
            spa_fallback: true,
            fallback_exclude: vec!["/assets/".into(), "/static/".into()],
            memory_max_bytes: 256 << 20,
            memory_max_file_bytes: 16 << 20,
            compress_min_bytes: 1024,
            compress_cache: String::new(),
            cache_control: vec![],
        }
    }
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            prefixes: vec!["/api/".into()],
            backends: vec![],
            host: String::new(),
            connect_timeout_ms: 2_000,
            read_timeout_ms: 60_000,
            write_timeout_ms: 60_000,
            max_body_bytes: 10 << 20,
            body_buffer_bytes: 16 * 1024,
            body_temp_dir: String::new(),
            body_temp_max_bytes: 1 << 30,
            backend_retry_seconds: 10,
            keepalive_idle_seconds: 60,
            drop_underscore_headers: true,
            health_check: HealthCheckSettings::default(),
        }
    }
}

impl Default for OpsSettings {
    fn default() -> Self {
        OpsSettings {
            access_log: "combined".into(),
            access_log_path: String::new(),
            metrics_listen: String::new(),
            max_header_bytes: 32 * 1024,
            client_header_timeout_ms: 60_000,
            client_body_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            keepalive_timeout_seconds: 60,
            max_connections: 0,
            short_path: None,
        }
    }
}
