//! The edge: Pingora's `ProxyHttp`, one method per request phase. Each phase only routes to
//! the module that owns the concern (static files, auth, proxy, ops).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::auth::{Auth, AuthAction};
use crate::config::Config;
use crate::ops::access_log::{self, Entry};
use crate::ops::metrics::METRICS;
use crate::ops::{request_id, RouteClass};
use crate::proxy::forward::{BAD_GATEWAY as DOWN, GATEWAY_TIMEOUT as TIMEOUT};
use crate::proxy::headers::{self as fwd, Forwarding};
use crate::proxy::Upstreams;
use crate::static_files::{Answer, Conditions, Piece, StaticSite};

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
    proxy_prefixes: Vec<String>,
    pub host_override: Option<String>,
    pub drop_underscore_headers: bool,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub access_log: access_log::Format,
    /// Header names only the edge may send upstream (canonical spelling).
    pub protected_headers: Vec<String>,
}

#[derive(Default)]
pub struct RequestCtx {
    started: Option<Instant>,
    pub request_id: String,
    class: RouteClass,
    /// Backends tried for this request, in order.
    tried: Vec<usize>,
    body_bytes: u64,
    /// Identity headers to inject upstream (name, value), decided in request_filter.
    identity_headers: Vec<(String, HeaderValue)>,
    /// Cookie header with the edge's own cookies removed, when it had any.
    upstream_cookie: Option<Option<String>>,
    /// `Set-Cookie` values for whatever response this request gets (session, login nonce).
    pub set_cookies: Vec<HeaderValue>,
    /// A valid session came with the request (or was just issued).
    pub authenticated: bool,
}

const JSON: &str = "application/json; charset=utf-8";

impl Edge {
    pub fn new(config: &Config, site: StaticSite, auth: Auth) -> Edge {
        let s = &config.settings;
        Edge(Arc::new(EdgeState {
            site,
            upstreams: Upstreams::new(&config.backends, &s.proxy),
            protected_headers: auth.protected_header_names(),
            auth,
            proxy_prefixes: s.proxy.prefixes.clone(),
            host_override: (!s.proxy.host.is_empty()).then(|| s.proxy.host.clone()),
            drop_underscore_headers: s.proxy.drop_underscore_headers,
            max_body_bytes: s.proxy.max_body_bytes,
            max_header_bytes: s.ops.max_header_bytes,
            access_log: access_log::Format::parse(&s.ops.access_log),
        }))
    }

    fn head_size(session: &Session) -> usize {
        let req = session.req_header();
        let target = req
            .uri
            .path_and_query()
            .map_or(req.uri.path().len(), |p| p.as_str().len());
        target
            + req
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>()
    }
}

impl EdgeState {
    pub fn is_proxied(&self, path: &str) -> bool {
        self.proxy_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()) || p.strip_suffix('/') == Some(path))
    }

    /// Ready = the dist has its index, and a backend answers (when backends are configured).
    fn readiness(&self) -> (bool, serde_json::Value) {
        let dist = self.site.has_index();
        let backends = self.upstreams.is_empty() || self.upstreams.healthy_count() > 0;
        let body = serde_json::json!({
            "ready": dist && backends,
            "dist_loaded": dist,
            "files": self.site.tree.files.len(),
            "backends_total": self.upstreams.len(),
            "backends_healthy": self.upstreams.healthy_count(),
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
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head || body.is_empty())
        .await?;
    if !head && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
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

/// 302 to `location` (a path or URL built by the edge itself).
pub async fn redirect(session: &mut Session, ctx: &RequestCtx, location: &str) -> Result<()> {
    let loc = HeaderValue::from_str(location).map_err(|_| {
        Error::explain(
            ErrorType::InternalError,
            "redirect target is not a header value",
        )
    })?;
    respond(
        session,
        ctx,
        302,
        "text/plain; charset=utf-8",
        &[(header::LOCATION, loc)],
        Bytes::new(),
    )
    .await
}

pub fn json_error(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": code, "message": message }).to_string())
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
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        METRICS.in_flight.inc();
        if crate::ops::lifecycle::draining() {
            // Clients should open their next connection to the process taking over.
            session.set_keepalive(None);
        }
        ctx.request_id =
            request_id::accept(session.get_header("x-request-id").map(|v| v.as_bytes()))
                .unwrap_or_else(request_id::generate);

        if Self::head_size(session) > self.max_header_bytes {
            return reject(
                session,
                ctx,
                431,
                "header_too_large",
                "request headers are too large",
            )
            .await;
        }
        let req = session.req_header();
        let hosts = req.headers.get_all(header::HOST);
        let problem = crate::validation::host_problem(
            req.version == http::Version::HTTP_11,
            hosts.iter().count(),
            hosts.iter().next().map(|v| v.as_bytes()),
        );
        if let Some(why) = problem {
            // What follows on this connection cannot be trusted to be framed as we think.
            session.set_keepalive(None);
            return reject(session, ctx, 400, "bad_request", why).await;
        }
        let path = session.req_header().uri.path().to_string();

        if let Some(ops) = path.strip_prefix("/_wxedge/") {
            match ops {
                "healthz" => {
                    ctx.class = RouteClass::Health;
                    respond(
                        session,
                        ctx,
                        200,
                        JSON,
                        &[],
                        Bytes::from_static(b"{\"status\":\"ok\"}"),
                    )
                    .await?;
                    return Ok(true);
                }
                "readyz" => {
                    ctx.class = RouteClass::Health;
                    if !self.upstreams.is_empty()
                        && self.upstreams.healthy_count() < self.upstreams.len()
                    {
                        self.probe_backends().await;
                    }
                    let (ready, body) = self.readiness();
                    respond(
                        session,
                        ctx,
                        if ready { 200 } else { 503 },
                        JSON,
                        &[],
                        Bytes::from(body.to_string()),
                    )
                    .await?;
                    return Ok(true);
                }
                _ => {}
            }
        }

        // WeChat login at the edge: callback interception, /_wxedge/* endpoints, the sandbox.
        let proxied = self.is_proxied(&path);
        match self.auth.request_filter(session, ctx, proxied).await? {
            AuthAction::Responded(class) => {
                ctx.class = class;
                return Ok(true);
            }
            AuthAction::Continue {
                identity_headers,
                upstream_cookie,
            } => {
                ctx.identity_headers = identity_headers;
                ctx.upstream_cookie = upstream_cookie;
            }
        }

        if path.starts_with("/_wxedge/") {
            // The edge's own namespace: an unknown name is a 404, never the SPA.
            return reject(session, ctx, 404, "not_found", "no such /_wxedge/ endpoint").await;
        }

        if proxied {
            ctx.class = RouteClass::Proxy;
            if let Some(status) = self.auth.require_session_refusal(session, ctx) {
                let body = self.auth.unauthorized_body(session, ctx);
                respond(session, ctx, status, JSON, &[], body).await?;
                return Ok(true);
            }
            let declared = session
                .get_header(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.max_body_bytes) {
                respond(
                    session,
                    ctx,
                    413,
                    JSON,
                    &[],
                    json_error("payload_too_large", "request body is too large"),
                )
                .await?;
                return Ok(true);
            }
            if self.upstreams.is_empty() {
                METRICS
                    .backend_errors
                    .with_label_values(&["no_backend"])
                    .inc();
                respond(
                    session,
                    ctx,
                    502,
                    JSON,
                    &[],
                    json_error("bad_gateway", "no backend is configured"),
                )
                .await?;
                return Ok(true);
            }
            return Ok(false);
        }

        ctx.class = RouteClass::Static;
        let method = session.req_header().method.clone();
        if method != http::Method::GET && method != http::Method::HEAD {
            let allow = [(header::ALLOW, HeaderValue::from_static("GET, HEAD"))];
            respond(
                session,
                ctx,
                405,
                "text/plain; charset=utf-8",
                &allow,
                Bytes::from_static(b"405 Method Not Allowed\n"),
            )
            .await?;
            return Ok(true);
        }
        let head = method == http::Method::HEAD;
        let answer = {
            let req = session.req_header();
            let conditions = Conditions::from_headers(&req.headers);
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
                    (_, Some(len)) => resp.insert_header(header::CONTENT_LENGTH, len)?,
                    (_, None) => resp.insert_header(header::CONTENT_LENGTH, 0)?,
                }
                resp.insert_header("x-request-id", &ctx.request_id)?;
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
            }
            Answer::Redirect(location) => {
                let loc = [(
                    header::LOCATION,
                    HeaderValue::from_str(&location)
                        .map_err(|_| Error::new(ErrorType::InternalError))?,
                )];
                respond(
                    session,
                    ctx,
                    301,
                    "text/plain; charset=utf-8",
                    &loc,
                    Bytes::from_static(b"301 Moved Permanently\n"),
                )
                .await?;
            }
            Answer::Error(status, why) => {
                let body = format!(
                    "{status} {}\n",
                    if status == 404 { "Not Found" } else { why }
                );
                respond(
                    session,
                    ctx,
                    status,
                    "text/plain; charset=utf-8",
                    &[],
                    Bytes::from(body),
                )
                .await?;
            }
        }
        Ok(true)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.max_body_bytes {
                // Chunked uploads have no Content-Length to refuse up front.
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body is too large");
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let idx = self
            .upstreams
            .pick(&ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "no backend left to try"))?;
        ctx.tried.push(idx);
        Ok(Box::new(self.upstreams.peer(idx)))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(&idx) = ctx.tried.last() {
            self.upstreams.mark_down(idx);
            log::warn!(
                "backend {} unreachable: {:?}",
                self.upstreams.authority(idx),
                e.etype()
            );
        }
        METRICS.backend_errors.with_label_values(&["connect"]).inc();
        // Nothing was sent yet, so any other backend may take the request.
        e.set_retry(ctx.tried.len() < self.upstreams.len());
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
        if let Some(&idx) = ctx.tried.last() {
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
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        fwd::apply(
            upstream,
            &Forwarding {
                client_ip: client_ip.as_deref(),
                proto: "http",
                host_override: self.host_override.as_deref(),
                drop_underscore_headers: self.drop_underscore_headers,
                protected: &self.protected_headers,
            },
        )?;
        for (name, value) in &ctx.identity_headers {
            upstream.insert_header(name.clone(), value.clone())?;
        }
        match &ctx.upstream_cookie {
            None => {}
            Some(None) => {
                upstream.remove_header(&header::COOKIE);
            }
            Some(Some(rest)) => {
                upstream.insert_header(header::COOKIE, rest.as_str())?;
            }
        }
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.class == RouteClass::Proxy {
            resp.insert_header("x-request-id", ctx.request_id.as_str())?;
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
        if code > 0 && session.response_written().is_none() {
            let _ = respond(session, ctx, code, JSON, &[], json_error(kind, message)).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(started) = ctx.started else { return };
        METRICS.in_flight.dec();
        let elapsed = started.elapsed();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx.class.label();
        crate::ops::metrics::record_request(route, status, elapsed);
        // Health probes run every few seconds; they would drown the log.
        if ctx.class == RouteClass::Health || self.access_log == access_log::Format::Off {
            return;
        }
        let req = session.req_header();
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "-".into());
        let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let text = |name: header::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let upstream = ctx
            .tried
            .last()
            .map(|&i| self.upstreams.authority(i))
            .unwrap_or("-");
        access_log::write(
            self.access_log,
            &Entry {
                client: &client,
                method: req.method.as_str(),
                target,
                version: version_label(req.version),
                status,
                bytes: session.body_bytes_sent(),
                referer: text(header::REFERER),
                user_agent: text(header::USER_AGENT),
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream,
                request_id: &ctx.request_id,
                class: route,
            },
        );
    }
}

fn version_label(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}
