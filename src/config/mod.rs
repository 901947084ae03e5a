//! Configuration: one YAML file (Pingora's server keys at the top level, ours under `wxedge:`),
//! then environment variables on top, then validation. Every setting has an environment
//! variable; secrets may also come from `NAME_FILE`.

mod env;
mod settings;

use std::net::SocketAddr;

use pingora::server::configuration::ServerConf;

pub use env::{EnvSource, ProcessEnv, VARIABLES as ENV_VARIABLES};
pub use settings::{
    CacheRule, ConfigError, HealthCheckSettings, IdentityHeaderNames, LimitSettings, OpsSettings,
    PrefixLimit, ProxySettings, RealIpSettings, SessionSettings, Settings, StaticSettings,
    TlsSettings, WechatSettings,
};

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
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
    // One step per part of the file, in this order: the first problem found is the one reported.
    let listeners = validate_listeners(&settings)?;
    validate_paths(&settings)?;
    let backends = validate_proxy(&settings.proxy)?;
    let (metrics_listen, compat_listen) = validate_ops(&settings)?;
    validate_wechat(&settings.wechat)?;
    validate_session(&settings.session)?;
    validate_limits(&settings)?;
    Ok(Config {
        server,
        settings,
        listen: listeners.listen,
        listen_proxy_protocol: listeners.listen_proxy_protocol,
        https: listeners.https,
        redirect_listen: listeners.redirect_listen,
        trusted_proxies: listeners.trusted_proxies,
        backends,
        metrics_listen,
        compat_listen,
        source,
    })
}

/// The public listeners (plain, PROXY protocol, HTTPS, redirect) and who may send PROXY headers.
struct Listeners {
    listen: Vec<SocketAddr>,
    listen_proxy_protocol: Vec<SocketAddr>,
    trusted_proxies: Vec<ipnet::IpNet>,
    https: Option<Https>,
    redirect_listen: Vec<SocketAddr>,
}

fn validate_listeners(settings: &Settings) -> Result<Listeners, ConfigError> {
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
    let trusted_proxies = parse_trusted(&settings.real_ip)?;
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
    Ok(Listeners {
        listen,
        listen_proxy_protocol,
        trusted_proxies,
        https,
        redirect_listen,
    })
}

/// `real_ip.trusted` as networks; and the header they set must be one the edge reads.
fn parse_trusted(real_ip: &RealIpSettings) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let trusted_proxies = real_ip
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
    let header = real_ip.header.to_ascii_lowercase();
    if header != "x-forwarded-for" && header != "x-real-ip" {
        return err("real_ip.header: X-Forwarded-For or X-Real-IP");
    }
    Ok(trusted_proxies)
}

/// What is served from where: the dist folder, verify tokens, proxy prefixes, cache rules.
fn validate_paths(settings: &Settings) -> Result<(), ConfigError> {
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
    Ok(())
}

/// The upstream `Host`, the backends (parsed) and their health checks.
fn validate_proxy(proxy: &ProxySettings) -> Result<Vec<BackendAddr>, ConfigError> {
    if !proxy.host.is_empty() {
        http::HeaderValue::from_str(&proxy.host).or_else(|_| {
            err(format!(
                "proxy.host: `{}` is not a header value",
                proxy.host
            ))
        })?;
    }
    let backends = proxy
        .backends
        .iter()
        .map(|b| parse_backend(b))
        .collect::<Result<Vec<_>, _>>()?;
    validate_health_check(&proxy.health_check)?;
    validate_body_temp_dir(proxy)?;
    Ok(backends)
}

/// Request bodies past the memory buffer need a directory that takes files: found out at
/// start-up (and by `wxedge -t`), not by the first large upload.
fn validate_body_temp_dir(proxy: &ProxySettings) -> Result<(), ConfigError> {
    if proxy.body_buffer_bytes >= proxy.max_body_bytes {
        return Ok(()); // every body fits in memory: no file is ever made
    }
    let dir = match proxy.body_temp_dir.as_str() {
        "" => std::env::temp_dir(),
        dir => dir.into(),
    };
    tempfile::tempfile_in(&dir).map(drop).or_else(|e| {
        err(format!(
            "proxy.body_temp_dir: cannot create temporary files in {}: {e}",
            dir.display()
        ))
    })
}

/// The access log's format and the private listeners (metrics, the WeChat compat endpoint).
fn validate_ops(
    settings: &Settings,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), ConfigError> {
    if !matches!(
        settings.ops.access_log.as_str(),
        "combined" | "json" | "off"
    ) {
        return err(format!(
            "ops.access_log: `{}` must be combined, json or off",
            settings.ops.access_log
        ));
    }
    if settings.ops.short_path.is_some() {
        log::warn!("ops.short_path: retired, it has no effect (every request takes one path)");
    }
    let metrics_listen = match settings.ops.metrics_listen.trim() {
        "" => None,
        s => Some(parse_listen(s, "ops.metrics_listen")?),
    };
    let compat_listen = match settings.wechat.compat_listen.trim() {
        "" => None,
        s => Some(parse_listen(s, "wechat.compat_listen")?),
    };
    Ok((metrics_listen, compat_listen))
}

fn validate_wechat(wechat: &WechatSettings) -> Result<(), ConfigError> {
    if !matches!(wechat.scope.as_str(), "snsapi_base" | "snsapi_userinfo") {
        return err(format!(
            "wechat.scope: `{}` must be snsapi_base or snsapi_userinfo",
            wechat.scope
        ));
    }
    for base in [&wechat.api_base, &wechat.open_base, &wechat.public_url] {
        if !(base.is_empty() || base.starts_with("http://") || base.starts_with("https://")) {
            return err(format!(
                "wechat: `{base}` must be an http:// or https:// URL"
            ));
        }
    }
    for origin in &wechat.jssdk_origins {
        if crate::auth::jssdk::origin_host(origin).is_none() {
            return err(format!(
                "wechat.jssdk_origins: `{origin}` must be an origin such as https://h5.example.com"
            ));
        }
    }
    Ok(())
}

/// The identity headers' names and the session cookie's.
fn validate_session(session: &SessionSettings) -> Result<(), ConfigError> {
    let h = &session.identity_headers;
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
    if session.cookie_name.is_empty()
        || !session
            .cookie_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return err("session.cookie_name: letters, digits, _ and - only");
    }
    Ok(())
}

/// The client limits: the head's size, and timeouts that must not be 0.
fn validate_limits(settings: &Settings) -> Result<(), ConfigError> {
    let l = &settings.limits;
    if l.wechat_in_flight == 0 {
        return err("limits.wechat_in_flight: at least 1");
    }
    if l.login_rate > 0 && l.login_burst == 0 {
        return err("limits.login_burst: at least 1 when limits.login_rate is set");
    }
    for p in &l.prefixes {
        if !p.prefix.starts_with('/') {
            return err(format!("limits.prefixes: `{}` must start with /", p.prefix));
        }
        if p.rate == 0 || p.burst == 0 {
            return err(format!(
                "limits.prefixes: `{}` needs a rate and a burst of at least 1",
                p.prefix
            ));
        }
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
    Ok(())
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
