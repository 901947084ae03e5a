//! The TLS handshake on an HTTPS listener, done by the front door so that a PROXY protocol
//! header (which comes before the handshake) is read first, and so that HTTP/1.1 over TLS is
//! served by the same loop as plain HTTP.

use bytes::BytesMut;
use pingora::protocols::Stream;

use crate::ops::metrics::METRICS;
use crate::site::{ClientLimits, HttpsSite};

/// The connection over TLS, or `None` (already logged at debug level and counted) when the
/// handshake fails or the client is not done within the header deadline.
pub async fn accept(
    https: &HttpsSite,
    stream: Stream,
    read_ahead: &mut BytesMut,
    limits: &ClientLimits,
) -> Option<Stream> {
    // The handshake needs Pingora's TCP stream type.
    let mut tcp = super::socket::into_pingora_tcp(stream)?;
    if !read_ahead.is_empty() {
        // Bytes read past a PROXY header are the start of the client's hello.
        tcp.rewind(&read_ahead.split());
    }
    let handshake = https.acceptor.tls_handshake(tcp);
    match tokio::time::timeout(limits.header_timeout, handshake).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            log::debug!("TLS handshake failed: {e}");
            METRICS.tls_handshake_failures.inc();
            None
        }
        Err(_) => {
            METRICS.tls_handshake_failures.inc();
            None
        }
    }
}
