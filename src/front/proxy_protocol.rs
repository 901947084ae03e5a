//! The PROXY protocol (v1 text or v2 binary, as HAProxy, AWS NLB, Alibaba SLB and Tencent CLB
//! send it): on listeners configured for it, every connection starts with a header naming the
//! client's address, sent by a load balancer the edge trusts. Parsing is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;

/// Longest header: v1 is at most 107 bytes; v2's fixed part is 16, its addresses and TLVs
/// are bounded here (a load balancer's TLVs are small).
const MAX_HEADER: usize = 16 + 1024;

/// Read the header at the start of `buf` (reading more from `stream` until `deadline`) and
/// remove it; the source address it names (`None`: `LOCAL`/`UNKNOWN`, a health check).
pub async fn read_header(
    stream: &mut Stream,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<Option<SocketAddr>, &'static str> {
    loop {
        let parsed = HeaderResult::parse(buf);
        if parsed.is_complete() {
            let (len, source) = match parsed {
                HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
                HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h.addresses)),
                _ => return Err("not a PROXY protocol header"),
            };
            buf.advance(len);
            return Ok(source);
        }
        if buf.len() >= MAX_HEADER {
            return Err("PROXY protocol header too long");
        }
        buf.reserve(MAX_HEADER);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err("no complete PROXY protocol header in time"),
        }
    }
}

fn v1_source(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(a) => Some((IpAddr::V4(a.source_address), a.source_port).into()),
        v1::Addresses::Tcp6(a) => Some((IpAddr::V6(a.source_address), a.source_port).into()),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(a: &v2::Addresses) -> Option<SocketAddr> {
    match a {
        v2::Addresses::IPv4(a) => Some((IpAddr::V4(a.source_address), a.source_port).into()),
        v2::Addresses::IPv6(a) => Some((IpAddr::V6(a.source_address), a.source_port).into()),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}
