//! HTTP/2 at the front door: the connection's accept loop, and each stream's checks, decision
//! and answer.
//!
//! The loop is Pingora's (`HttpServerApp::process_new` → `accept_downstream_sessions`, not
//! public), rebuilt from its public parts: the same handshake and h2 options, GOAWAY when the
//! process shuts down (then the streams already sent are still served), the connection closed
//! after `keepalive` with no stream in flight, and at most [`MAX_MALFORMED_STREAMS`] refused
//! streams per connection.
//!
//! Each stream is checked (`request::h2::check`: a refusal is answered on the stream) and
//! decided by the one decision (`crate::pipeline`): what needs no waiting right here (a whole
//! dist file or its 304 from headers built at start-up, with no task and no proxy state
//! machine), the rest in a task of its own, which writes the reply on the stream or reads the
//! body whole (with or without a declared length) and sends the API call over the per-thread
//! keep-alive pool (`proxy::forward`) with the one upstream builder.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use super::{threads, Front};
use crate::ops::record::RequestRecord;
use crate::ops::RouteClass;
use crate::pipeline::Plan;
use crate::proxy::forward::{self, Outgoing};
use crate::proxy::upstream::{self, ForwardedIdentity, Outbound};
use crate::reply::{Reply, ReplyBody};
use crate::request::body::{BodyError, Spooled};
use crate::request::client::ClientAddr;
use crate::static_files::pieces::PieceReader;
use crate::static_files::{Piece, Quick};

/// How long the rest of a request body is read and dropped after an answer that came first.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// Refused streams a connection may open before it is closed: Pingora's own budget, which its
/// public accept call does not keep across calls, so the loop counts here.
const MAX_MALFORMED_STREAMS: usize = 32;

/// Bodies up to this size are queued on the stream whole (h2 sends them as the client's window
/// allows; the bytes are shared, not copied). Larger ones are written by a task of their own,
/// within the send timeout, which keeps the connection from counting as idle meanwhile.
const INLINE_BODY_MAX: usize = 64 * 1024;

/// What the connection knows of its client, for every stream.
struct Peer {
    addr: ClientAddr,
    https: bool,
}

/// Streams being served by tasks; the idle timeout runs only while there are none.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// One stream in flight, until dropped.
struct Busy(Arc<Active>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn busy(self: &Arc<Self>) -> Busy {
        self.count.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Returns once nothing has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        while self.count.load(Ordering::Relaxed) != 0 {
            self.idle.notified().await;
        }
        if !idle.is_zero() {
            tokio::time::sleep(idle).await;
        }
    }
}

/// What a stream needs after its first look (`short_h2`).
enum Next {
    /// Answered (or its answer queued whole on the stream).
    Done,
    /// The head is sent; a large body follows as the client takes it.
    Body(Bytes, RequestRecord),
    /// Decided, to carry out in a task of its own (`None`: the rest of the decision may wait,
    /// for a session, WeChat or the disk, so it is made there too).
    Serve(Option<Plan<'static>>, RequestRecord),
}

impl Front {
    /// Serve an HTTP/2 connection to its end.
    pub(super) async fn serve_h2(
        self: &Arc<Self>,
        stream: Stream,
        peer: ClientAddr,
        https: bool,
        shutdown: &ShutdownWatch,
    ) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let mut conn = match server::handshake(stream, None).await {
            Ok(c) => c,
            Err(e) => {
                log::error!("H2 handshake error {e}");
                return;
            }
        };
        let peer = Peer { addr: peer, https };
        let active = Arc::new(Active::default());
        let idle = self.site.limits.keepalive;
        let mut closing = shutdown.clone();
        let mut shutting_down = false;
        let mut malformed = 0;
        let mut batch = Vec::new();
        loop {
            let mut accepted = if shutting_down {
                HttpSession::from_h2_conn(&mut conn, digest.clone()).await
            } else {
                tokio::select! {
                    // The signal first, so that one arriving with a stream is not missed.
                    biased;
                    _ = closing.changed() => {
                        // GOAWAY; streams the client already opened are still served.
                        conn.graceful_shutdown();
                        shutting_down = true;
                        continue;
                    }
                    s = HttpSession::from_h2_conn(&mut conn, digest.clone()) => s,
                    // Idle with nothing in flight: close now (a graceful GOAWAY could hang on
                    // a dead peer).
                    _ = active.idle_for(idle) => return,
                }
            };
            // Take every stream the connection has already read before answering any: h2
            // flushes whenever it finds nothing more to read, so answered one by one, each
            // answer was a write of its own. A burst of 40 revalidations (304) now leaves in
            // 7 writes instead of 46 (a DATA payload over 256 bytes still gets its own flush).
            loop {
                match accepted {
                    // Clients often just close the connection: not worth a log line.
                    Err(_) | Ok(None) => return,
                    Ok(Some(H2Accept::Rejected)) => {
                        malformed += 1;
                        if malformed >= MAX_MALFORMED_STREAMS {
                            log::warn!(
                                "closing an HTTP/2 connection after {malformed} malformed requests"
                            );
                            return;
                        }
                    }
                    Ok(Some(H2Accept::Session(session))) => batch.push(session),
                }
                accepted = tokio::select! {
                    biased;
                    a = HttpSession::from_h2_conn(&mut conn, digest.clone()) => a,
                    _ = std::future::ready(()) => break,
                };
            }
            for session in batch.drain(..) {
                self.dispatch(session, &peer, &active);
            }
        }
    }

    /// Answer a stream at once, or start the task that serves it.
    fn dispatch(self: &Arc<Self>, mut session: HttpSession, peer: &Peer, active: &Arc<Active>) {
        match self.short_h2(&mut session, peer) {
            Next::Done => threads::share_the_cpu(),
            Next::Serve(plan, record) => {
                let (front, busy) = (self.clone(), active.busy());
                pingora_runtime::current_handle().spawn(async move {
                    let _busy = busy;
                    front.serve_stream(session, record, plan).await;
                });
            }
            Next::Body(body, mut record) => {
                let busy = active.busy();
                session.set_write_timeout(Some(self.site.limits.send_timeout));
                pingora_runtime::current_handle().spawn(async move {
                    let _busy = busy;
                    let len = body.len() as u64;
                    if session.write_body(body, true).await.is_err() {
                        record.answered(RouteClass::Static, 0, 0);
                    } else {
                        record.answered(RouteClass::Static, 200, len);
                    }
                });
            }
        }
    }

    /// One stream's first look: checked, decided as far as it can be at once, and a
    /// whole dist file or its 304 answered right here; or what is left to do.
    fn short_h2(&self, session: &mut HttpSession, peer: &Peer) -> Next {
        let site = &self.site;
        let no_body = session.is_body_empty();
        // The record logs the target as it came; the check may rewrite it.
        let req = session.req_header();
        let target = req.uri.path_and_query().map_or("/", |t| t.as_str());
        let mut record = site.h2_record(req, target, &peer.addr, peer.https);
        if let Err(refusal) =
            crate::request::h2::check(session.req_header_mut(), site.max_body_bytes)
        {
            return Next::Serve(Some(Plan::Refuse(refusal)), record);
        }
        let plan = {
            let incoming = self.incoming(session.req_header(), &record, !no_body);
            site.decide_at_once(&incoming)
        };
        let answer = match plan {
            Some(Plan::Static(answer)) => answer,
            Some(plan) => return Next::Serve(Some(plan.detach()), record),
            None => return Next::Serve(None, record),
        };
        let head = self.h2_head(&answer, &record);
        let body = answer.body;
        if body.is_empty() {
            let sent = session.write_response_header(head, true).is_ok();
            record.answered(RouteClass::Static, if sent { answer.status } else { 0 }, 0);
            return Next::Done;
        }
        if session.write_response_header(head, false).is_err() {
            record.answered(RouteClass::Static, 0, 0);
            return Next::Done;
        }
        if body.len() > INLINE_BODY_MAX {
            return Next::Body(body.clone(), record);
        }
        let queued = session
            .take_response_body_writer()
            .is_some_and(|mut w| w.send_data(body.clone(), true).is_ok());
        if queued {
            record.answered(RouteClass::Static, answer.status, body.len() as u64);
        }
        Next::Done
    }

    /// The stream as the decision sees it.
    fn incoming<'r>(
        &self,
        req: &'r pingora::http::RequestHeader,
        record: &'r RequestRecord,
        has_body: bool,
    ) -> crate::request::Incoming<'r> {
        let (client, id) = (&record.client, record.request_id.as_str());
        crate::request::h2::incoming(req, client, id, record.https, has_body, false)
    }

    /// Decide what was left to decide, and carry the plan out.
    async fn serve_stream(
        &self,
        session: HttpSession,
        record: RequestRecord,
        plan: Option<Plan<'static>>,
    ) {
        let plan = match plan {
            Some(plan) => plan,
            None => {
                let has_body = !session.is_body_empty();
                let incoming = self.incoming(session.req_header(), &record, has_body);
                self.site.decide_rest(&incoming).await.detach()
            }
        };
        let reply = match plan {
            // HTTP/2 has no upgrades (`incoming` says so): only `Forward` comes here.
            Plan::Forward(identity) | Plan::Tunnel(identity) => {
                return self.call_h2(session, record, identity).await
            }
            Plan::Refuse(refusal) => Reply::refusal(refusal),
            Plan::Reply(reply) => reply,
            Plan::Static(quick) => crate::pipeline::quick_reply(&quick),
        };
        self.reply_h2(session, record, reply).await;
    }

    /// An API call on the per-thread keep-alive pool, as HTTP/1 makes it (the
    /// same upstream request builder, the body read whole first, within `max_body_bytes`).
    async fn call_h2(
        &self,
        mut session: HttpSession,
        mut record: RequestRecord,
        identity: ForwardedIdentity,
    ) {
        let site = &self.site;
        let body = match self.read_h2_body(&mut session).await {
            Ok(body) => body,
            Err(Some(reply)) => return self.reply_h2(session, record, reply).await,
            Err(None) => {
                // The client went away or stalled mid-body.
                session.shutdown();
                return;
            }
        };
        let req = session.req_header();
        let https = record.https;
        let mut head = Vec::with_capacity(512);
        let method = req.method.as_str();
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        // HTTP/1 backends get `Host` from `:authority` where the client sent one, in place of
        // (or after) its `Host` lines.
        let authority = req.uri.authority().map(|a| a.as_str().as_bytes());
        let host = authority.filter(|_| !req.headers.contains_key(http::header::HOST));
        let client: Vec<(&str, &[u8])> = req
            .headers
            .iter()
            .map(|(k, v)| match (k == http::header::HOST, authority) {
                (true, Some(a)) => (k.as_str(), a),
                _ => (k.as_str(), v.as_bytes()),
            })
            .chain(host.map(|a| ("host", a)))
            .collect();
        upstream::write_head(
            &mut head,
            method,
            target,
            client.iter().copied(),
            &Outbound {
                forwarding: &site.forwarding(Some(&record.client), https),
                identity: &identity,
                request_id: &record.request_id,
                body_len: upstream::declared_length(method, body.len()),
                upgrade: false,
            },
        );
        let outgoing = Outgoing {
            head: &head,
            body: &body,
            head_request: req.method == http::Method::HEAD,
            finish: self.finish(&record, None),
            close_client: false,
            http10: false,
            upgrade: false,
            send_timeout: site.limits.send_timeout,
        };
        match forward::forward_h2(&site.upstreams, &outgoing, &mut session).await {
            Ok(r) => {
                record.upstream = Some(site.upstreams.authority(r.backend));
                record.answered(RouteClass::Proxy, r.status, r.body_bytes);
            }
            Err(forward::Error::Midway(b)) => {
                session.shutdown();
                record.upstream = Some(site.upstreams.authority(b.backend));
                record.answered(RouteClass::Proxy, b.status, b.body_bytes);
            }
            Err(forward::Error::Before(f)) => {
                record.upstream = f.backend.map(|i| site.upstreams.authority(i));
                let reply = f.answer();
                self.reply_h2(session, record, reply).await;
            }
        }
    }

    /// The request body, whole (in memory up to the buffer, else in a temporary file, as on
    /// HTTP/1; its declared length is within `max_body_bytes`: `check`). `Err(None)` if the
    /// client goes away or pauses longer than the body timeout, `Err(Some(..))` a body that
    /// cannot be kept (the stream gets that answer).
    async fn read_h2_body(&self, session: &mut HttpSession) -> Result<Spooled, Option<Reply>> {
        let site = &self.site;
        let mut body = Spooled::default();
        // Read to the end of the stream even when `Content-Length: 0` says there is no body
        // (Pingora's `is_body_done` believes it): a DATA frame may still contradict it, and a
        // request the client has not finished must not reach the backend.
        let refuse = |e: BodyError| {
            Some(Reply::refusal(crate::request::refuse(
                e.status(),
                e.message(),
            )))
        };
        loop {
            let read = session.read_body_bytes();
            match tokio::time::timeout(site.limits.body_timeout, read).await {
                Ok(Ok(Some(b))) if body.len() + b.len() as u64 <= site.max_body_bytes => {
                    body.push(&b, &site.body_spool).map_err(refuse)?
                }
                Ok(Ok(Some(_))) => return Err(refuse(BodyError::TooLarge)),
                Ok(Ok(None)) => return Ok(body),
                _ => return Err(None),
            }
        }
    }

    /// Write a reply on the stream (its fields, its length, the common fields; a file's
    /// pieces read and sent chunk by chunk), then read and drop what the client still sends of
    /// its body for a while, as nginx does: a client still sending would see its stream reset
    /// instead of the answer.
    async fn reply_h2(&self, mut session: HttpSession, mut record: RequestRecord, reply: Reply) {
        let length = reply.content_length();
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(reply.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        parts.version = http::Version::HTTP_2;
        let h = &mut parts.headers;
        if let Some(len) = length {
            h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        for (name, value) in reply.headers {
            h.append(name, value);
        }
        self.finish(&record, None).h2(h);
        let head_request = session.req_header().method == http::Method::HEAD;
        session.set_write_timeout(Some(self.site.limits.send_timeout));
        let head = Box::new(ResponseHeader::from(parts));
        let sent = match reply.body {
            ReplyBody::Bytes(body) => {
                let end = head_request || body.is_empty();
                session.write_response_header(head, end).is_ok()
                    && (end || session.write_body(body, true).await.is_ok())
            }
            ReplyBody::Pieces { pieces, .. } => {
                let end = head_request || pieces.is_empty();
                session.write_response_header(head, end).is_ok()
                    && (end || send_pieces(&mut session, pieces).await.is_ok())
            }
        };
        let bytes = if head_request { 0 } else { length.unwrap_or(0) };
        record.answered(reply.class, if sent { reply.status } else { 0 }, bytes);
        drop(record);
        if sent && !session.is_body_done() {
            let drain = session.drain_request_body();
            let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
        }
    }

    /// The response head of a quick static answer: the prebuilt headers, the request id and
    /// HSTS (Pingora's h2 writer adds `date`).
    fn h2_head(&self, answer: &Quick<'_>, record: &RequestRecord) -> Box<ResponseHeader> {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::OK);
        parts.version = http::Version::HTTP_2;
        parts.headers = answer.headers.clone();
        self.finish(record, None).h2(&mut parts.headers);
        Box::new(ResponseHeader::from(parts))
    }
}

/// A body in pieces, chunk by chunk (the last one ends the stream).
async fn send_pieces(session: &mut HttpSession, pieces: Vec<Piece>) -> pingora::Result<()> {
    let mut body = PieceReader::new(pieces);
    while let Some(chunk) = body.next().await.map_err(|e| {
        pingora::Error::because(
            pingora::ErrorType::InternalError,
            "reading a static file",
            e,
        )
    })? {
        session.write_body(chunk, body.is_done()).await?;
    }
    Ok(())
}
