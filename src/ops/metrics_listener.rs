//! The private metrics listener: `GET /metrics` and `POST /admin/revoke?openid=…`. Kept apart
//! from the registry (`metrics.rs`), which every layer records into: the admin endpoint needs
//! layers above those (the shared revocations, `auth`'s query parsing).

use crate::auth::query_param;
use crate::ops::metrics::{established_connections, METRICS};
use crate::shared::revocation::valid_openid;
use crate::shared::Revocations;

/// The metrics listener: `GET /metrics` in Prometheus text format, and (private like it)
/// `POST /admin/revoke?openid=…`.
pub struct MetricsEndpoint {
    /// The public listeners' ports, for `wxedge_active_connections`.
    pub public_ports: Vec<u16>,
    /// Session revocation for `/admin/revoke` (with `redis_url`).
    pub revocations: Option<std::sync::Arc<Revocations>>,
}

#[async_trait::async_trait]
impl pingora_proxy::ProxyHttp for MetricsEndpoint {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(
        &self,
        session: &mut pingora_proxy::Session,
        _ctx: &mut (),
    ) -> pingora::Result<bool> {
        let path = session.req_header().uri.path();
        if path == "/admin/revoke" {
            let method = session.req_header().method.as_str().to_string();
            let query = session.req_header().uri.query().map(str::to_string);
            let (status, body) =
                admin_revoke(self.revocations.as_deref(), &method, query.as_deref()).await;
            let mut resp = pingora::http::ResponseHeader::build(status, Some(3))?;
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
            resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            session.write_response_header(Box::new(resp), false).await?;
            session
                .write_response_body(Some(bytes::Bytes::from(body)), true)
                .await?;
            return Ok(true);
        }
        let (status, body) = if path == "/metrics" {
            if let Some(n) = established_connections(&self.public_ports) {
                METRICS.connections.set(n);
            }
            (200, METRICS.render())
        } else {
            (404, b"not found\n".to_vec())
        };
        let mut resp = pingora::http::ResponseHeader::build(status, Some(3))?;
        resp.insert_header(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(bytes::Bytes::from(body)), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut pingora_proxy::Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<pingora::upstreams::peer::HttpPeer>> {
        pingora::Error::e_explain(
            pingora::ErrorType::HTTPStatus(404),
            "the metrics listener proxies nothing",
        )
    }
}

/// The private listener's `POST /admin/revoke?openid=…`: revoke every session of an openid.
/// Returns the status and a JSON body.
pub async fn admin_revoke(
    revocations: Option<&Revocations>,
    method: &str,
    query: Option<&str>,
) -> (u16, String) {
    let error = |status: u16, code: &str, message: &str| {
        (
            status,
            serde_json::json!({ "error": code, "message": message }).to_string(),
        )
    };
    if method != "POST" {
        return error(
            405,
            "method_not_allowed",
            "POST /admin/revoke?openid=OPENID",
        );
    }
    let Some(revocations) = revocations else {
        return error(
            409,
            "no_shared_state",
            "revoking sessions needs redis_url (WXEDGE_REDIS_URL); without it a session stays valid until it expires",
        );
    };
    let openid = query_param(query, "openid").unwrap_or_default();
    if !valid_openid(&openid) {
        return error(
            400,
            "bad_openid",
            "openid: 1 to 128 letters, digits, - or _",
        );
    }
    match revocations.revoke_openid(&openid).await {
        Ok(at) => {
            log::info!("admin: every session of openid {openid} issued up to {at} is revoked");
            (
                200,
                serde_json::json!({ "revoked": true, "openid": openid, "issued_up_to": at })
                    .to_string(),
            )
        }
        Err(t) => error(
            503,
            "redis_unavailable",
            &format!(
                "Redis did not take the revocation ({}): try again",
                t.label()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::shared::Redis;

    #[tokio::test]
    async fn admin_answers_without_redis_and_for_bad_input() {
        let (s, b) = admin_revoke(None, "POST", Some("openid=o1")).await;
        assert_eq!(s, 409, "{b}");
        assert!(b.contains("redis_url"));
        let (s, _) = admin_revoke(None, "GET", Some("openid=o1")).await;
        assert_eq!(s, 405);
        let redis = Arc::new(Redis::new("redis://127.0.0.1:1", Duration::from_millis(20)).unwrap());
        let r = Revocations::new(redis, Duration::from_secs(60));
        let (s, b) = admin_revoke(Some(&r), "POST", Some("openid=a%20b")).await;
        assert_eq!(s, 400, "{b}");
        // Redis unreachable: a clear 503, no hang.
        let (s, b) = admin_revoke(Some(&r), "POST", Some("openid=o1")).await;
        assert_eq!(s, 503, "{b}");
    }
}
