//! The front door: every client connection starts here, as a Pingora `ServerApp`.
//!
//! Nearly all of a WeChat H5 site's traffic is three kinds of request: a dist file, its
//! revalidation, and a plain API call. Those are answered on a short path: the head parsed
//! once with `httparse`, static answers written from header lines serialized at start-up,
//! API calls forwarded over a per-thread keep-alive pool (`proxy::forward`). Every other
//! request (logins and callbacks, `/_wxedge/*`, ranges, uploads, upgrades, anything odd) is
//! handed, with the bytes already read, to Pingora's proxy (`edge.rs`) on the same
//! connection, which answers it and hands the connection back.
//!
//! Both paths decide with the same modules (static files, auth, proxy policy), so the short
//! path changes how fast an answer is, never what it is.

mod request;
mod threads;
mod write;

use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::edge::Edge;
use crate::ops::access_log::{self, Entry};
use crate::ops::metrics::{self, METRICS};
use crate::ops::{lifecycle, request_id, RouteClass};
use crate::proxy::forward::{self, Outgoing, COALESCE_MAX};
use crate::proxy::headers::Forwarding;
use request::{Head, LogFields, ReadError};

/// An API call ready to go upstream once its body is read.
struct Call {
    /// Head, then the body appended once read.
    upstream_request: Vec<u8>,
    body_len: usize,
    request_id: String,
    head_request: bool,
    close: bool,
    log: Option<LogFields>,
}

/// Wait for the next request on a kept-alive connection (Pingora's and nginx's default: 60 s).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait for the rest of a request that has begun (nginx's `client_header_timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Request bodies up to this size are read whole and forwarded on the short path.
const SHORT_BODY_MAX: u64 = 64 * 1024;

pub struct Front {
    edge: Edge,
    pingora: Arc<HttpProxy<Edge>>,
    /// Per-thread runtimes (`work_stealing: false`) get their connections evened out.
    balance_threads: Option<usize>,
}

/// How often a new connection may be passed on before it is served where it landed.
const MAX_HOPS: u8 = 3;

impl Front {
    pub fn new(edge: Edge, conf: &Arc<pingora::server::configuration::ServerConf>) -> Front {
        let pingora = Arc::new(pingora_proxy::http_proxy(conf, edge.clone()));
        Front {
            edge,
            pingora,
            balance_threads: (!conf.work_stealing && conf.threads > 1).then_some(conf.threads),
        }
    }

    /// Serve the connection on this thread, or pass it to a random other one while this one
    /// is busier than the least busy (see `threads`).
    fn place(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        hops: u8,
    ) -> Option<Stream> {
        match self.balance_threads {
            Some(threads) if hops < MAX_HOPS && threads::should_pass_on(threads) => {
                let (front, shutdown) = (self.clone(), shutdown.clone());
                pingora_runtime::current_handle().spawn(async move {
                    if let Some(stream) = front.place(stream, &shutdown, hops + 1) {
                        let _held = threads::Held::here();
                        front.serve(stream, &shutdown).await;
                    }
                });
                None
            }
            _ => Some(stream),
        }
    }
}

/// What one turn of the connection loop did.
enum Turn {
    /// Answered; the connection may serve the next request.
    Next,
    Close,
    /// Not a short-path request: Pingora takes it.
    HandOff,
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if let Some(stream) = self.place(stream, shutdown, 0) {
            let _held = threads::Held::here();
            self.serve(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.pingora.http_cleanup().await;
    }
}

/// Per-connection state the short path reuses between requests.
struct Conn {
    buf: BytesMut,
    out: Vec<u8>,
    /// The client's address as the access log and `X-Forwarded-For` show it.
    client_ip: Option<String>,
}

impl Front {
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let mut stream = threads::rehome(stream);
        let client_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned())
            .and_then(|a| a.as_inet().map(|a| a.ip().to_string()));
        let mut closing = shutdown.clone();
        let mut conn = Conn {
            buf: BytesMut::with_capacity(4096),
            out: Vec::with_capacity(1024),
            client_ip,
        };
        loop {
            let turn = match request::read_head(
                &mut stream,
                &mut conn.buf,
                KEEPALIVE_TIMEOUT,
                REQUEST_TIMEOUT,
                self.edge.max_header_bytes,
                &mut closing,
            )
            .await
            {
                Ok(head_len) => self.turn(&mut stream, &mut conn, head_len).await,
                Err(ReadError::Closed) => return,
                // Oversized or bare-LF heads, and anything httparse refuses: Pingora answers.
                Err(ReadError::NotShort) => Turn::HandOff,
            };
            match turn {
                // Draining decides per answer (`connection: close`); one that did not announce
                // it is followed by the client's next request, which is answered, not cut off.
                Turn::Next => {
                    threads::share_the_cpu();
                    continue;
                }
                Turn::Close => {
                    let _ = stream.flush().await;
                    return;
                }
                Turn::HandOff => {
                    let mut session = ServerSession::new_http1(stream);
                    session.set_keepalive(if *shutdown.borrow() || lifecycle::draining() {
                        None
                    } else {
                        Some(KEEPALIVE_TIMEOUT.as_secs())
                    });
                    if !conn.buf.is_empty() {
                        session.set_pipelined_prefix(conn.buf.split());
                    }
                    match self.pingora.process_new_http(session, shutdown).await {
                        Some(reused) => stream = reused.consume().0,
                        None => return,
                    }
                }
            }
        }
    }

    /// Answer the request whose head is the first `head_len` bytes of `conn.buf`, if it is a
    /// short-path one.
    async fn turn(&self, stream: &mut Stream, conn: &mut Conn, head_len: usize) -> Turn {
        let Conn {
            buf,
            out,
            client_ip,
        } = conn;
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let Some(head) = Head::parse(&buf[..head_len], &mut hs) else {
            return Turn::HandOff;
        };
        if !head.short_path_candidate() || head.path.starts_with("/_wxedge/") {
            return Turn::HandOff;
        }
        let started = Instant::now();
        if self.edge.is_proxied(head.path) {
            let Some(call) = self.prepare_call(&head, client_ip.as_deref()) else {
                return Turn::HandOff;
            };
            // `head` borrows the read buffer; the call reads the body into it.
            return self.call(stream, conn, head_len, call, started).await;
        }
        // Callbacks (`?code=`) are the login's to intercept; a GET with a body is odd enough
        // to leave to Pingora (the body must be read past, not taken for the next request).
        if head.query.is_some_and(|q| q.contains("code="))
            || !head.is_get_or_head()
            || head.content_length.is_some_and(|n| n > 0)
            || head.has_transfer_encoding
        {
            return Turn::HandOff;
        }
        let Some(answer) = self
            .edge
            .site
            .quick(head.path, &head.conditions, head.is_head())
        else {
            return Turn::HandOff;
        };
        METRICS.in_flight.inc();
        let request_id = request_id::accept(head.request_id).unwrap_or_else(request_id::generate);
        let close = head.close || lifecycle::draining();
        out.clear();
        out.extend_from_slice(if answer.status == 304 {
            b"HTTP/1.1 304 Not Modified\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\n"
        });
        out.extend_from_slice(answer.head);
        write::push_common_headers(out, &request_id, close);
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
        let ok = forward::within_send_timeout(write).await.is_ok();
        metrics::record_static_hit(answer.encoding.token());
        let log = self.log_fields(&head);
        self.finish(
            log.as_ref(),
            client_ip.as_deref(),
            RouteClass::Static,
            if ok { answer.status } else { 0 },
            answer.body.len() as u64,
            started,
            &request_id,
            None,
        );
        buf.advance(head_len);
        match (ok, close) {
            (true, false) => Turn::Next,
            _ => Turn::Close,
        }
    }

    fn log_fields(&self, head: &Head) -> Option<LogFields> {
        (self.edge.access_log != access_log::Format::Off).then(|| head.to_owned_log())
    }

    /// Everything an API call needs from its head, or `None` when Pingora's path must take it
    /// (request bodies it streams, upgrades, `Expect`, a 401 to write, no backend).
    fn prepare_call(&self, head: &Head, client_ip: Option<&str>) -> Option<Call> {
        let edge = &self.edge;
        let body_len = head.content_length.unwrap_or(0);
        if head.has_transfer_encoding
            || head.expects_continue
            || head.upgrade
            || body_len > SHORT_BODY_MAX.min(edge.max_body_bytes)
            || edge.upstreams.is_empty()
        {
            return None;
        }
        let identity = edge.auth.proxy_identity(&head.cookies());
        if !identity.authenticated && edge.auth.requires_session(head.path) {
            return None; // Pingora's path writes the 401 with its login URLs.
        }
        let request_id = request_id::accept(head.request_id).unwrap_or_else(request_id::generate);
        let mut upstream_request = Vec::with_capacity(512 + body_len as usize);
        forward::write_request_head(
            &mut upstream_request,
            head.method,
            head.target,
            head.headers,
            &Forwarding {
                client_ip,
                proto: "http",
                host_override: edge.host_override.as_deref(),
                drop_underscore_headers: edge.drop_underscore_headers,
                protected: &edge.protected_headers,
            },
            &identity,
            &request_id,
        );
        Some(Call {
            upstream_request,
            body_len: body_len as usize,
            request_id,
            head_request: head.is_head(),
            close: head.close || lifecycle::draining(),
            log: self.log_fields(head),
        })
    }

    /// Read the call's body, forward it, relay the answer (or write the error answer).
    async fn call(
        &self,
        stream: &mut Stream,
        conn: &mut Conn,
        head_len: usize,
        mut call: Call,
        started: Instant,
    ) -> Turn {
        METRICS.in_flight.inc();
        // The body, read whole (it is small): the request then goes out in one write, and a
        // pooled connection found closed can be retried without asking the client again.
        let total = head_len + call.body_len;
        while conn.buf.len() < total {
            conn.buf.reserve(total - conn.buf.len());
            match tokio::time::timeout(REQUEST_TIMEOUT, stream.read_buf(&mut conn.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    METRICS.in_flight.dec();
                    return Turn::Close; // The client went away mid-body: nothing to answer.
                }
            }
        }
        call.upstream_request
            .extend_from_slice(&conn.buf[head_len..total]);
        conn.buf.advance(total);

        let outgoing = Outgoing {
            bytes: &call.upstream_request,
            head_request: call.head_request,
            request_id: &call.request_id,
            close_client: call.close,
        };
        let result = forward::forward(&self.edge.upstreams, &outgoing, stream, &mut conn.out).await;
        let (status, bytes, backend, turn) = match result {
            Ok(r) => (
                r.status,
                r.body_bytes,
                Some(r.backend),
                if r.client_reusable {
                    Turn::Next
                } else {
                    Turn::Close
                },
            ),
            Err(forward::Error::Midway(b)) => {
                (b.status, b.body_bytes, Some(b.backend), Turn::Close)
            }
            Err(forward::Error::Before(f)) => {
                METRICS.backend_errors.with_label_values(&[f.kind]).inc();
                let body = crate::edge::json_error(f.kind, f.message);
                let out = &mut conn.out;
                out.clear();
                crate::proxy::headers::push_status_line(out, f.status, None);
                out.extend_from_slice(
                    b"content-type: application/json; charset=utf-8\r\ncache-control: no-store\r\ncontent-length: ",
                );
                out.extend_from_slice(body.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                write::push_common_headers(out, &call.request_id, call.close);
                if !call.head_request {
                    out.extend_from_slice(&body);
                }
                let write = async {
                    stream.write_all(out).await?;
                    stream.flush().await
                };
                let ok = forward::within_send_timeout(write).await.is_ok();
                (
                    if ok { f.status } else { 0 },
                    body.len() as u64,
                    f.backend,
                    if ok && !call.close {
                        Turn::Next
                    } else {
                        Turn::Close
                    },
                )
            }
        };
        self.finish(
            call.log.as_ref(),
            conn.client_ip.as_deref(),
            RouteClass::Proxy,
            status,
            bytes,
            started,
            &call.request_id,
            backend,
        );
        turn
    }

    /// Metrics and the access log for a request answered on the short path.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        log: Option<&LogFields>,
        client: Option<&str>,
        class: RouteClass,
        status: u16,
        bytes: u64,
        started: Instant,
        request_id: &str,
        backend: Option<usize>,
    ) {
        METRICS.in_flight.dec();
        let elapsed = started.elapsed();
        metrics::record_request(class.label(), status, elapsed);
        let Some(l) = log else { return };
        access_log::write(
            self.edge.access_log,
            &Entry {
                client: client.unwrap_or("-"),
                method: &l.method,
                target: &l.target,
                version: "HTTP/1.1",
                status,
                bytes: bytes as usize,
                referer: &l.referer,
                user_agent: &l.user_agent,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream: backend
                    .map(|i| self.edge.upstreams.authority(i))
                    .unwrap_or("-"),
                request_id,
                class: class.label(),
            },
        );
    }
}
