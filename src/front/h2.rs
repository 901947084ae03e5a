//! HTTP/2 at the front door: the connection's accept loop, and a short path per stream.
//!
//! The loop is Pingora's (`HttpServerApp::process_new` → `accept_downstream_sessions`, not
//! public), rebuilt from its public parts: the same handshake and h2 options, GOAWAY when the
//! process shuts down (then the streams already sent are still served), the connection closed
//! after `keepalive` with no stream in flight, and at most [`MAX_MALFORMED_STREAMS`] refused
//! streams per connection.
//!
//! Each stream is checked (`request::h2::check`, or refused by Pingora's path exactly as
//! before) and routed once; a whole dist file or its 304 is answered right here, from headers
//! built at start-up, with no task and no proxy state machine; an API call with a known body
//! length goes over the per-thread keep-alive pool (`proxy::forward`), in a task of its own;
//! everything else is served by Pingora's path (`process_new_http`), with the record made
//! here, so it behaves as before. The same decisions as HTTP/1's short path, from the same
//! functions (`EdgeState::quick_static`, `upstream::write_head`, `EdgeState::h2_record`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, STRICT_TRANSPORT_SECURITY};
use pingora::apps::HttpServerApp;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use super::{threads, Front, HANDED_RECORD};
use crate::ops::metrics;
use crate::ops::record::RequestRecord;
use crate::ops::RouteClass;
use crate::proxy::forward::{self, Outgoing};
use crate::proxy::upstream::{self, Outbound};
use crate::request::client::ClientAddr;
use crate::route::Route;
use crate::static_files::{Conditions, Quick};

/// Refused streams a connection may open before it is closed: Pingora's own budget, which its
/// public accept call does not keep across calls, so the loop counts here.
const MAX_MALFORMED_STREAMS: usize = 32;

/// Bodies up to this size are queued on the stream whole (h2 sends them as the client's window
/// allows; the bytes are shared, not copied). Larger ones are written by a task of their own,
/// within the send timeout, which keeps the connection from counting as idle meanwhile.
const INLINE_BODY_MAX: usize = 64 * 1024;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

/// What a stream needs after the short path looked at it.
enum Next {
    /// Answered (or its answer queued whole on the stream).
    Done,
    /// Pingora's path answers; with the record when the stream was checked here.
    Pingora(Option<RequestRecord>),
    /// The head is sent; a large body follows as the client takes it.
    Body(Bytes, RequestRecord),
    /// An API call for the short path to the backend.
    Call(RequestRecord),
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
        let mut conn = match server::handshake(stream, self.pingora.h2_options()).await {
            Ok(c) => c,
            Err(e) => {
                log::error!("H2 handshake error {e}");
                return;
            }
        };
        let peer = Peer { addr: peer, https };
        let active = Arc::new(Active::default());
        let idle = self.edge.limits.keepalive;
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
                self.dispatch(session, &peer, &active, shutdown);
            }
        }
    }

    /// Answer a stream on the short path, or start the task that serves it.
    fn dispatch(
        self: &Arc<Self>,
        mut session: HttpSession,
        peer: &Peer,
        active: &Arc<Active>,
        shutdown: &ShutdownWatch,
    ) {
        match self.short_h2(&mut session, peer) {
            Next::Done => threads::share_the_cpu(),
            Next::Pingora(record) => {
                let (front, busy) = (self.clone(), active.busy());
                let shutdown = shutdown.clone();
                pingora_runtime::current_handle().spawn(async move {
                    let _busy = busy;
                    let served = front
                        .pingora
                        .process_new_http(ServerSession::new_http2(session), &shutdown);
                    HANDED_RECORD.scope(RefCell::new(record), served).await;
                });
            }
            Next::Call(record) => {
                let (front, busy) = (self.clone(), active.busy());
                let shutdown = shutdown.clone();
                pingora_runtime::current_handle().spawn(async move {
                    let _busy = busy;
                    front.call_h2(session, record, &shutdown).await;
                });
            }
            Next::Body(body, mut record) => {
                let busy = active.busy();
                session.set_write_timeout(Some(self.edge.limits.send_timeout));
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

    /// The short path of one stream: a whole dist file or its 304 answered here, or what is
    /// left to do.
    fn short_h2(&self, session: &mut HttpSession, peer: &Peer) -> Next {
        let edge = &self.edge;
        let req = session.req_header();
        let no_body = session.is_body_empty();
        // Bodies of unknown length stream to the backend chunked: Pingora's path does that.
        let body_known = no_body || req.headers.contains_key(http::header::CONTENT_LENGTH);
        if req.method == http::Method::CONNECT || !body_known {
            return Next::Pingora(None);
        }
        // The record logs the target as it came; the check may rewrite it.
        let target = req.uri.path_and_query().cloned();
        // A refusal is written by Pingora's path, which checks the stream again (the request is
        // unchanged when refused): the same answer as ever, from one writer of it.
        if crate::request::h2::check(session.req_header_mut(), edge.max_body_bytes).is_err() {
            return Next::Pingora(None);
        }
        let req = session.req_header();
        let target = target.as_ref().map_or("/", |t| t.as_str());
        let mut record = edge.h2_record(req, target, &peer.addr, peer.https);
        match edge.router.route(req.uri.path()) {
            Route::Static if no_body => {}
            Route::Proxy if !edge.upstreams.is_empty() => return Next::Call(record),
            _ => return Next::Pingora(Some(record)),
        }
        let conditions = Conditions::from_headers(&req.headers);
        let method = req.method.as_str();
        let Some(answer) = edge.quick_static(method, req.uri.path(), req.uri.query(), &conditions)
        else {
            return Next::Pingora(Some(record));
        };
        metrics::record_static_hit(answer.encoding.token());
        let head = self.h2_head(&answer, &record.request_id, peer.https);
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

    /// An API call on the per-thread keep-alive pool, as HTTP/1's short path makes it (the
    /// same upstream request builder, the body read whole first, within `max_body_bytes`);
    /// Pingora's path answers when the login must (a 401 with its login URLs).
    async fn call_h2(
        &self,
        mut session: HttpSession,
        mut record: RequestRecord,
        shutdown: &ShutdownWatch,
    ) {
        let edge = &self.edge;
        let req = session.req_header();
        let cookies: Vec<&[u8]> = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let identity = edge.auth.proxy_identity(&cookies).await;
        if !identity.authenticated && edge.auth.requires_session(req.uri.path()) {
            let served = self
                .pingora
                .process_new_http(ServerSession::new_http2(session), shutdown);
            HANDED_RECORD
                .scope(RefCell::new(Some(record)), served)
                .await;
            return;
        }
        let Some(body) = self.read_h2_body(&mut session).await else {
            // The client went away or stalled mid-body.
            session.shutdown();
            return;
        };
        let req = session.req_header();
        let https = record.https;
        let hsts = self.hsts(https);
        let mut bytes = Vec::with_capacity(512 + body.len());
        let method = req.method.as_str();
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        // HTTP/1 backends get `Host` from `:authority` where the client sent one, in place of
        // (or after) its `Host` lines, as Pingora's path sends it.
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
            &mut bytes,
            method,
            target,
            client.iter().copied(),
            &Outbound {
                forwarding: &edge.forwarding(Some(&record.client), https),
                identity: &identity,
                request_id: &record.request_id,
                body_len: upstream::declared_length(method, body.len()),
                streamed_body: false,
                upgrade: false,
            },
        );
        bytes.extend_from_slice(&body);
        let outgoing = Outgoing {
            bytes: &bytes,
            head_request: req.method == http::Method::HEAD,
            request_id: &record.request_id,
            close_client: false,
            send_timeout: edge.limits.send_timeout,
            hsts,
        };
        match forward::forward_h2(&edge.upstreams, &outgoing, &mut session).await {
            Ok(r) => {
                record.upstream = Some(edge.upstreams.authority(r.backend));
                record.answered(RouteClass::Proxy, r.status, r.body_bytes);
            }
            Err(forward::Error::Midway(b)) => {
                session.shutdown();
                record.upstream = Some(edge.upstreams.authority(b.backend));
                record.answered(RouteClass::Proxy, b.status, b.body_bytes);
            }
            Err(forward::Error::Before(f)) => {
                metrics::METRICS
                    .backend_errors
                    .with_label_values(&[f.kind])
                    .inc();
                record.upstream = f.backend.map(|i| edge.upstreams.authority(i));
                let body = crate::answer::json_error(f.kind, f.message);
                let sent = self.h2_json(&mut session, f.status, &body, &record.request_id, https);
                record.answered(
                    RouteClass::Proxy,
                    if sent { f.status } else { 0 },
                    body.len() as u64,
                );
            }
        }
    }

    /// The request body, whole (its declared length is within `max_body_bytes`: `check`);
    /// `None` if the client goes away or pauses longer than the body timeout.
    async fn read_h2_body(&self, session: &mut HttpSession) -> Option<Vec<u8>> {
        if session.is_body_done() {
            return Some(Vec::new());
        }
        let limit = self.edge.max_body_bytes as usize;
        let mut body = Vec::new();
        loop {
            let read = session.read_body_bytes();
            match tokio::time::timeout(self.edge.limits.body_timeout, read).await {
                Ok(Ok(Some(b))) if body.len() + b.len() <= limit => body.extend_from_slice(&b),
                Ok(Ok(None)) => return Some(body),
                _ => return None,
            }
        }
    }

    /// A JSON error answer, as Pingora's path writes it (`edge::respond`); whether it was sent.
    fn h2_json(
        &self,
        session: &mut HttpSession,
        status: u16,
        body: &Bytes,
        request_id: &str,
        https: bool,
    ) -> bool {
        use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        parts.version = http::Version::HTTP_2;
        let h = &mut parts.headers;
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.add_common(h, request_id, https);
        let head_request = session.req_header().method == http::Method::HEAD;
        let end = head_request || body.is_empty();
        if session
            .write_response_header(Box::new(ResponseHeader::from(parts)), end)
            .is_err()
        {
            return false;
        }
        end || session
            .take_response_body_writer()
            .is_some_and(|mut w| w.send_data(body.clone(), true).is_ok())
    }

    /// `x-request-id`, and HSTS over TLS when it is on.
    fn add_common(&self, h: &mut http::HeaderMap, request_id: &str, https: bool) {
        if let Ok(mut v) = HeaderValue::from_str(request_id) {
            // Never indexed: a value used once would evict the HPACK table's useful entries.
            v.set_sensitive(true);
            h.insert(X_REQUEST_ID.clone(), v);
        }
        if let Some(hsts) = self
            .edge
            .https
            .as_ref()
            .filter(|_| https)
            .and_then(|h| h.hsts.as_ref())
        {
            h.insert(STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }

    /// The response head of a quick static answer: the prebuilt headers, the request id and
    /// HSTS (Pingora's h2 writer adds `date`), as Pingora's path writes them.
    fn h2_head(&self, answer: &Quick<'_>, request_id: &str, https: bool) -> Box<ResponseHeader> {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::OK);
        parts.version = http::Version::HTTP_2;
        parts.headers = answer.headers.clone();
        self.add_common(&mut parts.headers, request_id, https);
        Box::new(ResponseHeader::from(parts))
    }
}
