//! One record per request, whichever path answers it: created when the head is read, and
//! dropped when the answer is done or the connection dies. Dropping it is what counts the
//! request out of the in-flight gauge (which graceful shutdown waits on), records its metrics
//! and writes its access-log line, so no path can forget any of them.

use std::time::Instant;

use bytes::Bytes;

use super::access_log::{self, Entry, Format};
use super::metrics::{self, METRICS};
use super::RouteClass;
use crate::request::client::ClientAddr;

/// What the access log prints of the request, made only when it is on: handles on the bytes of
/// its head (`Bytes::slice_ref`: a reference count, no copy).
#[derive(Debug, Clone)]
pub struct LogFields {
    pub method: Bytes,
    pub target: Bytes,
    pub version: &'static str,
    pub referer: Bytes,
    pub user_agent: Bytes,
}

#[derive(Debug)]
pub struct RequestRecord {
    started: Instant,
    pub request_id: String,
    /// Who sent it (the real client behind trusted proxies).
    pub client: ClientAddr,
    pub class: RouteClass,
    /// The status sent; 0 while none (or when the answer could not be sent).
    pub status: u16,
    pub body_bytes: u64,
    /// The backend that answered, as configured.
    pub upstream: Option<&'static str>,
    /// It came over TLS (an HTTPS listener).
    pub https: bool,
    log: Option<(Format, LogFields)>,
}

impl RequestRecord {
    /// `fields` is only called when the access log is on.
    pub fn start(
        format: Format,
        request_id: String,
        client: ClientAddr,
        fields: impl FnOnce() -> LogFields,
    ) -> RequestRecord {
        METRICS.in_flight.inc();
        RequestRecord {
            started: Instant::now(),
            request_id,
            client,
            class: RouteClass::Static,
            status: 0,
            body_bytes: 0,
            upstream: None,
            https: false,
            log: (format != Format::Off).then(|| (format, fields())),
        }
    }

    pub fn answered(&mut self, class: RouteClass, status: u16, body_bytes: u64) {
        self.class = class;
        self.status = status;
        self.body_bytes = body_bytes;
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        METRICS.in_flight.dec();
        let elapsed = self.started.elapsed();
        metrics::record_request(self.class.label(), self.status, elapsed);
        // Health probes run every few seconds; they would drown the log.
        let Some((format, l)) = &self.log else { return };
        if self.class == RouteClass::Health {
            return;
        }
        access_log::write(
            *format,
            &Entry {
                client: &self.client.client,
                method: &l.method,
                target: &l.target,
                version: l.version,
                status: self.status,
                bytes: self.body_bytes as usize,
                referer: &l.referer,
                user_agent: &l.user_agent,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream: self.upstream.unwrap_or("-"),
                request_id: &self.request_id,
                class: self.class.label(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_released_on_drop_whatever_happened() {
        let before = METRICS.in_flight.get();
        let r = RequestRecord::start(Format::Off, "rid".into(), ClientAddr::unknown(), || {
            unreachable!("log is off")
        });
        assert_eq!(METRICS.in_flight.get(), before + 1);
        drop(r);
        assert_eq!(METRICS.in_flight.get(), before);
    }
}
