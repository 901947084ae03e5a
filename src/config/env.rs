//! Environment overrides: one table, one line per setting, so docs/settings.md's table and the code
//! cannot drift apart silently. Any variable may instead be given as `NAME_FILE` (a path whose
//! contents, trimmed, are the value) — the usual way to hand secrets to a container.

use std::collections::HashMap;

use super::settings::{CacheRule, ConfigError, PrefixLimit, Settings};

/// Where variables come from: the process in production, a map in tests.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// `NAME`, else the contents of the file named by `NAME_FILE`.
pub fn lookup(env: &dyn EnvSource, name: &str) -> Result<Option<String>, ConfigError> {
    if let Some(v) = env.var(name) {
        return Ok(Some(v));
    }
    match env.var(&format!("{name}_FILE")) {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(&path)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|e| ConfigError(format!("{name}_FILE: cannot read {path}: {e}"))),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError(format!("{name}: `{v}` is not a number")))
}

fn boolean(name: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError(format!("{name}: `{v}` is not true/false"))),
    }
}

/// Set the certificate (or key) paths of `tls.certificates`, position by position.
fn pair_files(pairs: &mut Vec<crate::tls::CertificateFiles>, paths: Vec<String>, cert: bool) {
    pairs.resize(pairs.len().max(paths.len()), Default::default());
    for (pair, path) in pairs.iter_mut().zip(paths) {
        if cert {
            pair.cert = path
        } else {
            pair.key = path
        }
    }
}

/// `/static/=public, max-age=86400|/x/=no-store`
/// `prefix=rate:burst` entries, comma-separated (`/api/sms/=1:5`).
fn prefix_limits(name: &str, v: &str) -> Result<Vec<PrefixLimit>, ConfigError> {
    list(v)
        .iter()
        .map(|entry| {
            let bad = || ConfigError(format!("{name}: `{entry}` is not prefix=rate:burst"));
            let (prefix, numbers) = entry.rsplit_once('=').ok_or_else(bad)?;
            let (rate, burst) = numbers.split_once(':').ok_or_else(bad)?;
            Ok(PrefixLimit {
                prefix: prefix.trim().to_string(),
                rate: rate.trim().parse().map_err(|_| bad())?,
                burst: burst.trim().parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

fn cache_rules(name: &str, v: &str) -> Result<Vec<CacheRule>, ConfigError> {
    v.split('|')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            let (prefix, value) = r
                .split_once('=')
                .ok_or_else(|| ConfigError(format!("{name}: `{r}` is not PREFIX=VALUE")))?;
            Ok(CacheRule {
                prefix: prefix.trim().into(),
                value: value.trim().into(),
            })
        })
        .collect()
}

type Setter = fn(&mut Settings, &str, &str) -> Result<(), ConfigError>;

/// Every environment variable wxedge reads for its own settings.
// Each setter is one assignment in `Ok(..)`, one line per variable: a table that reads as such.
#[allow(clippy::unit_arg)]
pub const VARIABLES: &[(&str, Setter)] = &[
    ("WXEDGE_LISTEN", |s, _, v| Ok(s.listen = list(v))),
    ("WXEDGE_LISTEN_PROXY_PROTOCOL", |s, _, v| {
        Ok(s.listen_proxy_protocol = list(v))
    }),
    ("WXEDGE_REAL_IP_TRUSTED", |s, _, v| {
        Ok(s.real_ip.trusted = list(v))
    }),
    ("WXEDGE_REAL_IP_HEADER", |s, _, v| {
        Ok(s.real_ip.header = v.trim().into())
    }),
    ("WXEDGE_TLS_LISTEN", |s, _, v| Ok(s.tls.listen = list(v))),
    ("WXEDGE_TLS_LISTEN_PROXY_PROTOCOL", |s, _, v| {
        Ok(s.tls.listen_proxy_protocol = list(v))
    }),
    // One pair per position: WXEDGE_TLS_CERT=a.pem,b.pem with WXEDGE_TLS_KEY=a.key,b.key.
    ("WXEDGE_TLS_CERT", |s, _, v| {
        Ok(pair_files(&mut s.tls.certificates, list(v), true))
    }),
    ("WXEDGE_TLS_KEY", |s, _, v| {
        Ok(pair_files(&mut s.tls.certificates, list(v), false))
    }),
    ("WXEDGE_TLS_HTTP2", |s, n, v| {
        Ok(s.tls.http2 = boolean(n, v)?)
    }),
    (
        "WXEDGE_TLS_HSTS",
        |s, _, v| Ok(s.tls.hsts = v.trim().into()),
    ),
    ("WXEDGE_TLS_REDIRECT_LISTEN", |s, _, v| {
        Ok(s.tls.redirect_listen = list(v))
    }),
    ("WXEDGE_TLS_ACME_WEBROOT", |s, _, v| {
        Ok(s.tls.acme_webroot = v.trim().into())
    }),
    ("WXEDGE_DIST", |s, _, v| Ok(s.dist = v.trim().into())),
    ("WX_MP_VERIFY", |s, _, v| Ok(s.mp_verify = list(v))),
    ("WXEDGE_SPA_FALLBACK", |s, n, v| {
        Ok(s.static_files.spa_fallback = boolean(n, v)?)
    }),
    ("WXEDGE_FALLBACK_EXCLUDE", |s, _, v| {
        Ok(s.static_files.fallback_exclude = list(v))
    }),
    ("WXEDGE_MEMORY_MAX_BYTES", |s, n, v| {
        Ok(s.static_files.memory_max_bytes = number(n, v)?)
    }),
    ("WXEDGE_MEMORY_MAX_FILE_BYTES", |s, n, v| {
        Ok(s.static_files.memory_max_file_bytes = number(n, v)?)
    }),
    ("WXEDGE_COMPRESS_MIN_BYTES", |s, n, v| {
        Ok(s.static_files.compress_min_bytes = number(n, v)?)
    }),
    ("WXEDGE_COMPRESS_CACHE", |s, _, v| {
        Ok(s.static_files.compress_cache = v.trim().into())
    }),
    ("WXEDGE_CACHE_CONTROL", |s, n, v| {
        Ok(s.static_files.cache_control = cache_rules(n, v)?)
    }),
    ("WXEDGE_PROXY_PREFIXES", |s, _, v| {
        Ok(s.proxy.prefixes = list(v))
    }),
    ("WXEDGE_BACKEND", |s, _, v| Ok(s.proxy.backends = list(v))),
    ("WXEDGE_PROXY_HOST", |s, _, v| {
        Ok(s.proxy.host = v.trim().into())
    }),
    ("WXEDGE_CONNECT_TIMEOUT_MS", |s, n, v| {
        Ok(s.proxy.connect_timeout_ms = number(n, v)?)
    }),
    ("WXEDGE_READ_TIMEOUT_MS", |s, n, v| {
        Ok(s.proxy.read_timeout_ms = number(n, v)?)
    }),
    ("WXEDGE_WRITE_TIMEOUT_MS", |s, n, v| {
        Ok(s.proxy.write_timeout_ms = number(n, v)?)
    }),
    ("WXEDGE_MAX_BODY_BYTES", |s, n, v| {
        Ok(s.proxy.max_body_bytes = number(n, v)?)
    }),
    ("WXEDGE_BODY_BUFFER_BYTES", |s, n, v| {
        Ok(s.proxy.body_buffer_bytes = number(n, v)?)
    }),
    ("WXEDGE_BODY_TEMP_DIR", |s, _, v| {
        Ok(s.proxy.body_temp_dir = v.trim().into())
    }),
    ("WXEDGE_BODY_TEMP_MAX_BYTES", |s, n, v| {
        Ok(s.proxy.body_temp_max_bytes = number(n, v)?)
    }),
    ("WXEDGE_LIMIT_LOGIN_RATE", |s, n, v| {
        Ok(s.limits.login_rate = number(n, v)?)
    }),
    ("WXEDGE_LIMIT_LOGIN_BURST", |s, n, v| {
        Ok(s.limits.login_burst = number(n, v)?)
    }),
    ("WXEDGE_LIMIT_CONNECTIONS_PER_CLIENT", |s, n, v| {
        Ok(s.limits.connections_per_client = number(n, v)?)
    }),
    ("WXEDGE_LIMIT_WECHAT_IN_FLIGHT", |s, n, v| {
        Ok(s.limits.wechat_in_flight = number(n, v)?)
    }),
    ("WXEDGE_LIMIT_WECHAT_QUEUE", |s, n, v| {
        Ok(s.limits.wechat_queue = number(n, v)?)
    }),
    ("WXEDGE_LIMIT_WECHAT_QUEUE_MS", |s, n, v| {
        Ok(s.limits.wechat_queue_ms = number(n, v)?)
    }),
    ("WXEDGE_LIMIT_PREFIXES", |s, n, v| {
        Ok(s.limits.prefixes = prefix_limits(n, v)?)
    }),
    ("WXEDGE_BACKEND_RETRY_SECONDS", |s, n, v| {
        Ok(s.proxy.backend_retry_seconds = number(n, v)?)
    }),
    ("WXEDGE_KEEPALIVE_IDLE_SECONDS", |s, n, v| {
        Ok(s.proxy.keepalive_idle_seconds = number(n, v)?)
    }),
    ("WXEDGE_DROP_UNDERSCORE_HEADERS", |s, n, v| {
        Ok(s.proxy.drop_underscore_headers = boolean(n, v)?)
    }),
    ("WXEDGE_HEALTH_CHECK_PATH", |s, _, v| {
        Ok(s.proxy.health_check.path = v.trim().into())
    }),
    ("WXEDGE_HEALTH_CHECK_INTERVAL_MS", |s, n, v| {
        Ok(s.proxy.health_check.interval_ms = number(n, v)?)
    }),
    ("WXEDGE_HEALTH_CHECK_TIMEOUT_MS", |s, n, v| {
        Ok(s.proxy.health_check.timeout_ms = number(n, v)?)
    }),
    ("WXEDGE_HEALTH_CHECK_FAILS", |s, n, v| {
        Ok(s.proxy.health_check.fails = number(n, v)?)
    }),
    ("WXEDGE_HEALTH_CHECK_PASSES", |s, n, v| {
        Ok(s.proxy.health_check.passes = number(n, v)?)
    }),
    ("WXEDGE_WECHAT_LOGIN", |s, n, v| {
        Ok(s.wechat.enabled = boolean(n, v)?)
    }),
    ("WX_APPID", |s, _, v| Ok(s.wechat.appid = v.trim().into())),
    ("WX_SECRET", |s, _, v| Ok(s.wechat.secret = v.trim().into())),
    ("WX_API_BASE", |s, _, v| {
        Ok(s.wechat.api_base = v.trim().trim_end_matches('/').into())
    }),
    ("WX_OPEN_BASE", |s, _, v| {
        Ok(s.wechat.open_base = v.trim().trim_end_matches('/').into())
    }),
    ("WX_SCOPE", |s, _, v| Ok(s.wechat.scope = v.trim().into())),
    ("WXEDGE_SANDBOX", |s, n, v| {
        Ok(s.wechat.sandbox = Some(boolean(n, v)?))
    }),
    ("WXEDGE_SANDBOX_LATENCY_MS", |s, n, v| {
        Ok(s.wechat.sandbox_latency_ms = number(n, v)?)
    }),
    ("WX_CONNECT_TIMEOUT_MS", |s, n, v| {
        Ok(s.wechat.connect_timeout_ms = number(n, v)?)
    }),
    ("WX_TIMEOUT_MS", |s, n, v| {
        Ok(s.wechat.timeout_ms = number(n, v)?)
    }),
    ("WX_CALLBACK_PATHS", |s, _, v| {
        Ok(s.wechat.callback_paths = list(v))
    }),
    ("WX_FRONTEND_STATES", |s, _, v| {
        Ok(s.wechat.frontend_states = list(v))
    }),
    ("WXEDGE_PUBLIC_URL", |s, _, v| {
        Ok(s.wechat.public_url = v.trim().trim_end_matches('/').into())
    }),
    (
        "WXEDGE_JSSDK",
        |s, n, v| Ok(s.wechat.jssdk = boolean(n, v)?),
    ),
    ("WXEDGE_JSSDK_ORIGINS", |s, _, v| {
        Ok(s.wechat.jssdk_origins = list(v))
    }),
    ("WXEDGE_WECHAT_COMPAT_LISTEN", |s, _, v| {
        Ok(s.wechat.compat_listen = v.trim().into())
    }),
    ("WXEDGE_SANDBOX_AUTHORIZED_DOMAINS", |s, _, v| {
        Ok(s.wechat.sandbox_authorized_domains = list(v))
    }),
    ("WXEDGE_RELAY_TARGETS", |s, _, v| {
        Ok(s.wechat.relay_targets = list(v))
    }),
    ("WXEDGE_RELAY_KEY", |s, _, v| {
        Ok(s.wechat.relay_key = list(v))
    }),
    ("WXEDGE_RELAY_URL", |s, _, v| {
        Ok(s.wechat.relay_url = v.trim().trim_end_matches('/').into())
    }),
    ("WXEDGE_RELAY_MODE", |s, _, v| {
        Ok(s.wechat.relay_mode = v.trim().to_ascii_lowercase())
    }),
    ("WXEDGE_REQUIRE_SESSION", |s, _, v| {
        Ok(s.session.require_session = list(v))
    }),
    ("WXEDGE_HEADER_OPENID", |s, _, v| {
        Ok(s.session.identity_headers.openid = v.trim().into())
    }),
    ("WXEDGE_HEADER_UNIONID", |s, _, v| {
        Ok(s.session.identity_headers.unionid = v.trim().into())
    }),
    ("WXEDGE_HEADER_SCOPE", |s, _, v| {
        Ok(s.session.identity_headers.scope = v.trim().into())
    }),
    ("WXEDGE_HEADER_SNAPSHOT", |s, _, v| {
        Ok(s.session.identity_headers.snapshot = v.trim().into())
    }),
    ("WXEDGE_HEADER_NICKNAME", |s, _, v| {
        Ok(s.session.identity_headers.nickname = v.trim().into())
    }),
    ("WXEDGE_HEADER_AVATAR", |s, _, v| {
        Ok(s.session.identity_headers.avatar = v.trim().into())
    }),
    ("WXEDGE_COOKIE_NAME", |s, _, v| {
        Ok(s.session.cookie_name = v.trim().into())
    }),
    ("WXEDGE_SESSION_KEY", |s, _, v| Ok(s.session.keys = list(v))),
    ("WXEDGE_SESSION_LIFETIME_SECONDS", |s, n, v| {
        Ok(s.session.lifetime_seconds = number(n, v)?)
    }),
    ("WXEDGE_COOKIE_SECURE", |s, n, v| {
        Ok(s.session.cookie_secure = boolean(n, v)?)
    }),
    ("WXEDGE_ACCESS_LOG", |s, _, v| {
        Ok(s.ops.access_log = v.trim().to_ascii_lowercase())
    }),
    ("WXEDGE_ACCESS_LOG_PATH", |s, _, v| {
        Ok(s.ops.access_log_path = v.trim().into())
    }),
    ("WXEDGE_METRICS_LISTEN", |s, _, v| {
        Ok(s.ops.metrics_listen = v.trim().into())
    }),
    ("WXEDGE_MAX_HEADER_BYTES", |s, n, v| {
        Ok(s.ops.max_header_bytes = number(n, v)?)
    }),
    ("WXEDGE_CLIENT_HEADER_TIMEOUT_MS", |s, n, v| {
        Ok(s.ops.client_header_timeout_ms = number(n, v)?)
    }),
    ("WXEDGE_CLIENT_BODY_TIMEOUT_MS", |s, n, v| {
        Ok(s.ops.client_body_timeout_ms = number(n, v)?)
    }),
    ("WXEDGE_SEND_TIMEOUT_MS", |s, n, v| {
        Ok(s.ops.send_timeout_ms = number(n, v)?)
    }),
    ("WXEDGE_KEEPALIVE_TIMEOUT_SECONDS", |s, n, v| {
        Ok(s.ops.keepalive_timeout_seconds = number(n, v)?)
    }),
    ("WXEDGE_MAX_CONNECTIONS", |s, n, v| {
        Ok(s.ops.max_connections = number(n, v)?)
    }),
    ("WXEDGE_SHORT_PATH", |s, n, v| {
        Ok(s.ops.short_path = Some(boolean(n, v)?))
    }),
    ("WXEDGE_REDIS_URL", |s, _, v| {
        Ok(s.redis_url = v.trim().into())
    }),
    ("WXEDGE_REDIS_TIMEOUT_MS", |s, n, v| {
        Ok(s.redis_timeout_ms = number(n, v)?)
    }),
];

/// Pingora server keys settable from the environment: (variable, YAML key, is a number).
pub const SERVER_VARIABLES: &[(&str, &str, bool)] = &[
    ("WXEDGE_THREADS", "threads", true),
    ("WXEDGE_PID_FILE", "pid_file", false),
    ("WXEDGE_UPGRADE_SOCK", "upgrade_sock", false),
    ("WXEDGE_GRACE_PERIOD_SECONDS", "grace_period_seconds", true),
    (
        "WXEDGE_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS",
        "graceful_shutdown_timeout_seconds",
        true,
    ),
];

pub fn apply(settings: &mut Settings, env: &dyn EnvSource) -> Result<(), ConfigError> {
    for (name, set) in VARIABLES {
        if let Some(v) = lookup(env, name)? {
            set(settings, name, &v)?;
        }
    }
    Ok(())
}

pub fn apply_server(yaml: String, env: &dyn EnvSource) -> Result<String, ConfigError> {
    let mut map: serde_yaml::Mapping =
        serde_yaml::from_str(&yaml).map_err(|e| ConfigError(format!("server settings: {e}")))?;
    let mut changed = false;
    for (name, key, numeric) in SERVER_VARIABLES {
        if let Some(v) = lookup(env, name)? {
            let value = if *numeric {
                serde_yaml::Value::from(number::<u64>(name, &v)?)
            } else {
                serde_yaml::Value::from(v.trim().to_string())
            };
            map.insert((*key).into(), value);
            changed = true;
        }
    }
    if !changed {
        return Ok(yaml);
    }
    serde_yaml::to_string(&map).map_err(|e| ConfigError(format!("server settings: {e}")))
}
