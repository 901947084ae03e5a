//! The site: everything the edge knows about the one site it serves, built once from the
//! configuration and shared by every connection and transport (hence the `Arc`): the dist, the
//! backends, the login, the router, who is trusted, and what clients may take.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};

use crate::auth::Auth;
use crate::config::Config;
use crate::ops::access_log;
use crate::ops::record::{LogFields, RequestRecord};
use crate::ops::request_id;
use crate::proxy::headers::Forwarding;
use crate::proxy::Upstreams;
use crate::request::client::{ClientAddr, RealIp};
use crate::route::Router;
use crate::static_files::StaticSite;

/// The site, shared by every connection and transport.
#[derive(Clone)]
pub struct Site(Arc<SiteState>);

impl std::ops::Deref for Site {
    type Target = SiteState;
    fn deref(&self) -> &SiteState {
        &self.0
    }
}

pub struct SiteState {
    /// The dist, loaded.
    pub dist: StaticSite,
    pub upstreams: Upstreams,
    pub auth: Auth,
    pub router: Router,
    /// Trusted proxies and the header that names the client behind them.
    pub real_ip: RealIp,
    /// Listeners whose connections start with a PROXY protocol header.
    pub proxy_protocol: Vec<std::net::SocketAddr>,
    /// The HTTPS listeners and what they accept with; `None` without HTTPS.
    pub https: Option<HttpsSite>,
    /// Plain-HTTP listeners that send clients to HTTPS.
    pub redirect_listen: Vec<std::net::SocketAddr>,
    /// Where `/.well-known/acme-challenge/` files are read from (at request time).
    pub acme_webroot: std::path::PathBuf,
    pub host_override: Option<String>,
    /// The host of `wechat.public_url`, for redirects of requests that name none.
    pub public_host: Option<String>,
    pub drop_underscore_headers: bool,
    pub max_body_bytes: u64,
    /// How request bodies are kept until they are sent on (memory, then a temporary file).
    pub body_spool: crate::request::body::SpoolPolicy,
    pub limits: ClientLimits,
    /// Request rates per client address (`limits.*`).
    pub rate_limits: crate::throttle::RateLimits,
    /// Open connections per client address (`limits.connections_per_client`).
    pub client_connections: crate::throttle::ClientConnections,
    pub access_log: access_log::Format,
    /// Header names only the edge may send upstream (canonical spelling).
    pub protected_headers: Vec<String>,
}

/// The HTTPS side of the edge.
pub struct HttpsSite {
    pub acceptor: Arc<pingora::listeners::tls::Acceptor>,
    /// Every HTTPS listener (with or without PROXY headers).
    pub listeners: Vec<std::net::SocketAddr>,
    /// `Strict-Transport-Security` for answers over TLS.
    pub hsts: Option<HeaderValue>,
    /// The port redirects send clients to (none in the URL when 443).
    pub port: u16,
    /// The certificates served, for their expiry (readiness, metrics, warnings).
    pub certificates: Vec<crate::tls::LoadedCertificate>,
}

/// What a client connection may take, like nginx's `client_*` and `send_timeout` settings.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub max_header_bytes: usize,
    /// The whole head, from its first byte.
    pub header_timeout: Duration,
    /// Between two reads of a body.
    pub body_timeout: Duration,
    /// For the client to take a part of an answer.
    pub send_timeout: Duration,
    /// An idle kept-alive connection.
    pub keepalive: Duration,
}

impl Site {
    pub fn new(config: &Config, dist: StaticSite, auth: Auth) -> Site {
        let s = &config.settings;
        Site(Arc::new(SiteState {
            dist,
            upstreams: Upstreams::new(&config.backends, &s.proxy),
            protected_headers: auth.protected_header_names(),
            auth,
            router: Router::new(&s.proxy.prefixes),
            real_ip: RealIp::new(&config.trusted_proxies, &s.real_ip.header),
            proxy_protocol: config
                .listen_proxy_protocol
                .iter()
                .chain(config.https.iter().flat_map(|h| &h.listen_proxy_protocol))
                .copied()
                .collect(),
            https: config.https.as_ref().map(|h| HttpsSite {
                acceptor: h.tls.acceptor.clone(),
                certificates: h.tls.certificates.clone(),
                listeners: h
                    .listen
                    .iter()
                    .chain(&h.listen_proxy_protocol)
                    .copied()
                    .collect(),
                hsts: (!s.tls.hsts.is_empty())
                    .then(|| HeaderValue::from_str(&s.tls.hsts).ok())
                    .flatten(),
                port: h
                    .listen
                    .first()
                    .or(h.listen_proxy_protocol.first())
                    .map_or(443, |a| a.port()),
            }),
            redirect_listen: config.redirect_listen.clone(),
            acme_webroot: if s.tls.acme_webroot.is_empty() {
                s.dist.clone()
            } else {
                s.tls.acme_webroot.clone().into()
            },
            host_override: (!s.proxy.host.is_empty()).then(|| s.proxy.host.clone()),
            public_host: s
                .wechat
                .public_url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_string)),
            drop_underscore_headers: s.proxy.drop_underscore_headers,
            max_body_bytes: s.proxy.max_body_bytes,
            body_spool: crate::request::body::SpoolPolicy {
                buffer_bytes: s.proxy.body_buffer_bytes.min(usize::MAX as u64) as usize,
                temp_dir: match s.proxy.body_temp_dir.as_str() {
                    "" => std::env::temp_dir(),
                    dir => dir.into(),
                },
                max_temp_bytes: s.proxy.body_temp_max_bytes,
            },
            limits: ClientLimits {
                max_header_bytes: s.ops.max_header_bytes,
                header_timeout: Duration::from_millis(s.ops.client_header_timeout_ms),
                body_timeout: Duration::from_millis(s.ops.client_body_timeout_ms),
                send_timeout: Duration::from_millis(s.ops.send_timeout_ms),
                keepalive: Duration::from_secs(s.ops.keepalive_timeout_seconds),
            },
            rate_limits: crate::throttle::RateLimits::new(&s.limits),
            client_connections: crate::throttle::ClientConnections::new(
                s.limits.connections_per_client,
            ),
            access_log: access_log::Format::parse(&s.ops.access_log),
        }))
    }
}

impl SiteState {
    /// `Strict-Transport-Security` for an answer sent over TLS (`tls`), when HSTS is on: the one
    /// rule every writer adds it by.
    pub fn hsts(&self, tls: bool) -> Option<&HeaderValue> {
        self.https.as_ref().filter(|_| tls)?.hsts.as_ref()
    }

    /// The forwarding policy for a request from `client`, over TLS or not.
    pub fn forwarding<'a>(&'a self, client: Option<&'a ClientAddr>, https: bool) -> Forwarding<'a> {
        Forwarding {
            client,
            proto: if https { "https" } else { "http" },
            host_override: self.host_override.as_deref(),
            drop_underscore_headers: self.drop_underscore_headers,
            protected: &self.protected_headers,
        }
    }

    /// The record of an HTTP/2 request (read by the h2 server, not the front door's parser),
    /// from `peer` (the connection's other end); `target` is the request target as it came.
    pub fn h2_record(
        &self,
        req: &pingora::http::RequestHeader,
        target: &str,
        peer: &ClientAddr,
        https: bool,
    ) -> RequestRecord {
        let request_id = request_id::accept(req.headers.get("x-request-id").map(|v| v.as_bytes()))
            .unwrap_or_else(request_id::generate);
        let client = self.real_ip.client(
            peer,
            req.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
        );
        let mut record = RequestRecord::start(self.access_log, request_id, client, || {
            let field = |name: header::HeaderName| {
                req.headers
                    .get(name)
                    .map_or_else(Bytes::new, |v| Bytes::copy_from_slice(v.as_bytes()))
            };
            LogFields {
                method: Bytes::copy_from_slice(req.method.as_str().as_bytes()),
                target: Bytes::copy_from_slice(target.as_bytes()),
                version: version_label(req.version),
                referer: field(header::REFERER),
                user_agent: field(header::USER_AGENT),
            }
        });
        record.https = https;
        record
    }
}

fn version_label(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}
