//! The edge: Pingora's `ProxyHttp`, one method per request phase. Each phase only routes to
//! the module that owns the concern (static files, auth, proxy, ops).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use std::time::Duration;

use crate::answer::{json_error, refusal_kind};
use crate::auth::{Auth, AuthAction, AuthRequest, Reply};
use crate::config::Config;
use crate::ops::access_log;
use crate::ops::metrics::METRICS;
use crate::ops::record::{LogFields, RequestRecord};
use crate::ops::{request_id, RouteClass};
use crate::proxy::forward::{BAD_GATEWAY as DOWN, GATEWAY_TIMEOUT as TIMEOUT};
use crate::proxy::headers::Forwarding;
use crate::proxy::upstream::{self, ForwardedIdentity, Outbound};
use crate::proxy::Upstreams;
use crate::request::client::{ClientAddr, RealIp};
use crate::route::{Route, Router};
use crate::static_files::{Answer, Conditions, Piece, Quick, StaticSite};

/// Shared by Pingora's proxy (this file) and the front door (`front`), hence the `Arc`.
#[derive(Clone)]
pub struct Edge(Arc<EdgeState>);

impl std::ops::Deref for Edge {
    type Target = EdgeState;
    fn deref(&self) -> &EdgeState {
        &self.0
    }
}

pub struct EdgeState {
    pub site: StaticSite,
    pub upstreams: Upstreams,
    pub auth: Auth,
    pub router: Router,
    /// Trusted proxies and the header that names the client behind them.
    pub real_ip: RealIp,
    /// Listeners whose connections start with a PROXY protocol header.
    pub proxy_protocol: Vec<std::net::SocketAddr>,
    /// The HTTPS listeners and what they accept with; `None` without HTTPS.
    pub https: Option<HttpsEdge>,
    /// Plain-HTTP listeners that send clients to HTTPS.
    pub redirect_listen: Vec<std::net::SocketAddr>,
    /// Where `/.well-known/acme-challenge/` files are read from (at request time).
    pub acme_webroot: std::path::PathBuf,
    pub host_override: Option<String>,
    /// The host of `wechat.public_url`, for redirects of requests that name none.
    pub public_host: Option<String>,
    pub drop_underscore_headers: bool,
    pub max_body_bytes: u64,
    pub limits: ClientLimits,
    pub access_log: access_log::Format,
    /// Header names only the edge may send upstream (canonical spelling).
    pub protected_headers: Vec<String>,
    /// Answer the common requests on the front door's short path (`ops.short_path`).
    pub short_path: bool,
}

/// The HTTPS side of the edge.
pub struct HttpsEdge {
    pub acceptor: Arc<pingora::listeners::tls::Acceptor>,
    /// Every HTTPS listener (with or without PROXY headers).
    pub listeners: Vec<std::net::SocketAddr>,
    /// `Strict-Transport-Security` for answers over TLS.
    pub hsts: Option<HeaderValue>,
    /// The port redirects send clients to (none in the URL when 443).
    pub port: u16,
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

#[derive(Default)]
pub struct RequestCtx {
    /// The one record of this request (made by the front door, or here).
    record: Option<RequestRecord>,
    pub request_id: String,
    class: RouteClass,
    /// The backend this request was (last) sent to.
    backend: Option<usize>,
    /// Backends that refused a connection for this request: a retry goes elsewhere. A pooled
    /// connection that died is retried on the same backend (it never saw the request).
    refused: Vec<usize>,
    /// Who the backend is told is calling, decided in request_filter.
    identity: ForwardedIdentity,
    /// `Set-Cookie` values for whatever response this request gets (session, login nonce).
    pub set_cookies: Vec<HeaderValue>,
    /// A valid session came with the request (or was just issued).
    pub authenticated: bool,
    /// `Strict-Transport-Security` for this answer (it goes over TLS and HSTS is on).
    hsts: Option<HeaderValue>,
    /// Bytes of a request body read so far (bodies the front door did not read: HTTP/2).
    body_seen: u64,
}

const JSON: &str = "application/json; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

impl Edge {
    pub fn new(config: &Config, site: StaticSite, auth: Auth) -> Edge {
        let s = &config.settings;
        Edge(Arc::new(EdgeState {
            site,
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
            https: config.https.as_ref().map(|h| HttpsEdge {
                acceptor: h.tls.acceptor.clone(),
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
            limits: ClientLimits {
                max_header_bytes: s.ops.max_header_bytes,
                header_timeout: Duration::from_millis(s.ops.client_header_timeout_ms),
                body_timeout: Duration::from_millis(s.ops.client_body_timeout_ms),
                send_timeout: Duration::from_millis(s.ops.send_timeout_ms),
                keepalive: Duration::from_secs(s.ops.keepalive_timeout_seconds),
            },
            access_log: access_log::Format::parse(&s.ops.access_log),
            short_path: s.ops.short_path,
        }))
    }
}

impl EdgeState {
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

    /// The short paths' static answer (HTTP/1 and HTTP/2): a whole dist file or its 304, from
    /// headers built at start-up; `None` when Pingora's path must answer (another method, a
    /// page load carrying an OAuth code to exchange, a range, a redirect, an error page).
    pub fn quick_static(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        c: &Conditions,
    ) -> Option<Quick<'_>> {
        let head = method == "HEAD";
        if !(head || method == "GET") || query.is_some_and(|q| q.contains("code=")) {
            return None;
        }
        self.site.quick(path, c, head)
    }

    /// Ready = the dist has its index, and a backend answers (when backends are configured).
    fn readiness(&self) -> (bool, serde_json::Value) {
        let dist = self.site.has_index();
        let backends = self.upstreams.is_empty() || self.upstreams.healthy_count() > 0;
        let tree = &self.site.tree;
        let (compressed, to_compress) = tree.compression_progress();
        let mut waiting_for = Vec::new();
        if !dist {
            waiting_for.push("index.html in the dist");
        }
        if !backends {
            waiting_for.push("a backend that accepts connections");
        }
        let cache = tree.cache.as_ref().map(|c| {
            use std::sync::atomic::Ordering::Relaxed;
            serde_json::json!({
                "dir": c.dir.display().to_string(),
                "hits": c.hits.load(Relaxed),
                "misses": c.misses.load(Relaxed),
                "written": c.writes.load(Relaxed),
            })
        });
        let body = serde_json::json!({
            "ready": dist && backends,
            "waiting_for": waiting_for,
            "dist_loaded": dist,
            "files": tree.files.len(),
            // Not waited for: files are served as they are (or with their twins) until their
            // variants are made.
            "compressed_files": compressed,
            "files_to_compress": to_compress,
            "stale_twins_ignored": tree.stale_twins.len(),
            "compress_cache": cache,
            "backends_total": self.upstreams.len(),
            "backends_healthy": self.upstreams.healthy_count(),
            "backends": self.upstreams.report(),
        });
        (dist && backends, body)
    }

    async fn probe_backends(&self) {
        // Passive health only learns from traffic; readiness asks once so an idle edge still knows.
        for i in 0..self.upstreams.len() {
            let addr = self.upstreams.addr(i);
            let ok = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
            if ok {
                self.upstreams.mark_up(i)
            } else {
                self.upstreams.mark_down(i)
            }
        }
    }
}

/// Write a complete small response.
pub async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    content_type: &str,
    extra: &[(header::HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build_no_case(status, Some(6 + extra.len()))?;
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    for (k, v) in extra {
        resp.append_header(k.clone(), v.clone())?;
    }
    resp.insert_header("x-request-id", &ctx.request_id)?;
    for c in &ctx.set_cookies {
        resp.append_header(header::SET_COOKIE, c.clone())?;
    }
    add_hsts(&mut resp, ctx)?;
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head || body.is_empty())
        .await?;
    if !head && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

fn add_hsts(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    if let Some(v) = &ctx.hsts {
        resp.insert_header(header::STRICT_TRANSPORT_SECURITY, v.clone())?;
    }
    Ok(())
}

/// Refuse the request with a JSON error (`{"error": code, "message": ...}`); `Ok(true)`: answered.
async fn reject(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    code: &str,
    message: &str,
) -> Result<bool> {
    ctx.class = RouteClass::Rejected;
    respond(session, ctx, status, JSON, &[], json_error(code, message)).await?;
    Ok(true)
}

async fn send_pieces(session: &mut Session, pieces: Vec<Piece>) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let n = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        let last = i + 1 == n;
        match piece {
            Piece::Memory(b) => session.write_response_body(Some(b), last).await?,
            Piece::File { path, start, len } => {
                let mut f = tokio::fs::File::open(&path).await.map_err(|e| {
                    Error::because(ErrorType::InternalError, "opening static file", e)
                })?;
                f.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| {
                    Error::because(ErrorType::InternalError, "seeking static file", e)
                })?;
                let mut left = len;
                while left > 0 {
                    let mut buf = vec![0u8; left.min(64 * 1024) as usize];
                    let got = f.read(&mut buf).await.map_err(|e| {
                        Error::because(ErrorType::InternalError, "reading static file", e)
                    })?;
                    if got == 0 {
                        return Error::e_explain(
                            ErrorType::InternalError,
                            "static file shrank while serving",
                        );
                    }
                    buf.truncate(got);
                    left -= got as u64;
                    session
                        .write_response_body(Some(Bytes::from(buf)), last && left == 0)
                        .await?;
                }
            }
        }
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            record: crate::front::take_handed_record(),
            ..RequestCtx::default()
        }
    }

    /// Route, then let the route's owner answer; `Ok(false)` goes on to the backend.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let answered = self.answer_or_pass(session, ctx).await?;
        if answered {
            drain_http2_body(session).await;
        }
        Ok(answered)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // A retry after a pooled connection died goes back to the same backend, as on the
        // short path; after a refused connection, to the next one.
        let same = ctx.backend.filter(|i| !ctx.refused.contains(i));
        let idx = same
            .or_else(|| self.upstreams.pick(&ctx.refused))
            // Unreachable while a failed connect retries only with a backend untried; if it
            // ever is, it is a backend failure (502 `bad_gateway`), as on the short path.
            .ok_or_else(|| {
                Error::explain(ErrorType::ConnectRefused, "no backend left to try").into_up()
            })?;
        ctx.backend = Some(idx);
        Ok(Box::new(self.upstreams.peer(idx)))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(idx) = ctx.backend {
            ctx.refused.push(idx);
            self.upstreams.mark_down(idx);
            log::warn!(
                "backend {} unreachable: {:?}",
                self.upstreams.authority(idx),
                e.etype()
            );
        }
        METRICS.backend_errors.with_label_values(&["connect"]).inc();
        // Nothing was sent yet, so any other backend may take the request.
        e.set_retry(ctx.refused.len() < self.upstreams.len());
        e
    }

    /// A pooled backend connection that failed is retried once on a fresh one, whatever the
    /// method: the same rule as the short path's (a backend that closed an idle keep-alive
    /// connection never saw the request). Pingora's default retries idempotent methods only.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(idx) = ctx.backend {
            self.upstreams.mark_up(idx);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The front door wrote an HTTP/1 request's framing: one Content-Length for a whole
        // body. An HTTP/2 request declares its length, or streams a body of unknown length
        // (chunked to the backend), or has none.
        let body_len = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| {
                let method = session.req_header().method.as_str();
                upstream::declared_length(method, 0).filter(|_| session.is_body_empty())
            });
        let record = ctx.record.as_ref();
        upstream::apply(
            upstream,
            &Outbound {
                forwarding: &self
                    .forwarding(record.map(|r| &r.client), record.is_some_and(|r| r.https)),
                identity: &ctx.identity,
                request_id: &ctx.request_id,
                body_len,
                streamed_body: body_len.is_none() && !session.is_body_empty(),
                upgrade: session.is_upgrade_req(),
            },
        )
    }

    /// HTTP/2 bodies stream through here; the front door bounded HTTP/1 bodies already.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // An empty last DATA frame must not become a chunk: Pingora would write it as a
        // terminating `0` chunk and then terminate the body again, leaving `0\r\n\r\n` on
        // the backend connection ahead of the next request.
        if body.as_ref().is_some_and(|b| b.is_empty()) {
            *body = None;
        }
        if let Some(b) = body {
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > self.max_body_bytes {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.class == RouteClass::Proxy {
            // The backend's hop-by-hop headers describe its connection to the edge, not the
            // client's; Pingora writes the client's own framing and `Connection`.
            let named: Vec<String> = resp
                .headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
                .filter(|t| !t.is_empty())
                .map(str::to_ascii_lowercase)
                .collect();
            let upgraded = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
            for name in named.iter().map(String::as_str).chain([
                "keep-alive",
                "proxy-connection",
                "te",
                "trailer",
            ]) {
                if !(upgraded && name == "upgrade") {
                    resp.remove_header(name);
                }
            }
            resp.insert_header("x-request-id", ctx.request_id.as_str())?;
            add_hsts(resp, ctx)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, kind, message) = match e.etype() {
            ErrorType::HTTPStatus(413) => (413, "payload_too_large", "request body is too large"),
            ErrorType::HTTPStatus(c) => (*c, "error", "request failed"),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                (TIMEOUT.status, TIMEOUT.kind, TIMEOUT.message)
            }
            _ => match e.esource() {
                ErrorSource::Upstream => (DOWN.status, DOWN.kind, DOWN.message),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "", "")
                    }
                    _ => (400, "bad_request", "malformed request"),
                },
                _ => (500, "internal_error", "internal error"),
            },
        };
        if ctx.class == RouteClass::Proxy && code >= 500 {
            METRICS.backend_errors.with_label_values(&[kind]).inc();
        }
        let mut answered = false;
        if code > 0 && session.response_written().is_none() {
            answered = respond(session, ctx, code, JSON, &[], json_error(kind, message))
                .await
                .is_ok();
            drain_http2_body(session).await;
        }
        FailToProxy {
            error_code: code,
            // A backend failure answered whole leaves the client's connection in a known
            // state (its request was read whole by the front door), as on the short path.
            can_reuse_downstream: answered && e.esource() == &ErrorSource::Upstream,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // Dropping the record (with the context) writes the log line and the metrics.
        if let Some(record) = ctx.record.as_mut() {
            let status = session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0);
            record.upstream = ctx.backend.map(|i| self.upstreams.authority(i));
            record.answered(ctx.class, status, session.body_bytes_sent() as u64);
        }
    }
}

impl Edge {
    /// The answer of everything but the backend; `Ok(false)` goes on to the backend.
    async fn answer_or_pass(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // The front door parsed, validated and normalised HTTP/1 requests and made their
        // records; HTTP/2 requests (read by Pingora's h2 server) get the same checks here.
        let refused = match ctx.record {
            Some(_) => None,
            None => {
                ctx.record = Some(self.record_for(session));
                crate::request::h2::check(session.req_header_mut(), self.max_body_bytes).err()
            }
        };
        let record = ctx.record.as_ref().expect("made above");
        ctx.request_id = record.request_id.clone();
        if record.https {
            ctx.hsts = self.https.as_ref().and_then(|h| h.hsts.clone());
        }
        if let Some(r) = refused {
            return reject(session, ctx, r.status, refusal_kind(r.status), r.message).await;
        }
        if crate::ops::lifecycle::draining() {
            // Clients should open their next connection to the process taking over.
            session.set_keepalive(None);
        }
        let path = session.req_header().uri.path().to_string();
        let route = self.router.route(&path);
        match route {
            Route::Health | Route::Ready => {
                ctx.class = RouteClass::Health;
                self.health(session, ctx, route).await?;
                return Ok(true);
            }
            Route::AcmeChallenge => {
                ctx.class = RouteClass::Static;
                self.acme_challenge(session, ctx, &path).await?;
                return Ok(true);
            }
            _ => {}
        }
        let proxied = route == Route::Proxy;
        // WeChat login at the edge: callback interception, /_wxedge/* endpoints, the sandbox,
        // the 401 for `require_session` prefixes.
        let outcome = self
            .auth
            .decide(&auth_request(session, record, &path), proxied)
            .await;
        ctx.set_cookies.extend(outcome.set_cookies);
        ctx.authenticated = outcome.authenticated;
        match outcome.action {
            AuthAction::Answer(reply) => {
                ctx.class = reply.class;
                write_reply(session, ctx, reply).await?;
                return Ok(true);
            }
            AuthAction::Continue(identity) => ctx.identity = identity,
        }
        match route {
            // The edge's own namespace: an unknown name is a 404, never the SPA.
            Route::Edge | Route::AcmeChallenge => {
                reject(session, ctx, 404, "not_found", "no such /_wxedge/ endpoint").await
            }
            Route::Proxy => {
                ctx.class = RouteClass::Proxy;
                if !self.upstreams.is_empty() {
                    return Ok(false);
                }
                METRICS
                    .backend_errors
                    .with_label_values(&["no_backend"])
                    .inc();
                let body = json_error("bad_gateway", "no backend is configured");
                respond(session, ctx, 502, JSON, &[], body).await?;
                Ok(true)
            }
            Route::Static | Route::Health | Route::Ready => {
                ctx.class = RouteClass::Static;
                self.serve_static(session, ctx).await?;
                Ok(true)
            }
        }
    }

    /// `/_wxedge/healthz` and `/_wxedge/readyz`.
    async fn health(&self, session: &mut Session, ctx: &RequestCtx, route: Route) -> Result<()> {
        if route == Route::Health {
            let body = Bytes::from_static(b"{\"status\":\"ok\"}");
            return respond(session, ctx, 200, JSON, &[], body).await;
        }
        if !self.upstreams.is_empty() && self.upstreams.healthy_count() < self.upstreams.len() {
            self.probe_backends().await;
        }
        let (ready, body) = self.readiness();
        let status = if ready { 200 } else { 503 };
        respond(
            session,
            ctx,
            status,
            JSON,
            &[],
            Bytes::from(body.to_string()),
        )
        .await
    }

    /// The dist's answer: a file (whole, 304, ranges), a directory redirect, or an error.
    async fn serve_static(&self, session: &mut Session, ctx: &RequestCtx) -> Result<()> {
        let method = session.req_header().method.clone();
        if method != http::Method::GET && method != http::Method::HEAD {
            let allow = [(header::ALLOW, HeaderValue::from_static("GET, HEAD"))];
            let body = Bytes::from_static(b"405 Method Not Allowed\n");
            return respond(session, ctx, 405, TEXT, &allow, body).await;
        }
        let answer = {
            let req = session.req_header();
            let conditions = Conditions::from_headers(&req.headers);
            let head = method == http::Method::HEAD;
            self.site
                .answer(req.uri.path(), req.uri.query(), &conditions, head)
        };
        match answer {
            Answer::File(plan) => {
                crate::ops::metrics::record_static_hit(plan.encoding.token());
                let mut resp =
                    ResponseHeader::build_no_case(plan.status, Some(plan.headers.len() + 4))?;
                for (k, v) in plan.headers {
                    resp.insert_header(k, v)?;
                }
                match (plan.status, plan.content_length) {
                    (304, _) => {}
                    (_, len) => resp.insert_header(header::CONTENT_LENGTH, len.unwrap_or(0))?,
                }
                resp.insert_header("x-request-id", &ctx.request_id)?;
                add_hsts(&mut resp, ctx)?;
                if !ctx.set_cookies.is_empty() {
                    // A response that sets a session must never be stored by a shared cache.
                    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
                    for c in &ctx.set_cookies {
                        resp.append_header(header::SET_COOKIE, c.clone())?;
                    }
                }
                let done = plan.body.is_empty();
                session.write_response_header(Box::new(resp), done).await?;
                if !done {
                    send_pieces(session, plan.body).await?;
                }
                Ok(())
            }
            Answer::Redirect(location) => {
                let loc = [(header::LOCATION, header_value(&location)?)];
                let body = Bytes::from_static(b"301 Moved Permanently\n");
                respond(session, ctx, 301, TEXT, &loc, body).await
            }
            Answer::Error(status, why) => {
                let why = if status == 404 { "Not Found" } else { why };
                let body = Bytes::from(format!("{status} {why}\n"));
                respond(session, ctx, status, TEXT, &[], body).await
            }
        }
    }

    /// A record for a request that did not come through the front door.
    fn record_for(&self, session: &Session) -> RequestRecord {
        let req = session.req_header();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or_else(ClientAddr::unknown, |a| self.real_ip.hop(a.ip()));
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        self.h2_record(req, target, &peer, https)
    }

    /// `/.well-known/acme-challenge/<token>`, read from the ACME webroot at request time
    /// (certbot writes the file just before the CA asks for it).
    async fn acme_challenge(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        path: &str,
    ) -> Result<()> {
        let token = path
            .strip_prefix(crate::route::ACME_PREFIX)
            .unwrap_or_default();
        let valid = !token.is_empty()
            && token.len() <= 256
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let file = self
            .acme_webroot
            .join(".well-known/acme-challenge")
            .join(token);
        let body = match valid {
            true => tokio::fs::read(&file)
                .await
                .ok()
                .filter(|b| b.len() <= 64 * 1024),
            false => None,
        };
        match body {
            Some(b) => respond(session, ctx, 200, TEXT, &[], Bytes::from(b)).await,
            None => {
                respond(
                    session,
                    ctx,
                    404,
                    TEXT,
                    &[],
                    Bytes::from_static(b"404 Not Found\n"),
                )
                .await
            }
        }
    }
}

/// After an HTTP/2 answer that came before the whole request body (a refusal, a 401, a 413),
/// read the rest and drop it for a while, as nginx does: a client still sending would see its
/// stream reset instead of the answer. HTTP/1 bodies were read whole by the front door.
async fn drain_http2_body(session: &mut Session) {
    const DRAIN_FOR: Duration = Duration::from_secs(10);
    if session.as_downstream().is_http2() && !session.as_downstream_mut().is_body_done() {
        let _ =
            tokio::time::timeout(DRAIN_FOR, session.as_downstream_mut().drain_request_body()).await;
    }
}

/// The parts of the request the login looks at.
fn auth_request<'a>(
    session: &'a Session,
    record: &'a RequestRecord,
    path: &'a str,
) -> AuthRequest<'a> {
    let req = session.req_header();
    let text = |name: header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    // Only a trusted hop may say the browser used HTTPS in front of it.
    let https = record.https
        || (record.client.hop_trusted
            && req
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
    AuthRequest {
        method: req.method.as_str(),
        path,
        query: req.uri.query(),
        cookies: req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect(),
        // HTTP/2 names the host in `:authority`.
        host: text(header::HOST).or_else(|| req.uri.authority().map(|a| a.as_str())),
        https,
        accept: text(header::ACCEPT),
        referer: text(header::REFERER),
        request_id: &record.request_id,
    }
}

/// Write the login's answer.
async fn write_reply(session: &mut Session, ctx: &RequestCtx, reply: Reply) -> Result<()> {
    let mut headers = reply.headers;
    if let Some(location) = reply.location {
        headers.push((header::LOCATION, header_value(&location)?));
    }
    respond(
        session,
        ctx,
        reply.status,
        reply.content_type,
        &headers,
        reply.body,
    )
    .await
}

fn header_value(v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v)
        .map_err(|_| Error::explain(ErrorType::InternalError, "not a header value"))
}

fn version_label(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}
