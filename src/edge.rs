//! Pingora's path: its `ProxyHttp`, one method per request phase, as a thin adapter over the
//! one decision (`pipeline`). It carries out the plans the front door hands it (upgrades,
//! HTTP/1.0 calls, and every request when `ops.short_path` is off) and decides the requests it
//! reads itself (HTTP/2 bodies of unknown length), then writes replies with Pingora's session
//! and sends `Forward` plans through Pingora's upstream machinery.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::ops::metrics::METRICS;
use crate::ops::record::RequestRecord;
use crate::ops::RouteClass;
use crate::pipeline::{take_handed, Plan};
use crate::proxy::forward::{BAD_GATEWAY as DOWN, GATEWAY_TIMEOUT as TIMEOUT};
use crate::proxy::upstream::{self, ForwardedIdentity, Outbound};
use crate::reply::{Reply, ReplyBody};
use crate::request::client::ClientAddr;
use crate::site::Site;
use crate::static_files::pieces::PieceReader;
use crate::static_files::Piece;

#[derive(Default)]
pub struct RequestCtx {
    /// The one record of this request (made by the front door, or here).
    record: Option<RequestRecord>,
    /// What the front door decided for it, if it did.
    plan: Option<Plan<'static>>,
    pub request_id: String,
    class: RouteClass,
    /// The backend this request was (last) sent to.
    backend: Option<usize>,
    /// Backends that refused a connection for this request: a retry goes elsewhere. A pooled
    /// connection that died is retried on the same backend (it never saw the request).
    refused: Vec<usize>,
    /// Who the backend is told is calling (the plan's).
    identity: ForwardedIdentity,
    /// `Strict-Transport-Security` for this answer (it goes over TLS and HSTS is on).
    hsts: Option<HeaderValue>,
    /// Bytes of a request body read so far (bodies the front door did not read: HTTP/2).
    body_seen: u64,
}

/// Write a reply: its own fields, its length, then the request id and HSTS.
async fn write_reply(session: &mut Session, ctx: &RequestCtx, reply: Reply) -> Result<()> {
    let mut resp = ResponseHeader::build_no_case(reply.status, Some(reply.headers.len() + 3))?;
    if let Some(len) = reply.content_length() {
        resp.insert_header(header::CONTENT_LENGTH, len)?;
    }
    for (k, v) in reply.headers {
        resp.append_header(k, v)?;
    }
    resp.insert_header("x-request-id", &ctx.request_id)?;
    if let Some(v) = &ctx.hsts {
        resp.insert_header(header::STRICT_TRANSPORT_SECURITY, v.clone())?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    match reply.body {
        ReplyBody::Bytes(body) => {
            let done = head || body.is_empty();
            session.write_response_header(Box::new(resp), done).await?;
            if !done {
                session.write_response_body(Some(body), true).await?;
            }
        }
        ReplyBody::Pieces { pieces, .. } => {
            let done = head || pieces.is_empty();
            session.write_response_header(Box::new(resp), done).await?;
            if !done {
                send_pieces(session, pieces).await?;
            }
        }
    }
    Ok(())
}

async fn send_pieces(session: &mut Session, pieces: Vec<Piece>) -> Result<()> {
    let mut body = PieceReader::new(pieces);
    loop {
        let chunk = body
            .next()
            .await
            .map_err(|e| Error::because(ErrorType::InternalError, "reading a static file", e))?;
        let Some(chunk) = chunk else { return Ok(()) };
        let last = body.is_done();
        session.write_response_body(Some(chunk), last).await?;
        if last {
            return Ok(());
        }
    }
}

#[async_trait]
impl ProxyHttp for Site {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let (record, plan) = match take_handed() {
            Some(h) => (Some(h.record), h.plan),
            None => (None, None),
        };
        RequestCtx {
            record,
            plan,
            ..RequestCtx::default()
        }
    }

    /// The plan the front door made, or this path's own decision; `Ok(false)` goes on to the
    /// backend.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let answered = match ctx.plan.take() {
            Some(plan) => self.carry_out(session, ctx, plan).await?,
            None => self.decide_here(session, ctx).await?,
        };
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
            if let Some(v) = &ctx.hsts {
                resp.insert_header(header::STRICT_TRANSPORT_SECURITY, v.clone())?;
            }
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
            let reply = Reply::error(ctx.class, code, kind, message);
            answered = write_reply(session, ctx, reply).await.is_ok();
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

impl Site {
    /// Decide a request Pingora read itself (an HTTP/2 stream), as the front door decides the
    /// ones it reads, then carry the plan out.
    async fn decide_here(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
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
            ctx.hsts = self.hsts(true).cloned();
        }
        if let Some(r) = refused {
            return self.carry_out(session, ctx, Plan::Refuse(r)).await;
        }
        let (has_body, upgrade) = (!session.is_body_empty(), session.is_upgrade_req());
        let plan = {
            let req = session.req_header();
            let (client, id) = (&record.client, record.request_id.as_str());
            let incoming =
                crate::request::h2::incoming(req, client, id, record.https, has_body, upgrade);
            self.decide(&incoming).await
        };
        self.carry_out(session, ctx, plan).await
    }

    /// Write the plan's answer (`Ok(true)`), or set the request up for the backend.
    async fn carry_out(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        plan: Plan<'_>,
    ) -> Result<bool> {
        if ctx.request_id.is_empty() {
            if let Some(record) = &ctx.record {
                ctx.request_id = record.request_id.clone();
                if record.https {
                    ctx.hsts = self.hsts(true).cloned();
                }
            }
        }
        if crate::ops::lifecycle::draining() {
            // Clients should open their next connection to the process taking over.
            session.set_keepalive(None);
        }
        let reply = match plan {
            Plan::Forward(identity) | Plan::Tunnel(identity) => {
                ctx.class = RouteClass::Proxy;
                ctx.identity = identity;
                if !self.declared_empty_body_ended(session).await {
                    let r = crate::request::refuse(400, "a body after content-length: 0");
                    ctx.class = RouteClass::Rejected;
                    write_reply(session, ctx, Reply::refusal(r)).await?;
                    return Ok(true);
                }
                return Ok(false);
            }
            Plan::Refuse(r) => Reply::refusal(r),
            Plan::Reply(reply) => reply,
            Plan::Static(quick) => crate::pipeline::quick_reply(&quick),
        };
        ctx.class = reply.class;
        write_reply(session, ctx, reply).await?;
        Ok(true)
    }

    /// An HTTP/2 request that says `content-length: 0` before its stream has ended (Pingora
    /// then takes it as bodiless) goes on only once the stream ends empty: a DATA frame could
    /// still contradict it, and the backend must never get a request the client did not
    /// finish. `false`: it did not end empty (or in time).
    async fn declared_empty_body_ended(&self, session: &mut Session) -> bool {
        let downstream = session.as_downstream_mut();
        let declared_empty = downstream
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
        if !downstream.is_http2() || !declared_empty {
            return true;
        }
        loop {
            let next = downstream.read_request_body();
            match tokio::time::timeout(self.limits.body_timeout, next).await {
                Ok(Ok(None)) => return true,
                Ok(Ok(Some(data))) if data.is_empty() => {} // an empty DATA frame
                _ => return false,
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
