//! Prometheus metrics, one registry for the process, served on the metrics listener
//! (`metrics_listener.rs`).

use std::cell::RefCell;
use std::sync::Mutex;
use std::time::Duration;

use once_cell::sync::Lazy;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rustc_hash::FxHashMap;

pub struct Metrics {
    pub registry: Registry,
    /// By route class (static, proxy, auth, …) and status code.
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    /// Static answers by content encoding (identity, gzip, br).
    pub static_hits: IntCounterVec,
    /// WeChat code exchanges by result (ok, error) and errcode (or timeout, garbage, …).
    pub wechat_exchanges: IntCounterVec,
    /// Requests that waited on another request's in-flight exchange of the same code.
    pub singleflight_joins: IntCounter,
    /// Requests answered from the code cache.
    pub code_cache_hits: IntCounter,
    /// Backend failures by kind (connect, timeout, no_backend, …).
    pub backend_errors: IntCounterVec,
    /// Login relay outcomes, on the relay edge and on targets, by mode (code, ticket) and result.
    pub relay_logins: IntCounterVec,
    pub in_flight: IntGauge,
    /// Client connections closed at once because `max_connections` were open.
    pub connections_refused: IntCounter,
    /// Access-log lines dropped because the log could not keep up (or could not be written).
    pub access_log_dropped: IntCounter,
    /// Established client connections on the public listeners, counted when scraped.
    pub connections: IntGauge,
    /// TLS handshakes that failed or did not finish within the header deadline.
    pub tls_handshake_failures: IntCounter,
    /// Codes answered from the replicas' shared cache (another replica had redeemed them).
    pub shared_code_hits: IntCounter,
    /// Codes whose outcome this replica waited for while another replica redeemed them.
    pub shared_code_waits: IntCounter,
    /// Requests that went on without the shared state (Redis trouble), by what: code_cache, revocation.
    pub shared_fallbacks: IntCounterVec,
    /// Failed Redis operations by operation and kind (timeout, connection, answer, paused).
    pub redis_errors: IntCounterVec,
    /// Redis round trips by operation.
    pub redis_duration: HistogramVec,
    /// Requests whose session was refused because it had been revoked.
    pub revoked_sessions_refused: IntCounter,
    /// Compression cache look-ups and writes by result (hit, miss, written, write_error).
    pub compress_cache: IntCounterVec,
    /// 1 while a backend is in the rotation (active checks passing, no refused connection
    /// being waited out), else 0; set when scraped.
    pub backend_healthy: IntGaugeVec,
    /// Active health checks by backend and result (pass, fail).
    pub backend_health_checks: IntCounterVec,
    /// Requests refused by a limit (`login`, a prefix, `wechat_in_flight`).
    pub limited: IntCounterVec,
    /// Bytes of request bodies waiting in temporary files now; set when scraped.
    pub body_temp_bytes: IntGauge,
    /// Fetches of the account's access_token and jsapi_ticket, by result.
    pub wechat_credential_fetches: IntCounterVec,
    /// How old the held access_token and jsapi_ticket are; set when scraped.
    pub wechat_credential_age: IntGaugeVec,
    /// `wx.config` signatures asked for, by result.
    pub jssdk_signatures: IntCounterVec,
    /// Seconds until each certificate expires; set when scraped.
    pub tls_certificate_expiry: IntGaugeVec,
}

/// A metric family as registered: name, help, label names.
type Family = (&'static str, &'static str, &'static [&'static str]);

// The families, in the order they are registered (the text output is sorted by name anyway).
const LATENCY: Family = (
    "wxedge_request_duration_seconds",
    "Time from request to the last byte sent",
    &["route"],
);
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const IN_FLIGHT: Family = (
    "wxedge_requests_in_flight",
    "Requests being handled now",
    &[],
);
const CONNECTIONS: Family = (
    "wxedge_active_connections",
    "Established client connections on the public listeners",
    &[],
);
const REDIS_DURATION: Family = (
    "wxedge_redis_duration_seconds",
    "Redis operations, answered or not, by operation",
    &["op"],
);
const REDIS_BUCKETS: [f64; 11] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];
const BACKEND_HEALTHY: Family = (
    "wxedge_backend_healthy",
    "1 while the backend is in the rotation, else 0",
    &["backend"],
);
const REQUESTS: Family = (
    "wxedge_requests_total",
    "Requests by route class and status",
    &["route", "status"],
);
const STATIC_RESPONSES: Family = (
    "wxedge_static_responses_total",
    "Static answers by encoding",
    &["encoding"],
);
const COMPRESS_CACHE: Family = (
    "wxedge_compress_cache_total",
    "Compression cache look-ups (hit, miss) and writes (written, write_error) per variant",
    &["result"],
);
const WECHAT_EXCHANGES: Family = (
    "wxedge_wechat_exchanges_total",
    "Calls to WeChat's code exchange by result and errcode",
    &["result", "errcode"],
);
const SINGLEFLIGHT_JOINS: Family = (
    "wxedge_code_singleflight_joins_total",
    "Requests that joined an in-flight exchange",
    &[],
);
const CODE_CACHE_HITS: Family = (
    "wxedge_code_cache_hits_total",
    "Codes answered from the edge's cache",
    &[],
);
const BACKEND_ERRORS: Family = (
    "wxedge_backend_errors_total",
    "Backend failures by kind",
    &["kind"],
);
const RELAY_LOGINS: Family = (
    "wxedge_relay_logins_total",
    "Login relay outcomes by mode and result",
    &["mode", "result"],
);
const TLS_HANDSHAKE_FAILURES: Family = (
    "wxedge_tls_handshake_failures_total",
    "TLS handshakes that failed or timed out",
    &[],
);
const CONNECTIONS_REFUSED: Family = (
    "wxedge_connections_refused_total",
    "Client connections closed at once because max_connections were open",
    &[],
);
const ACCESS_LOG_DROPPED: Family = (
    "wxedge_access_log_dropped_lines_total",
    "Access-log lines dropped because the log could not keep up",
    &[],
);
const SHARED_CODE_HITS: Family = (
    "wxedge_shared_code_cache_hits_total",
    "Codes answered from the replicas' shared cache",
    &[],
);
const SHARED_CODE_WAITS: Family = (
    "wxedge_shared_code_waits_total",
    "Codes whose outcome this replica waited for while another one redeemed them",
    &[],
);
const SHARED_FALLBACKS: Family = (
    "wxedge_shared_fallbacks_total",
    "Requests that went on without the shared state because of Redis trouble",
    &["what"],
);
const REDIS_ERRORS: Family = (
    "wxedge_redis_errors_total",
    "Failed Redis operations by operation and kind",
    &["op", "kind"],
);
const REVOKED_SESSIONS_REFUSED: Family = (
    "wxedge_revoked_sessions_refused_total",
    "Requests whose session had been revoked",
    &[],
);
const LIMITED: Family = (
    "wxedge_limited_requests_total",
    "Requests refused by a limit: login or a prefix (rate per client), wechat_in_flight",
    &["limit"],
);
const BODY_TEMP_BYTES: Family = (
    "wxedge_request_body_temp_bytes",
    "Bytes of request bodies waiting in temporary files",
    &[],
);
const BACKEND_HEALTH_CHECKS: Family = (
    "wxedge_backend_health_checks_total",
    "Active backend health checks by result",
    &["backend", "result"],
);

const WECHAT_CREDENTIAL_FETCHES: Family = (
    "wxedge_wechat_credential_fetches_total",
    "Fetches of the account's access_token and jsapi_ticket by result (ok, or the errcode)",
    &["credential", "result"],
);
const WECHAT_CREDENTIAL_AGE: Family = (
    "wxedge_wechat_credential_age_seconds",
    "Seconds since the held access_token or jsapi_ticket was fetched (-1: none held)",
    &["credential"],
);
const TLS_CERTIFICATE_EXPIRY: Family = (
    "wxedge_tls_certificate_expiry_seconds",
    "Seconds until the certificate expires (negative once it has), by its first name",
    &["name"],
);
const JSSDK_SIGNATURES: Family = (
    "wxedge_jssdk_signatures_total",
    "wx.config signatures asked for, by result (signed, bad_url, unavailable, refused)",
    &["result"],
);

/// Registers `metric` in `r` and returns it (names are static: only a repeated one fails).
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, metric: M) -> M {
    r.register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn counter_vec(r: &Registry, (name, help, labels): Family) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    register(r, c)
}

fn counter(r: &Registry, (name, help, _): Family) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    register(r, c)
}

fn gauge(r: &Registry, (name, help, _): Family) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("static"))
}

fn gauge_vec(r: &Registry, (name, help, labels): Family) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    register(r, g)
}

fn histogram_vec(r: &Registry, (name, help, labels): Family, buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        r,
        HistogramVec::new(opts, labels).expect("static metric definition"),
    )
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let latency = histogram_vec(&r, LATENCY, &LATENCY_BUCKETS);
        let in_flight = gauge(&r, IN_FLIGHT);
        let connections = gauge(&r, CONNECTIONS);
        let redis_duration = histogram_vec(&r, REDIS_DURATION, &REDIS_BUCKETS);
        let backend_healthy = gauge_vec(&r, BACKEND_HEALTHY);
        Metrics {
            requests: counter_vec(&r, REQUESTS),
            latency,
            static_hits: counter_vec(&r, STATIC_RESPONSES),
            compress_cache: counter_vec(&r, COMPRESS_CACHE),
            wechat_exchanges: counter_vec(&r, WECHAT_EXCHANGES),
            singleflight_joins: counter(&r, SINGLEFLIGHT_JOINS),
            code_cache_hits: counter(&r, CODE_CACHE_HITS),
            backend_errors: counter_vec(&r, BACKEND_ERRORS),
            relay_logins: counter_vec(&r, RELAY_LOGINS),
            tls_handshake_failures: counter(&r, TLS_HANDSHAKE_FAILURES),
            connections_refused: counter(&r, CONNECTIONS_REFUSED),
            access_log_dropped: counter(&r, ACCESS_LOG_DROPPED),
            shared_code_hits: counter(&r, SHARED_CODE_HITS),
            shared_code_waits: counter(&r, SHARED_CODE_WAITS),
            shared_fallbacks: counter_vec(&r, SHARED_FALLBACKS),
            redis_errors: counter_vec(&r, REDIS_ERRORS),
            redis_duration,
            revoked_sessions_refused: counter(&r, REVOKED_SESSIONS_REFUSED),
            backend_health_checks: counter_vec(&r, BACKEND_HEALTH_CHECKS),
            backend_healthy,
            body_temp_bytes: gauge(&r, BODY_TEMP_BYTES),
            limited: counter_vec(&r, LIMITED),
            wechat_credential_fetches: counter_vec(&r, WECHAT_CREDENTIAL_FETCHES),
            wechat_credential_age: gauge_vec(&r, WECHAT_CREDENTIAL_AGE),
            jssdk_signatures: counter_vec(&r, JSSDK_SIGNATURES),
            tls_certificate_expiry: gauge_vec(&r, TLS_CERTIFICATE_EXPIRY),
            in_flight,
            connections,
            registry: r,
        }
        .with_known_labels()
    }

    /// Label sets that are known in advance start at 0, so alerts and dashboards see the
    /// series before the first event (Prometheus's advice against missing metrics).
    fn with_known_labels(self) -> Metrics {
        for limit in ["login", "connections", "wechat_in_flight"] {
            self.limited.with_label_values(&[limit]);
        }
        for what in ["code_cache", "revocation", "ticket", "credentials"] {
            self.shared_fallbacks.with_label_values(&[what]);
        }
        for kind in ["connect", "bad_gateway", "gateway_timeout", "no_backend"] {
            self.backend_errors.with_label_values(&[kind]);
        }
        for result in ["signed", "bad_url", "unavailable", "refused"] {
            self.jssdk_signatures.with_label_values(&[result]);
        }
        self
    }

    pub fn render(&self) -> Vec<u8> {
        SCRAPE_HOOKS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|refresh| refresh());
        let temp = crate::request::body::temp_bytes();
        self.body_temp_bytes.set(temp.min(i64::MAX as u64) as i64);
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

pub static METRICS: Lazy<Metrics> = Lazy::new(Metrics::new);

/// A gauge's owner, asked to set it before each scrape; `false` once the owner is gone.
type ScrapeHook = Box<dyn Fn() -> bool + Send + Sync>;

static SCRAPE_HOOKS: Lazy<Mutex<Vec<ScrapeHook>>> = Lazy::new(|| Mutex::new(Vec::new()));

/// Set gauges from their source when scraped, for values that change with time rather than
/// on an event (a backend marked down for `backend_retry_seconds` is back when that ends).
pub fn refresh_on_scrape(hook: impl Fn() -> bool + Send + Sync + 'static) {
    SCRAPE_HOOKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(hook));
}

/// The request counter for a (route, status) and the latency histogram for the route.
type RequestHandles = (IntCounter, Histogram);

thread_local! {
    /// Label handles this thread already looked up: `with_label_values` hashes the labels and
    /// takes the family's lock on every call, which the per-request path should not pay. The
    /// keys are the program's own labels, never a client's: no need for SipHash's defence.
    static HANDLES: RefCell<FxHashMap<(&'static str, u16), RequestHandles>> =
        RefCell::new(FxHashMap::default());
    static STATIC_HITS: RefCell<FxHashMap<&'static str, IntCounter>> =
        RefCell::new(FxHashMap::default());
}

/// Count one finished request: by route class and status, and its duration by route.
pub fn record_request(route: &'static str, status: u16, elapsed: Duration) {
    HANDLES.with(|h| {
        let mut h = h.borrow_mut();
        let (count, latency) = h.entry((route, status)).or_insert_with(|| {
            (
                METRICS
                    .requests
                    .with_label_values(&[route, status_label(status)]),
                METRICS.latency.with_label_values(&[route]),
            )
        });
        count.inc();
        latency.observe(elapsed.as_secs_f64());
    });
}

/// Count one static answer by its content encoding.
pub fn record_static_hit(encoding: &'static str) {
    STATIC_HITS.with(|h| {
        h.borrow_mut()
            .entry(encoding)
            .or_insert_with(|| METRICS.static_hits.with_label_values(&[encoding]))
            .inc()
    });
}

/// Count one compression cache look-up or write (start-up and background work only).
pub fn record_compress_cache(result: &'static str) {
    METRICS.compress_cache.with_label_values(&[result]).inc();
}

/// Status as a label without allocating for the common ones.
pub fn status_label(s: u16) -> &'static str {
    match s {
        200 => "200",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        412 => "412",
        413 => "413",
        416 => "416",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        0 => "0",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// Established TCP connections whose local port is one of `ports`, from the kernel's socket
/// tables (`/proc/net/tcp`, `tcp6`): the count nginx's stub_status calls "Active connections",
/// read only when Prometheus scrapes, so the request path pays nothing for it.
pub fn established_connections(ports: &[u16]) -> Option<i64> {
    let mut n = 0;
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        for line in text.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) = (f.nth(1), f.next(), f.next()) else {
                continue;
            };
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if state == "01" && port.is_some_and(|p| ports.contains(&p)) {
                n += 1;
            }
        }
    }
    read_any.then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_established_connections_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // The kernel's table is read without a lock: sockets that other tests open meanwhile can
        // make one reading skip or repeat a line, so a few readings are allowed.
        let read = || established_connections(&[port]).unwrap();
        assert_eq!(read(), 0, "nothing is connected to a fresh listener");
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_sa, _) = listener.accept().unwrap();
        let (_sb, _) = listener.accept().unwrap();
        // Two server-side sockets have local port `port` (the clients' local ports differ).
        let readings: Vec<i64> = (0..5).map(|_| read()).collect();
        assert!(readings.contains(&2), "{readings:?}");
    }

    #[test]
    fn renders_text_format() {
        METRICS.requests.with_label_values(&["static", "200"]).inc();
        METRICS
            .latency
            .with_label_values(&["static"])
            .observe(0.002);
        let text = String::from_utf8(METRICS.render()).unwrap();
        assert!(
            text.contains("wxedge_requests_total{route=\"static\",status=\"200\"}"),
            "{text}"
        );
        assert!(
            text.contains("wxedge_request_duration_seconds_bucket{route=\"static\",le=\"0.0025\"}"),
            "{text}"
        );
    }
}
