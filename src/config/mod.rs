//! Configuration: one YAML file (Pingora's server keys at the top level, ours under `wxedge:`),
//! then environment variables on top, then validation. Every setting has an environment
//! variable; secrets may also come from `NAME_FILE`.

mod env;

use std::net::SocketAddr;
use std::path::PathBuf;

use pingora::server::configuration::ServerConf;
use serde::Deserialize;

pub use env::{EnvSource, ProcessEnv, VARIABLES as ENV_VARIABLES};

/// A configuration problem, worded for the operator: one line, no backtrace.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

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
    /// Redis shared by the replicas (code cache, session revocation); empty = none.
    pub redis_url: String,
    /// Bound of one Redis operation; past it the edge goes on without Redis.
    pub redis_timeout_ms: u64,
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
    /// Answer the common requests (whole dist files, plain API calls) on the front door's
    /// short path; `false` sends every request through Pingora's answer path (same parser,
    /// router and upstream builder; used to test both paths with one suite).
    pub short_path: bool,
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
            short_path: true,
        }
    }
}

/// A backend as parsed from `http://host:port`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendAddr {
    pub addr: SocketAddr,
    /// `host:port` as written, for logs and the default upstream `Host`.
    pub authority: String,
}

/// HTTPS listeners and what they serve with.
#[derive(Debug, Clone)]
pub struct Https {
    pub listen: Vec<SocketAddr>,
    pub listen_proxy_protocol: Vec<SocketAddr>,
    pub tls: crate::tls::Tls,
}

/// The validated, ready-to-use configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfOwned,
    pub settings: Settings,
    pub listen: Vec<SocketAddr>,
    pub listen_proxy_protocol: Vec<SocketAddr>,
    /// The HTTPS side: its listeners and loaded certificates.
    pub https: Option<Https>,
    /// `tls.redirect_listen`, parsed.
    pub redirect_listen: Vec<SocketAddr>,
    /// `real_ip.trusted`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub backends: Vec<BackendAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub compat_listen: Option<SocketAddr>,
    /// Where the settings came from, for `-t` and the start-up log.
    pub source: String,
}

/// `ServerConf` is not `Clone`; keep its YAML so it can be rebuilt when needed.
#[derive(Debug, Clone)]
pub struct ServerConfOwned {
    yaml: String,
}

impl ServerConfOwned {
    pub fn build(&self) -> ServerConf {
        ServerConf::from_yaml(&self.yaml).expect("validated at load")
    }
}

impl Config {
    /// The first public listener as a local client reaches it (`0.0.0.0` → `127.0.0.1`).
    /// Every public listener: plain, PROXY protocol, HTTPS, redirect.
    pub fn public_listeners(&self) -> impl Iterator<Item = &SocketAddr> {
        let https = self
            .https
            .iter()
            .flat_map(|h| h.listen.iter().chain(&h.listen_proxy_protocol));
        self.listen
            .iter()
            .chain(&self.listen_proxy_protocol)
            .chain(https)
            .chain(&self.redirect_listen)
    }

    pub fn loopback_addr(&self) -> SocketAddr {
        let mut a = self.listen[0];
        if a.ip().is_unspecified() {
            a.set_ip(if a.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        a
    }
}

/// Load from an optional YAML file and the environment.
pub fn load(path: Option<&str>, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    let (server_yaml, mut settings, source) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .or_else(|e| err(format!("cannot read config file {p}: {e}")))?;
            let (server, settings) =
                parse_file(&text).map_err(|e| ConfigError(format!("{p}: {e}")))?;
            (server, settings, p.to_string())
        }
        None => (
            default_server_yaml(),
            Settings::default(),
            "embedded defaults".to_string(),
        ),
    };
    env::apply(&mut settings, env)?;
    let server_yaml = env::apply_server(server_yaml, env)?;
    validate(ServerConfOwned { yaml: server_yaml }, settings, source)
}

/// Pingora keys that wxedge fills in when the file leaves them out.
///
/// `work_stealing: false`: one single-threaded runtime per thread, like nginx's workers. The
/// front door keeps its backend pool and caches per thread, and on 2 cores the stealing
/// scheduler's idle spinning cost about 2 µs per proxied request (bench/RESULTS.md).
fn default_server_yaml() -> String {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    format!(
        "---\nversion: 1\nthreads: {threads}\npid_file: /tmp/wxedge.pid\nupgrade_sock: /tmp/wxedge_upgrade.sock\ngrace_period_seconds: 30\ngraceful_shutdown_timeout_seconds: 5\nupgrade_sock_connect_accept_max_retries: 30\nwork_stealing: false\n"
    )
}

/// Split the file into Pingora's part and ours; unknown keys anywhere are an error.
fn parse_file(text: &str) -> Result<(String, Settings), String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut map = match doc {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => serde_yaml::Mapping::new(),
        _ => return Err("the config file must be a YAML mapping".into()),
    };
    let ours = map.remove("wxedge").unwrap_or(serde_yaml::Value::Null);
    let settings: Settings = if ours.is_null() {
        Settings::default()
    } else {
        serde_yaml::from_value(ours).map_err(|e| format!("wxedge: {e}"))?
    };
    // Pingora ignores unknown keys; a typo there would silently do nothing, so refuse it.
    let known = serde_yaml::to_value(ServerConf::default()).map_err(|e| e.to_string())?;
    let mut server = serde_yaml::from_str::<serde_yaml::Mapping>(&default_server_yaml())
        .map_err(|e| e.to_string())?;
    for (k, v) in map {
        let name = k.as_str().unwrap_or("?").to_string();
        if known.get(&name).is_none() {
            return Err(format!(
                "unknown field `{name}` (Pingora server keys or `wxedge:` expected)"
            ));
        }
        server.insert(k, v);
    }
    let yaml = serde_yaml::to_string(&server).map_err(|e| e.to_string())?;
    ServerConf::from_yaml(&yaml).map_err(|e| format!("server settings: {e}"))?;
    Ok((yaml, settings))
}

fn parse_listen(s: &str, what: &str) -> Result<SocketAddr, ConfigError> {
    s.trim()
        .parse()
        .or_else(|_| err(format!("{what}: `{s}` is not host:port (e.g. 0.0.0.0:80)")))
}

/// `http://host:port[/]` → socket address. Names are resolved once, at start-up.
pub fn parse_backend(raw: &str) -> Result<BackendAddr, ConfigError> {
    let bad = |why: &str| {
        ConfigError(format!(
            "backend `{raw}`: {why} (expected http://host:port)"
        ))
    };
    let rest = raw
        .trim()
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// backends are supported"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(bad("no path or user info allowed"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    use std::net::ToSocketAddrs;
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| bad("resolves to no address"))?;
    Ok(BackendAddr {
        addr,
        authority: authority.to_string(),
    })
}

/// The HTTPS listeners with their certificates loaded (`None`: no HTTPS), and the redirect
/// listeners; no address may serve two ways.
fn validate_tls(
    t: &TlsSettings,
    listen: &[SocketAddr],
    listen_proxy_protocol: &[SocketAddr],
) -> Result<(Option<Https>, Vec<SocketAddr>), ConfigError> {
    let parse = |list: &[String], key: &str| {
        list.iter()
            .map(|l| parse_listen(l, key))
            .collect::<Result<Vec<_>, _>>()
    };
    let tls_listen = parse(&t.listen, "tls.listen")?;
    let tls_proxy = parse(&t.listen_proxy_protocol, "tls.listen_proxy_protocol")?;
    let redirect = parse(&t.redirect_listen, "tls.redirect_listen")?;
    let mut seen: Vec<SocketAddr> = listen
        .iter()
        .chain(listen_proxy_protocol)
        .copied()
        .collect();
    for a in tls_listen.iter().chain(&tls_proxy).chain(&redirect) {
        if seen.contains(a) {
            return err(format!(
                "tls: {a} is listed twice: a listener serves one way"
            ));
        }
        seen.push(*a);
    }
    if !t.hsts.is_empty() && http::HeaderValue::from_str(&t.hsts).is_err() {
        return err("tls.hsts: not a header value (max-age=31536000; includeSubDomains)");
    }
    if tls_listen.is_empty() && tls_proxy.is_empty() {
        if !redirect.is_empty() {
            return err(
                "tls.redirect_listen: redirects to HTTPS need an HTTPS listener (tls.listen)",
            );
        }
        if !t.certificates.is_empty() {
            log::warn!("tls.certificates: set, but no tls.listen: no HTTPS");
        }
        return Ok((None, redirect));
    }
    let tls = crate::tls::Tls::load(&t.certificates, t.http2).map_err(ConfigError)?;
    Ok((
        Some(Https {
            listen: tls_listen,
            listen_proxy_protocol: tls_proxy,
            tls,
        }),
        redirect,
    ))
}

fn validate_health_check(h: &HealthCheckSettings) -> Result<(), ConfigError> {
    if !h.path.is_empty()
        && (!h.path.starts_with('/') || h.path.parse::<http::uri::PathAndQuery>().is_err())
    {
        return err(format!(
            "proxy.health_check.path: `{}` is not a path (/healthz), or empty for a TCP check",
            h.path
        ));
    }
    if h.interval_ms == 0 {
        return Ok(());
    }
    if h.timeout_ms == 0 {
        return err("proxy.health_check.timeout_ms: must be more than 0");
    }
    if h.fails == 0 || h.passes == 0 {
        return err("proxy.health_check.fails and passes: at least 1");
    }
    Ok(())
}

fn validate(
    server: ServerConfOwned,
    settings: Settings,
    source: String,
) -> Result<Config, ConfigError> {
    if settings.listen.is_empty() {
        return err("listen: at least one address is needed");
    }
    let listen = settings
        .listen
        .iter()
        .map(|l| parse_listen(l, "listen"))
        .collect::<Result<Vec<_>, _>>()?;
    let listen_proxy_protocol = settings
        .listen_proxy_protocol
        .iter()
        .map(|l| parse_listen(l, "listen_proxy_protocol"))
        .collect::<Result<Vec<_>, _>>()?;
    let trusted_proxies = settings
        .real_ip
        .trusted
        .iter()
        .map(|t| {
            t.parse::<ipnet::IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError(format!(
                        "real_ip.trusted: `{t}` is not an address or CIDR (10.0.0.0/8, 192.0.2.7)"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let header = settings.real_ip.header.to_ascii_lowercase();
    if header != "x-forwarded-for" && header != "x-real-ip" {
        return err("real_ip.header: X-Forwarded-For or X-Real-IP");
    }
    if !listen_proxy_protocol.is_empty() && trusted_proxies.is_empty() {
        return err("listen_proxy_protocol: real_ip.trusted must list the load balancers that send the PROXY headers");
    }
    if let Some(both) = listen_proxy_protocol.iter().find(|a| listen.contains(a)) {
        return err(format!(
            "listen_proxy_protocol: {both} is also in listen: a listener either takes PROXY headers or not"
        ));
    }
    let (https, redirect_listen) = validate_tls(&settings.tls, &listen, &listen_proxy_protocol)?;
    if https
        .as_ref()
        .is_some_and(|h| !h.listen_proxy_protocol.is_empty())
        && trusted_proxies.is_empty()
    {
        return err("tls.listen_proxy_protocol: real_ip.trusted must list the load balancers that send the PROXY headers");
    }
    if !settings.dist.is_dir() {
        return err(format!(
            "dist: {} is not a directory",
            settings.dist.display()
        ));
    }
    for t in &settings.mp_verify {
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric()) {
            return err(format!(
                "mp_verify: `{t}` is not a WeChat verify token (letters and digits)"
            ));
        }
    }
    for p in &settings.proxy.prefixes {
        if !p.starts_with('/') {
            return err(format!("proxy.prefixes: `{p}` must start with /"));
        }
    }
    for r in &settings.static_files.cache_control {
        if !r.prefix.starts_with('/') {
            return err(format!(
                "static_files.cache_control: prefix `{}` must start with /",
                r.prefix
            ));
        }
        http::HeaderValue::from_str(&r.value).or_else(|_| {
            err(format!(
                "static_files.cache_control: `{}` is not a header value",
                r.value
            ))
        })?;
    }
    if !settings.proxy.host.is_empty() {
        http::HeaderValue::from_str(&settings.proxy.host).or_else(|_| {
            err(format!(
                "proxy.host: `{}` is not a header value",
                settings.proxy.host
            ))
        })?;
    }
    let backends = settings
        .proxy
        .backends
        .iter()
        .map(|b| parse_backend(b))
        .collect::<Result<Vec<_>, _>>()?;
    validate_health_check(&settings.proxy.health_check)?;
    if !matches!(
        settings.ops.access_log.as_str(),
        "combined" | "json" | "off"
    ) {
        return err(format!(
            "ops.access_log: `{}` must be combined, json or off",
            settings.ops.access_log
        ));
    }
    let metrics_listen = match settings.ops.metrics_listen.trim() {
        "" => None,
        s => Some(parse_listen(s, "ops.metrics_listen")?),
    };
    let compat_listen = match settings.wechat.compat_listen.trim() {
        "" => None,
        s => Some(parse_listen(s, "wechat.compat_listen")?),
    };
    if !matches!(
        settings.wechat.scope.as_str(),
        "snsapi_base" | "snsapi_userinfo"
    ) {
        return err(format!(
            "wechat.scope: `{}` must be snsapi_base or snsapi_userinfo",
            settings.wechat.scope
        ));
    }
    for base in [
        &settings.wechat.api_base,
        &settings.wechat.open_base,
        &settings.wechat.public_url,
    ] {
        if !(base.is_empty() || base.starts_with("http://") || base.starts_with("https://")) {
            return err(format!(
                "wechat: `{base}` must be an http:// or https:// URL"
            ));
        }
    }
    let h = &settings.session.identity_headers;
    for name in [
        &h.openid,
        &h.unionid,
        &h.scope,
        &h.snapshot,
        &h.nickname,
        &h.avatar,
    ] {
        http::HeaderName::from_bytes(name.as_bytes()).or_else(|_| {
            err(format!(
                "session.identity_headers: `{name}` is not a header name"
            ))
        })?;
    }
    if settings.session.cookie_name.is_empty()
        || !settings
            .session
            .cookie_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return err("session.cookie_name: letters, digits, _ and - only");
    }
    if settings.ops.max_header_bytes < 1024 {
        return err("ops.max_header_bytes: at least 1024");
    }
    for (key, v) in [
        (
            "ops.client_header_timeout_ms",
            settings.ops.client_header_timeout_ms,
        ),
        (
            "ops.client_body_timeout_ms",
            settings.ops.client_body_timeout_ms,
        ),
        ("ops.send_timeout_ms", settings.ops.send_timeout_ms),
        ("redis_timeout_ms", settings.redis_timeout_ms),
        (
            "ops.keepalive_timeout_seconds",
            settings.ops.keepalive_timeout_seconds,
        ),
    ] {
        if v == 0 {
            return Err(ConfigError(format!("{key}: must be more than 0")));
        }
    }
    Ok(Config {
        server,
        settings,
        listen,
        listen_proxy_protocol,
        https,
        redirect_listen,
        trusted_proxies,
        backends,
        metrics_listen,
        compat_listen,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unknown_fields_are_refused_in_both_parts() {
        let e = parse_file("wxedge:\n  lisen: [\"1.2.3.4:1\"]\n").unwrap_err();
        assert!(e.contains("unknown field `lisen`"), "{e}");
        let e = parse_file("threadz: 3\n").unwrap_err();
        assert!(e.contains("unknown field `threadz`"), "{e}");
        let (yaml, s) = parse_file("threads: 3\nwxedge:\n  mp_verify: [abc]\n").unwrap();
        assert_eq!(ServerConf::from_yaml(&yaml).unwrap().threads, 3);
        assert_eq!(s.mp_verify, vec!["abc"]);
    }

    #[test]
    fn a_partial_section_keeps_the_defaults_of_what_it_leaves_out() {
        let (_, s) = parse_file(
            "wxedge:\n  wechat:\n    appid: wx1\n  session:\n    lifetime_seconds: 60\n  tls:\n    hsts: max-age=1\n",
        )
        .unwrap();
        let d = Settings::default();
        assert_eq!(s.wechat.appid, "wx1");
        assert!(s.wechat.enabled);
        assert_eq!(s.wechat.timeout_ms, d.wechat.timeout_ms);
        assert_eq!(s.wechat.scope, "snsapi_base");
        assert_eq!(s.session.lifetime_seconds, 60);
        assert_eq!(s.session.cookie_name, d.session.cookie_name);
        assert!(s.session.cookie_secure);
        assert!(s.tls.http2);
    }

    #[test]
    fn environment_overrides_file_and_reads_secret_files() {
        let dir = std::env::temp_dir().join(format!("wxedge-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        let e = env(&[
            ("WXEDGE_DIST", dir.to_str().unwrap()),
            ("WXEDGE_LISTEN", "127.0.0.1:9999, 127.0.0.1:9998"),
            (
                "WXEDGE_BACKEND",
                "http://127.0.0.1:7000,http://localhost:7001/",
            ),
            ("WX_MP_VERIFY", "tok1,tok2"),
            ("WX_SECRET_FILE", secret.to_str().unwrap()),
            ("WXEDGE_SANDBOX_LATENCY_MS", "50"),
        ]);
        let c = load(None, &e).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[1].authority, "localhost:7001");
        assert_eq!(c.settings.mp_verify, vec!["tok1", "tok2"]);
        assert_eq!(c.settings.wechat.secret, "s3cr3t");
        assert_eq!(c.settings.wechat.sandbox_latency_ms, 50);
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let dir = std::env::temp_dir();
        let d = dir.to_str().unwrap();
        for (k, v, needle) in [
            ("WXEDGE_BACKEND", "ftp://x", "only http://"),
            ("WXEDGE_LISTEN", "nope", "not host:port"),
            ("WX_MP_VERIFY", "a/b", "verify token"),
            ("WXEDGE_MAX_BODY_BYTES", "lots", "WXEDGE_MAX_BODY_BYTES"),
        ] {
            let e = load(None, &env(&[("WXEDGE_DIST", d), (k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{k}={v}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = load(None, &env(&[("WXEDGE_DIST", "/no/such/dir")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn health_check_settings_from_the_file_and_the_environment() {
        let dir = std::env::temp_dir();
        let d = dir.to_str().unwrap();
        let c = load(None, &env(&[("WXEDGE_DIST", d)])).unwrap();
        let h = &c.settings.proxy.health_check;
        assert_eq!(
            (
                h.path.as_str(),
                h.interval_ms,
                h.timeout_ms,
                h.fails,
                h.passes
            ),
            ("", 5_000, 1_000, 2, 2),
            "on by default, as a TCP check"
        );
        let (_, s) = parse_file(
            "wxedge:\n  proxy:\n    health_check:\n      path: /healthz\n      fails: 3\n",
        )
        .unwrap();
        assert_eq!(s.proxy.health_check.path, "/healthz");
        assert_eq!(s.proxy.health_check.fails, 3);
        assert_eq!(
            s.proxy.health_check.passes, 2,
            "the rest keeps its defaults"
        );
        let c = load(
            None,
            &env(&[
                ("WXEDGE_DIST", d),
                ("WXEDGE_HEALTH_CHECK_PATH", " /ping?full=1 "),
                ("WXEDGE_HEALTH_CHECK_INTERVAL_MS", "250"),
                ("WXEDGE_HEALTH_CHECK_TIMEOUT_MS", "100"),
                ("WXEDGE_HEALTH_CHECK_FAILS", "1"),
                ("WXEDGE_HEALTH_CHECK_PASSES", "4"),
            ]),
        )
        .unwrap();
        let h = &c.settings.proxy.health_check;
        assert_eq!(
            (
                h.path.as_str(),
                h.interval_ms,
                h.timeout_ms,
                h.fails,
                h.passes
            ),
            ("/ping?full=1", 250, 100, 1, 4)
        );
        for (k, v, needle) in [
            (
                "WXEDGE_HEALTH_CHECK_PATH",
                "healthz",
                "proxy.health_check.path",
            ),
            (
                "WXEDGE_HEALTH_CHECK_PATH",
                "/a b",
                "proxy.health_check.path",
            ),
            ("WXEDGE_HEALTH_CHECK_TIMEOUT_MS", "0", "timeout_ms"),
            ("WXEDGE_HEALTH_CHECK_FAILS", "0", "fails and passes"),
            ("WXEDGE_HEALTH_CHECK_PASSES", "0", "fails and passes"),
            (
                "WXEDGE_HEALTH_CHECK_INTERVAL_MS",
                "soon",
                "WXEDGE_HEALTH_CHECK_INTERVAL_MS",
            ),
        ] {
            let e = load(None, &env(&[("WXEDGE_DIST", d), (k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{k}={v}: {e}");
        }
        // Off: nothing else about them matters.
        let off = env(&[
            ("WXEDGE_DIST", d),
            ("WXEDGE_HEALTH_CHECK_INTERVAL_MS", "0"),
            ("WXEDGE_HEALTH_CHECK_FAILS", "0"),
        ]);
        assert_eq!(
            load(None, &off)
                .unwrap()
                .settings
                .proxy
                .health_check
                .interval_ms,
            0
        );
    }

    #[test]
    fn backend_urls() {
        assert_eq!(
            parse_backend("http://127.0.0.1:81").unwrap().addr.port(),
            81
        );
        assert_eq!(parse_backend("http://127.0.0.1").unwrap().addr.port(), 80);
        assert_eq!(parse_backend("http://[::1]:82").unwrap().addr.port(), 82);
        assert!(parse_backend("http://127.0.0.1:81/api").is_err());
        assert!(parse_backend("https://127.0.0.1").is_err());
        assert!(parse_backend("http://").is_err());
    }
}
