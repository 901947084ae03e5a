//! The client connection as Pingora's answer path sees it.
//!
//! The front door has already read and decoded the whole request; Pingora gets it as a
//! rewritten prefix (`set_pipelined_prefix`), and the part of its body that waits in a
//! temporary file (`request::body`) as the first reads here. Past that, reads see nothing, so
//! Pingora can never read past that request into the next pipelined one (which stays in the
//! front door's buffer) or parse any byte the front door has not validated. Writes go straight
//! to the socket. A real upgrade (WebSocket) is the exception: after it the connection is a
//! tunnel, and reads pass through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::{
    raw_connect::ProxyDigest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown,
    SocketDigest, Ssl, Stream, TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::request::body::{TempBody, TempReader};

#[derive(Debug)]
pub struct HandedOver {
    inner: Stream,
    /// The rest of the request's body, read before anything else.
    body: Option<TempReader>,
    /// Reads reach the socket (only for upgrades).
    reads: bool,
}

impl HandedOver {
    pub fn new(inner: Stream, body: Option<TempBody>, reads: bool) -> HandedOver {
        let body = body.map(TempBody::reader);
        HandedOver { inner, body, reads }
    }

    /// The front door's stream back from the one Pingora returns.
    pub fn take_back(stream: Stream) -> Option<Stream> {
        stream
            .into_any()
            .downcast::<HandedOver>()
            .ok()
            .map(|h| h.inner)
    }
}

impl AsyncRead for HandedOver {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(body) = &mut self.body {
            let before = buf.filled().len();
            match Pin::new(body).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => self.body = None,
                other => return other,
            }
        }
        if self.reads {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        } else {
            // Nothing more belongs to this request. Pingora only reads here to notice a
            // client going away while it waits for the backend, always beside another wait.
            Poll::Pending
        }
    }
}

impl AsyncWrite for HandedOver {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HandedOver {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HandedOver {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HandedOver {}

impl GetTimingDigest for HandedOver {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HandedOver {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HandedOver {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HandedOver {}
