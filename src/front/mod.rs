//! The front door: every client connection starts here, as a Pingora `ServerApp`, and every
//! HTTP/1.x request on it is read here, by the one parser (`crate::request`).
//!
//! For each request: read the head (within the header deadline), parse and validate it (or
//! refuse it: 4xx/5xx and the connection closes), hand it to the one decision
//! (`SiteState::decide`, `crate::pipeline`), read and decode its body (answering
//! `Expect: 100-continue` first), then carry the plan out. This transport only writes:
//! - replies: a whole dist file or its 304 from header lines serialized at start-up (large
//!   bodies by `sendfile(2)`), any other reply (login pages, redirects, ranges, errors) with its
//!   fields and body;
//! - `Forward` and `Tunnel`: the request sent by `proxy::forward` (the one upstream builder,
//!   backend choice, retries and per-thread keep-alive pool), its answer relayed in the
//!   client's framing, or, after an upgrade's `101`, the two connections joined.
//!
//! HTTP/2 connections (ALPN `h2`) are served by the same decision per stream (`h2`).

mod h2;
mod proxy_protocol;
mod read;
mod socket;
mod threads;
mod tls;
mod write;

use std::io::IoSlice;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ops::metrics::METRICS;
use crate::ops::record::{LogFields, RequestRecord};
use crate::ops::{lifecycle, request_id, RouteClass};
use crate::proxy::forward::{self, Outgoing, COALESCE_MAX};
use crate::proxy::upstream::{self, Outbound};
use crate::request::body::{Body, Spooled};
use crate::request::client::ClientAddr;
use crate::request::{self, Framing, Request, MAX_HEADERS};
use crate::throttle::ClientConnection;

use crate::pipeline::Plan;
use crate::proxy::upstream::ForwardedIdentity;
use crate::reply::{Finish, Reply, ReplyBody};
use crate::request::Refusal;
use crate::site::Site;
use crate::static_files::Quick;

pub struct Front {
    site: Site,
    /// Per-thread runtimes (`work_stealing: false`) get their connections evened out.
    balance_threads: Option<usize>,
}

/// Header lines most requests fit in (a WeChat page load sends about 15).
const FEW_HEADERS: usize = 24;

/// How often a new connection may be passed on before it is served where it landed.
const MAX_HOPS: u8 = 3;

impl Front {
    pub fn new(site: Site, conf: &Arc<pingora::server::configuration::ServerConf>) -> Front {
        Front {
            site,
            balance_threads: (!conf.work_stealing && conf.threads > 1).then_some(conf.threads),
        }
    }

    /// Serve the connection in a task of its own (`hops` 0: on this thread), or, while the
    /// thread it lands on is busier than the least busy, pass it to a random other one (see
    /// `threads`).
    ///
    /// Never inside Pingora's accept task: that task's future keeps room for a TLS handshake
    /// under a timeout (3.6 KiB, measured with heaptrack) for as long as the connection lives,
    /// more than everything else an idle keep-alive connection holds.
    fn place(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        hops: u8,
        slot: crate::ops::limits::ConnectionSlot,
    ) {
        let (front, shutdown) = (self.clone(), shutdown.clone());
        let task = async move {
            let pass_on = matches!(front.balance_threads,
                Some(threads) if hops < MAX_HOPS && threads::should_pass_on(threads));
            if pass_on {
                front.place(stream, &shutdown, hops + 1, slot);
            } else {
                let _slot = slot;
                let _held = threads::Held::here();
                front.serve(stream, &shutdown).await;
            }
        };
        if hops == 0 {
            tokio::runtime::Handle::current().spawn(task);
        } else {
            // Pingora's handle of a per-thread runtime is a random thread's.
            pingora_runtime::current_handle().spawn(task);
        }
    }
}

/// What one request did to its connection.
enum Turn {
    /// Answered; the connection may serve the next request.
    Next,
    Close,
    /// Refused: close, but read what the client is still sending for a moment first, so the
    /// refusal reaches it instead of a reset (nginx's `lingering_close`).
    Refused,
}

/// What the backend is asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// A request and its answer.
    Forward,
    /// An upgrade: after a `101`, the connection is a tunnel to the backend.
    Tunnel,
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        crate::ops::memory::start_trimmer();
        if let Some(https) = &self.site.https {
            crate::tls::watch_expiry(&https.certificates);
        }
        // Past `max_connections`, close at once (nginx: "worker_connections are not enough").
        let slot = crate::ops::limits::ConnectionSlot::take()?;
        self.place(stream, shutdown, 0, slot);
        None
    }
}

/// Per-connection state reused between requests.
struct Conn {
    /// Bytes read and not yet used: the next request's start, a body, pipelined requests.
    buf: BytesMut,
    out: Vec<u8>,
    /// Who is at the other end (the TCP peer, or the PROXY header's source).
    peer: ClientAddr,
    /// Over TLS (an HTTPS listener).
    https: bool,
    /// A redirect listener: send clients to HTTPS (see `route::stays_on_plain_http`).
    to_https: bool,
    /// Changes when the process starts shutting down or handing over.
    closing: ShutdownWatch,
    /// A request has been read here: from now on, shutting down closes it while idle.
    served: bool,
    /// Its place among its client's connections (`limits.connections_per_client`).
    _per_client: Option<ClientConnection>,
}

impl Front {
    /// A connection's life. This future is what an idle connection holds, so it holds little:
    /// the opening (PROXY header, TLS handshake, HTTP/2) and the serving of requests are boxed
    /// futures that exist only while they run. A waiting connection holds no buffer (they go
    /// back to the thread's pool, `read::read_pooled`); one quiet for [`read::KEEP_BUFFERS_FOR`]
    /// gives its boxed request loop back too and waits here; one whose requests keep coming
    /// keeps the box (one allocation per busy period, not one per request). With 8,000 idle
    /// connections that is 2.5 KiB each (bench/idle.py), from 8.7 KiB.
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let Some((mut stream, mut conn)) = Box::pin(self.open(stream, shutdown)).await else {
            return;
        };
        loop {
            let quiet_for = match Box::pin(self.serve_busy(stream, &mut conn)).await {
                Some((back, quiet_for)) => {
                    stream = back;
                    quiet_for
                }
                None => return,
            };
            let closing = conn.served.then_some(&mut conn.closing);
            match read::quiet_read(
                &mut stream,
                &mut conn.buf,
                &mut conn.out,
                quiet_for,
                closing,
            )
            .await
            {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Who is at the other end and how it came in: the PROXY header, the TLS handshake; an
    /// HTTP/2 connection is served to its end here (`None`), by `h2`.
    async fn open(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<(Stream, Conn)> {
        let mut stream = threads::rehome(stream);
        let digest = stream.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr().cloned())
            .and_then(|a| a.as_inet().map(|a| self.site.real_ip.hop(a.ip())))
            .unwrap_or_else(ClientAddr::unknown);
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().cloned())
            .and_then(|a| a.as_inet().copied());
        let on =
            |listeners: &[std::net::SocketAddr]| local.is_some_and(|l| arrived_on(listeners, l));
        let https = self.site.https.as_ref().filter(|h| on(&h.listeners));
        let mut conn = Conn {
            buf: BytesMut::new(),
            out: Vec::new(),
            peer,
            https: https.is_some(),
            to_https: on(&self.site.redirect_listen),
            closing: shutdown.clone(),
            served: false,
            _per_client: None,
        };
        if on(&self.site.proxy_protocol) {
            if let Err(why) = self.proxy_protocol(&mut stream, &mut conn).await {
                log::warn!("closing a connection from {}: {why}", conn.peer.hop);
                return None;
            }
        }
        // A trusted load balancer's connections carry many clients: only others are counted.
        if !conn.peer.hop_trusted || conn.peer.client != conn.peer.hop {
            match self.site.client_connections.enter(&conn.peer.client) {
                Ok(place) => conn._per_client = place,
                Err(()) => {
                    // nginx's `limit_conn`, at the door: nothing is read from a client past it.
                    METRICS.limited.with_label_values(&["connections"]).inc();
                    return None;
                }
            }
        }
        if let Some(https) = https {
            stream = tls::accept(https, stream, &mut conn.buf, &self.site.limits).await?;
            if stream.selected_alpn_proto() == Some(pingora::protocols::ALPN::H2) {
                // The h2 crate reads the streams; each is checked with the same rules and
                // decided by the same function as HTTP/1 requests.
                self.serve_h2(stream, conn.peer, conn.https, shutdown).await;
                return None;
            }
        }
        Some((stream, conn))
    }

    /// Serve requests while they keep coming; `Some((stream, left))` when the connection has
    /// gone quiet (buffers given back, `left` of its keep-alive time to wait), `None` when it
    /// is done.
    async fn serve_busy(
        &self,
        mut stream: Stream,
        conn: &mut Conn,
    ) -> Option<(Stream, std::time::Duration)> {
        loop {
            if conn.buf.is_empty() {
                let keepalive = self.site.limits.keepalive;
                let idle = read::idle_read(
                    &mut stream,
                    &mut conn.buf,
                    &mut conn.out,
                    keepalive,
                    conn.served.then_some(&mut conn.closing),
                );
                match idle.await {
                    read::Idle::Read(n) if n > 0 => {}
                    read::Idle::Quiet(left) => return Some((stream, left)),
                    _ => return None,
                }
            }
            conn.served = true;
            // Not boxed: an allocation of the request's future per request cost more CPU than
            // the memory it saves (bench/RESULTS.md); this whole loop is boxed once instead.
            match self.next_request(&mut stream, conn).await {
                // Draining decides per answer (`connection: close`); one that did not announce
                // it is followed by the client's next request, which is answered, not cut off.
                Turn::Next => threads::share_the_cpu(),
                Turn::Close => {
                    let _ = stream.flush().await;
                    return None;
                }
                Turn::Refused => {
                    let _ = stream.flush().await;
                    linger(stream).await;
                    return None;
                }
            }
        }
    }

    /// A PROXY-protocol listener: only a trusted load balancer may connect, and the client
    /// its header names becomes the connection's peer.
    async fn proxy_protocol(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
    ) -> Result<(), &'static str> {
        if !conn.peer.hop_trusted {
            return Err("a PROXY protocol listener, and the peer is not in real_ip.trusted");
        }
        let deadline = tokio::time::Instant::now() + self.site.limits.header_timeout;
        if let Some(source) = proxy_protocol::read_header(stream, &mut conn.buf, deadline).await? {
            conn.peer = self.site.real_ip.hop(source.ip());
        }
        Ok(())
    }

    /// Read, check and answer the request that starts in `conn.buf`.
    async fn next_request(&self, stream: &mut Stream, conn: &mut Conn) -> Turn {
        let limits = &self.site.limits;
        let deadline = tokio::time::Instant::now() + limits.header_timeout;
        loop {
            // The head is parsed from its own handle on the bytes, so the request (which
            // borrows them) and the connection's buffer (where its body arrives) are apart.
            let data = conn.buf.split().freeze();
            // The header slots live in the connection's request-loop state for as long as the
            // request does: room for the usual heads here (0.8 KiB), all of MAX_HEADERS
            // (3.2 KiB) only for a head that needs them.
            let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
            let mut many = Vec::new();
            let parsed = match request::parse(&data, &mut few, limits.max_header_bytes) {
                Err(r) if r.is_too_many_headers() => {
                    many.resize(MAX_HEADERS, httparse::EMPTY_HEADER);
                    request::parse(&data, &mut many, limits.max_header_bytes)
                }
                parsed => parsed,
            };
            match parsed {
                Ok(Some((req, head_len))) => {
                    conn.buf.extend_from_slice(&data[head_len..]);
                    return self.serve_request(stream, conn, &req, &data).await;
                }
                Ok(None) => {
                    conn.buf = data
                        .try_into_mut()
                        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                    if conn.buf.capacity() - conn.buf.len() < 1024 {
                        conn.buf.reserve(4096);
                    }
                    // One deadline for the whole head, however slowly it trickles in.
                    match tokio::time::timeout_at(deadline, stream.read_buf(&mut conn.buf)).await {
                        Ok(Ok(n)) if n > 0 => continue,
                        _ => return Turn::Close,
                    }
                }
                Err(refusal) => {
                    let mut record = self.record(None, conn, request_id::generate());
                    let reply = Reply::refusal(refusal);
                    self.write_reply(stream, conn, &mut record, reply, Some("close"), false)
                        .await;
                    return Turn::Refused;
                }
            }
        }
    }

    /// The request's record; `head` holds the bytes `req` was parsed from.
    fn record(
        &self,
        req: Option<(&Request, &Bytes)>,
        conn: &Conn,
        request_id: String,
    ) -> RequestRecord {
        let client = match req {
            Some((r, _)) => self
                .site
                .real_ip
                .client(&conn.peer, r.headers.iter().map(|h| (h.name, h.value))),
            None => conn.peer.clone(),
        };
        let mut record = RequestRecord::start(self.site.access_log, request_id, client, || {
            let Some((r, head)) = req else {
                let dash = Bytes::from_static(b"-");
                return LogFields {
                    method: dash.clone(),
                    target: dash,
                    version: "HTTP/1.1",
                    referer: Bytes::new(),
                    user_agent: Bytes::new(),
                };
            };
            let field = |v: Option<&[u8]>| v.map_or_else(Bytes::new, |v| head.slice_ref(v));
            LogFields {
                method: field(Some(r.method.as_bytes())),
                target: field(Some(r.target.as_bytes())),
                version: r.version_label(),
                referer: field(r.referer),
                user_agent: field(r.user_agent),
            }
        });
        record.https = conn.https;
        record
    }

    async fn serve_request(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
        req: &Request<'_, '_>,
        head: &Bytes,
    ) -> Turn {
        let request_id = request_id::accept(req.request_id).unwrap_or_else(request_id::generate);
        let mut record = self.record(Some((req, head)), conn, request_id);
        let keep_alive = req.keep_alive && !lifecycle::draining();
        let incoming = req.incoming(
            &record.client,
            &record.request_id,
            conn.https,
            conn.to_https,
        );
        let plan = self.site.decide(&incoming).await;
        if let Plan::Refuse(refusal) = plan {
            return self.refuse(stream, conn, &mut record, refusal, req).await;
        }
        // The body is read whole before anything is answered or sent on (nginx's
        // `proxy_request_buffering on`): an answer must not leave a body to be taken for the
        // next request.
        let body = match self.read_body(stream, conn, req).await {
            Ok(body) => body,
            Err(Some(refusal)) => {
                return self.refuse(stream, conn, &mut record, refusal, req).await
            }
            Err(None) => return Turn::Close, // The client went away mid-body.
        };
        let connection = Finish::connection(keep_alive, req.minor_version);
        let turn = |sent: bool| match sent && keep_alive {
            true => Turn::Next,
            false => Turn::Close,
        };
        match plan {
            Plan::Static(quick) => {
                let sent = self
                    .quick_static(stream, conn, &quick, &mut record, connection)
                    .await;
                turn(sent)
            }
            Plan::Reply(reply) => {
                let sent = self
                    .write_reply(stream, conn, &mut record, reply, connection, req.is_head())
                    .await;
                turn(sent)
            }
            Plan::Forward(identity) => {
                let call = Call::Forward;
                self.call(
                    stream,
                    conn,
                    req,
                    &body,
                    identity,
                    &mut record,
                    keep_alive,
                    call,
                )
                .await
            }
            Plan::Tunnel(identity) => {
                let call = Call::Tunnel;
                self.call(stream, conn, req, &body, identity, &mut record, false, call)
                    .await
            }
            Plan::Refuse(refusal) => self.refuse(stream, conn, &mut record, refusal, req).await,
        }
    }

    /// Answer a request the edge will not serve; the connection then closes.
    async fn refuse(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
        record: &mut RequestRecord,
        refusal: Refusal,
        req: &Request<'_, '_>,
    ) -> Turn {
        let reply = Reply::refusal(refusal);
        let close = Some("close");
        self.write_reply(stream, conn, record, reply, close, req.is_head())
            .await;
        Turn::Refused
    }

    /// The whole body, decoded (its start in memory, the rest in a temporary file: a stalled
    /// upload holds `body_spool.buffer_bytes`, not its size); `Err(Some(..))` is an answer to refuse it with (the
    /// connection then closes), `Err(None)` a client that went away.
    async fn read_body(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
        req: &Request<'_, '_>,
    ) -> Result<Spooled, Option<Refusal>> {
        if req.framing == Framing::Empty {
            return Ok(Spooled::default());
        }
        let refuse = |e: request::body::BodyError| Some(request::refuse(e.status(), e.message()));
        let site = &self.site;
        let mut body =
            Body::new(req.framing, site.max_body_bytes, &site.body_spool).map_err(refuse)?;
        let used = body.take(&conn.buf).map_err(refuse)?;
        conn.buf.advance(used);
        if !body.is_done() && req.expects_continue {
            // The client waits for this before it sends the body (RFC 9110 §10.1.1).
            forward::within_send_timeout(self.site.limits.send_timeout, async {
                stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                stream.flush().await
            })
            .await
            .map_err(|_| None)?;
        }
        while !body.is_done() {
            conn.buf.reserve(16 * 1024);
            match tokio::time::timeout(
                self.site.limits.body_timeout,
                stream.read_buf(&mut conn.buf),
            )
            .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(None),
            }
            let used = body.take(&conn.buf).map_err(refuse)?;
            conn.buf.advance(used);
        }
        Ok(body.into_spooled())
    }

    /// A whole dist file or its 304, from header lines serialized at start-up; whether it was
    /// sent.
    async fn quick_static(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
        answer: &Quick<'_>,
        record: &mut RequestRecord,
        connection: Option<&'static str>,
    ) -> bool {
        let finish = self.finish(record, connection);
        let out = &mut conn.out;
        out.clear();
        out.extend_from_slice(if answer.status == 304 {
            b"HTTP/1.1 304 Not Modified\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\n"
        });
        out.extend_from_slice(answer.head);
        finish.http1(out);
        let write = async {
            if let Some(file) = answer.body_file {
                write::send_file(stream, out, answer.body, file).await?;
            } else if answer.body.len() <= COALESCE_MAX {
                out.extend_from_slice(answer.body);
                stream.write_all(out).await?;
            } else {
                write::write_all_vectored(
                    stream,
                    &mut [IoSlice::new(out), IoSlice::new(answer.body)],
                )
                .await?;
            }
            stream.flush().await
        };
        let ok = forward::within_send_timeout(self.site.limits.send_timeout, write)
            .await
            .is_ok();
        record.answered(
            RouteClass::Static,
            if ok { answer.status } else { 0 },
            answer.body.len() as u64,
        );
        ok
    }

    /// Send a request to the backend and relay the answer (or join the two connections after
    /// an upgrade).
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
        req: &Request<'_, '_>,
        body: &Spooled,
        identity: ForwardedIdentity,
        record: &mut RequestRecord,
        keep_alive: bool,
        call: Call,
    ) -> Turn {
        let site = &self.site;
        let upgrade = call == Call::Tunnel;
        let target = req.normalised_target();
        let mut head = Vec::with_capacity(512);
        upstream::write_head(
            &mut head,
            req.method,
            &target,
            req.headers.iter().map(|h| (h.name, h.value)),
            &Outbound {
                forwarding: &site.forwarding(Some(&record.client), conn.https),
                identity: &identity,
                request_id: &record.request_id,
                body_len: upstream::declared_length(req.method, body.len()),
                upgrade,
            },
        );
        let outgoing = Outgoing {
            head: &head,
            body,
            head_request: req.is_head(),
            finish: self.finish(record, None),
            close_client: !keep_alive,
            http10: req.minor_version == 0,
            upgrade,
            send_timeout: site.limits.send_timeout,
        };
        let (ups, out) = (&site.upstreams, &mut conn.out);
        let result = match call {
            Call::Forward => forward::forward(ups, &outgoing, stream, out).await,
            Call::Tunnel => {
                // What the client sent after its request is the new protocol's.
                let early = conn.buf.split();
                forward::tunnel(ups, &outgoing, stream, &early, out).await
            }
        };
        match result {
            Ok(r) => {
                record.upstream = Some(site.upstreams.authority(r.backend));
                record.answered(RouteClass::Proxy, r.status, r.body_bytes);
                if r.client_reusable {
                    Turn::Next
                } else {
                    Turn::Close
                }
            }
            Err(forward::Error::Midway(b)) => {
                record.upstream = Some(site.upstreams.authority(b.backend));
                record.answered(RouteClass::Proxy, b.status, b.body_bytes);
                Turn::Close
            }
            Err(forward::Error::Before(f)) => {
                record.upstream = f.backend.map(|i| site.upstreams.authority(i));
                let reply = f.answer();
                let connection = Finish::connection(keep_alive, req.minor_version);
                let sent = self
                    .write_reply(stream, conn, record, reply, connection, req.is_head())
                    .await;
                if sent && keep_alive {
                    Turn::Next
                } else {
                    Turn::Close
                }
            }
        }
    }

    /// What every answer to the request carries (see [`Finish`]), on HTTP/1 and HTTP/2.
    fn finish<'r>(
        &'r self,
        record: &'r RequestRecord,
        connection: Option<&'static str>,
    ) -> Finish<'r> {
        Finish {
            request_id: &record.request_id,
            hsts: self.site.hsts(record.https),
            connection,
        }
    }

    /// Write a reply: the status line, its own fields and length, the common fields, then its
    /// body (a file's pieces read and written in turn, each write within the send timeout).
    /// Whether it was sent whole; the record has it either way.
    async fn write_reply(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
        record: &mut RequestRecord,
        reply: Reply,
        connection: Option<&'static str>,
        head: bool,
    ) -> bool {
        let finish = self.finish(record, connection);
        let out = &mut conn.out;
        out.clear();
        crate::proxy::headers::push_status_line(out, reply.status, None);
        for (name, value) in &reply.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(len) = reply.content_length() {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        finish.http1(out);
        let limit = self.site.limits.send_timeout;
        let length = reply.content_length().unwrap_or(0);
        let sent = match reply.body {
            ReplyBody::Bytes(body) => {
                if !head {
                    out.extend_from_slice(&body);
                }
                let write = async {
                    stream.write_all(out).await?;
                    stream.flush().await
                };
                forward::within_send_timeout(limit, write).await.is_ok()
            }
            ReplyBody::Pieces { pieces, .. } => {
                let pieces = if head { Vec::new() } else { pieces };
                write::send_pieces(stream, out, pieces, limit).await.is_ok()
            }
        };
        let bytes = if head { 0 } else { length };
        record.answered(reply.class, if sent { reply.status } else { 0 }, bytes);
        sent
    }
}

/// Whether a connection accepted at `local` came in through one of `listeners` (which may
/// listen on an unspecified address): how the front door tells plain, PROXY protocol, HTTPS
/// and redirect listeners apart.
fn arrived_on(listeners: &[std::net::SocketAddr], local: std::net::SocketAddr) -> bool {
    listeners
        .iter()
        .any(|l| l.port() == local.port() && (l.ip().is_unspecified() || l.ip() == local.ip()))
}

/// After a refusal: end our side, then read and drop what the client still sends (up to
/// [`LINGER_TIME`], [`LINGER_BYTES`]), so closing does not reset the connection before the
/// client has read the answer.
async fn linger(mut stream: Stream) {
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_match_by_port_and_address() {
        let l: Vec<std::net::SocketAddr> = vec![
            "0.0.0.0:8443".parse().unwrap(),
            "127.0.0.2:81".parse().unwrap(),
        ];
        assert!(arrived_on(&l, "10.1.1.1:8443".parse().unwrap()));
        assert!(arrived_on(&l, "127.0.0.2:81".parse().unwrap()));
        assert!(!arrived_on(&l, "127.0.0.1:81".parse().unwrap()));
        assert!(!arrived_on(&l, "10.1.1.1:80".parse().unwrap()));
    }
}
