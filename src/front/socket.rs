//! A plain TCP connection as the front door holds it: the socket and its two addresses.
//!
//! Pingora's own stream type keeps timing, tracing and replay state and a shared socket digest
//! beside the socket, held for as long as a keep-alive connection lives: ~0.8 KiB per idle
//! connection (`bench/idle.py`: 2.6 → 1.8 KiB each). The front door needs none of it to serve
//! requests; a socket digest is made when one is asked for.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as PingoraTcp;
use pingora::protocols::{
    raw_connect::ProxyDigest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown,
    SocketDigest, Ssl, Stream, TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

#[derive(Debug)]
pub struct Socket {
    io: tokio::net::TcpStream,
    /// The client (or, after a PROXY header, the client it names).
    peer: SocketAddr,
    local: SocketAddr,
}

impl Socket {
    pub fn new(io: tokio::net::TcpStream, peer: SocketAddr, local: SocketAddr) -> Socket {
        Socket { io, peer, local }
    }

    /// Pingora's stream type for the same socket, for the TLS handshake (which needs it).
    pub fn into_pingora(self) -> PingoraTcp {
        let Socket { io, peer, local } = self;
        let mut stream = PingoraTcp::from(io);
        let digest = digest(stream.as_raw_fd(), peer, local);
        stream.set_socket_digest(digest);
        stream
    }
}

fn digest(fd: RawFd, peer: SocketAddr, local: SocketAddr) -> SocketDigest {
    let digest = SocketDigest::from_raw_fd(fd);
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(peer)));
    let _ = digest.local_addr.set(Some(PingoraAddr::Inet(local)));
    digest
}

/// The descriptor of a plain TCP connection, for `sendfile(2)` and the like; `None` over TLS.
pub fn tcp_fd(stream: &Stream) -> Option<RawFd> {
    let any = stream.as_any();
    any.downcast_ref::<Socket>()
        .map(|s| s.io.as_raw_fd())
        .or_else(|| any.downcast_ref::<PingoraTcp>().map(|s| s.as_raw_fd()))
}

/// Pingora's TCP stream type for a plain connection (the front door's [`Socket`], or a stream
/// that is Pingora's already), for the TLS handshake; `None` for anything else.
pub fn into_pingora_tcp(stream: Stream) -> Option<PingoraTcp> {
    let any = stream.into_any();
    match any.downcast::<Socket>() {
        Ok(socket) => Some(socket.into_pingora()),
        Err(any) => any.downcast::<PingoraTcp>().ok().map(|s| *s),
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Socket {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.io).await;
    }
}

impl UniqueID for Socket {
    fn id(&self) -> UniqueIDType {
        self.io.as_raw_fd()
    }
}

impl Ssl for Socket {}

impl GetTimingDigest for Socket {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Socket {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Socket {
    /// Made when asked (at a connection's start), not kept.
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(Arc::new(digest(self.io.as_raw_fd(), self.peer, self.local)))
    }

    /// Keeps the digest's addresses (only they are kept).
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        if let Some(Some(PingoraAddr::Inet(peer))) = digest.peer_addr.get() {
            self.peer = *peer;
        }
        if let Some(Some(PingoraAddr::Inet(local))) = digest.local_addr.get() {
            self.local = *local;
        }
    }
}

#[async_trait]
impl Peek for Socket {}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_digest_and_the_pingora_stream_carry_both_addresses() {
        let (_client, server) = pair().await;
        let peer: SocketAddr = "203.0.113.7:4000".parse().unwrap();
        let local = server.local_addr().unwrap();
        let stream: Stream = Box::new(Socket::new(server, peer, local));
        assert!(tcp_fd(&stream).is_some());
        let d = stream.get_socket_digest().unwrap();
        assert_eq!(d.peer_addr().and_then(|a| a.as_inet().copied()), Some(peer));
        assert_eq!(
            d.local_addr().and_then(|a| a.as_inet().copied()),
            Some(local)
        );
        let tcp = into_pingora_tcp(stream).unwrap();
        let d = tcp.get_socket_digest().unwrap();
        assert_eq!(d.peer_addr().and_then(|a| a.as_inet().copied()), Some(peer));
        assert_eq!(
            d.local_addr().and_then(|a| a.as_inet().copied()),
            Some(local)
        );
    }
}
