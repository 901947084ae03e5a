//! `/_wxedge/healthz` (the process is up) and `/_wxedge/readyz` (the dist is loaded and a
//! backend answers), as replies.

use bytes::Bytes;

use super::RouteClass;
use crate::reply::Reply;
use crate::site::SiteState;

/// Liveness: answering at all is the answer.
pub fn live() -> Reply {
    Reply::json(
        RouteClass::Health,
        200,
        Bytes::from_static(b"{\"status\":\"ok\"}"),
    )
}

/// Readiness: 200 when ready, 503 with what it waits for otherwise. With active checks on,
/// their verdict is the answer (a probe here would overrule their thresholds, and cost a
/// connection per backend per probe of an orchestrator); without them, passive health only
/// learns from traffic, so a backend marked down is asked again here.
pub async fn ready(site: &SiteState) -> Reply {
    let ups = &site.upstreams;
    if !ups.is_empty() && !ups.actively_checked() && ups.healthy_count() < ups.len() {
        probe_backends(site).await;
    }
    let (ready, body) = readiness(site);
    let status = if ready { 200 } else { 503 };
    Reply::json(RouteClass::Health, status, Bytes::from(body.to_string()))
}

/// Ready = the dist has its index, and a backend answers (when backends are configured).
fn readiness(site: &SiteState) -> (bool, serde_json::Value) {
    let dist = site.dist.has_index();
    let backends = site.upstreams.is_empty() || site.upstreams.healthy_count() > 0;
    let tree = &site.dist.tree;
    let (compressed, to_compress) = tree.compression_progress();
    let mut waiting_for = Vec::new();
    if !dist {
        waiting_for.push("index.html in the dist");
    }
    if !backends {
        waiting_for.push("a backend that accepts connections");
    }
    let cache = tree.cache.as_ref().map(|c| {
        use std::sync::atomic::Ordering::Relaxed;
        serde_json::json!({
            "dir": c.dir.display().to_string(),
            "hits": c.hits.load(Relaxed),
            "misses": c.misses.load(Relaxed),
            "written": c.writes.load(Relaxed),
        })
    });
    let body = serde_json::json!({
        "ready": dist && backends,
        "waiting_for": waiting_for,
        "dist_loaded": dist,
        "files": tree.files.len(),
        // Not waited for: files are served as they are (or with their twins) until their
        // variants are made.
        "compressed_files": compressed,
        "files_to_compress": to_compress,
        "stale_twins_ignored": tree.stale_twins.len(),
        "compress_cache": cache,
        "backends_total": site.upstreams.len(),
        "backends_healthy": site.upstreams.healthy_count(),
        "backends": site.upstreams.report(),
        // Not waited for: pages work without it; a configuration error shows here.
        "jssdk": site.auth.jssdk_report(),
        // Not waited for either: certificates within 14 days of their end, named here.
        "certificates_expiring": certificates_expiring(site),
    });
    (dist && backends, body)
}

/// Certificates within [`crate::tls::READY_DETAIL_DAYS`] of their end (or past it).
fn certificates_expiring(site: &SiteState) -> serde_json::Value {
    let now = crate::ops::clock::unix_secs() as i64;
    let certs = site.https.iter().flat_map(|h| &h.certificates);
    certs
        .filter(|c| c.days_left(now) < crate::tls::READY_DETAIL_DAYS)
        .map(|c| {
            serde_json::json!({
                "name": c.name(),
                "file": c.files.cert,
                "expires": c.not_after,
                "days_left": c.days_left(now),
            })
        })
        .collect()
}

/// Passive health only learns from traffic; readiness asks once so an idle edge still knows.
async fn probe_backends(site: &SiteState) {
    let ups = &site.upstreams;
    for i in 0..ups.len() {
        let connect = tokio::net::TcpStream::connect(ups.addr(i));
        let ok = tokio::time::timeout(std::time::Duration::from_millis(500), connect)
            .await
            .is_ok_and(|r| r.is_ok());
        if ok {
            ups.mark_up(i)
        } else {
            ups.mark_down(i)
        }
    }
}
