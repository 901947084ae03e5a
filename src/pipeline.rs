//! One decision per request, whatever the transport.
//!
//! Each transport parses and checks a request its own way (the HTTP/1 head parser in
//! `request`, the HTTP/2 stream checks in `request::h2`) into the same [`Incoming`] value, and
//! writes whatever [`Plan`] it gets; what happens to the request is decided here, once:
//!
//! ```text
//! HTTP/1 head ─┐                                  ┌─▶ Refuse: the error answer, then close
//! HTTP/2 stream ┴─▶ Incoming ─▶ decide(site) ─▶ Plan ┼─▶ Reply / Static: written by the transport
//!                                                  ├─▶ Forward: the one upstream builder, the backend
//!                                                  └─▶ Tunnel: an upgrade, relayed both ways
//! ```
//!
//! The route is chosen from the normalised path only (`route`), the login decides with values
//! (`auth`), the dist answers with values (`static_files`), and health with values
//! (`ops::health`), so a table of requests and the plans they must produce tests it all
//! without a socket. Most requests (the dist's files) are decided without waiting for anything
//! ([`SiteState::decide_at_once`]); a transport that answers those inline calls that first.

use bytes::Bytes;
use http::header::{self, HeaderValue};

use crate::auth::{pages, AuthAction, AuthRequest};
use crate::ops::metrics::METRICS;
use crate::ops::{health, RouteClass};
use crate::proxy::upstream::ForwardedIdentity;
use crate::reply::{Reply, ReplyBody};
use crate::request::{refuse, Incoming, Refusal};
use crate::route::{self, Route};
use crate::site::SiteState;
use crate::static_files::{Answer, Piece, Quick};

/// What happens to a request.
#[derive(Debug)]
pub enum Plan<'s> {
    /// Refused: this error answer, then the connection closes (HTTP/1).
    Refuse(Refusal),
    /// The edge answers by itself.
    Reply(Reply),
    /// A whole dist file or its 304, its head prebuilt at start-up (the common answer).
    Static(Quick<'s>),
    /// To the backend, with this identity (`proxy::upstream` builds the request).
    Forward(ForwardedIdentity),
    /// An upgrade to the backend, relayed both ways once it agrees.
    Tunnel(ForwardedIdentity),
}

impl Plan<'_> {
    /// The plan with nothing borrowed from the site: a prebuilt answer becomes a reply.
    pub fn detach(self) -> Plan<'static> {
        match self {
            Plan::Static(q) => Plan::Reply(quick_reply(&q)),
            Plan::Refuse(r) => Plan::Refuse(r),
            Plan::Reply(r) => Plan::Reply(r),
            Plan::Forward(id) => Plan::Forward(id),
            Plan::Tunnel(id) => Plan::Tunnel(id),
        }
    }
}

impl SiteState {
    /// The plan, when it needs nothing that may wait (no session, no WeChat, no disk): the
    /// refusals, the redirect to HTTPS, liveness and the dist's prebuilt answers. `None`:
    /// [`Self::decide_rest`] decides.
    pub fn decide_at_once(&self, req: &Incoming<'_>) -> Option<Plan<'_>> {
        if req.upgrade && req.has_body {
            return Some(Plan::Refuse(refuse(400, "an upgrade request with a body")));
        }
        if req.redirect_listener && !route::stays_on_plain_http(req.path) {
            return Some(self.to_https(req));
        }
        match self.router.route(req.path) {
            Route::Health => Some(Plan::Reply(health::live())),
            Route::Static if !req.has_body => self.quick_static(req).map(Plan::Static),
            _ => None,
        }
    }

    /// The one decision.
    pub async fn decide(&self, req: &Incoming<'_>) -> Plan<'_> {
        match self.decide_at_once(req) {
            Some(plan) => plan,
            None => self.decide_rest(req).await,
        }
    }

    /// What [`Self::decide_at_once`] left undecided.
    pub async fn decide_rest(&self, req: &Incoming<'_>) -> Plan<'_> {
        let route = self.router.route(req.path);
        match route {
            Route::Ready => return Plan::Reply(health::ready(self).await),
            Route::AcmeChallenge => return Plan::Reply(self.acme_challenge(req.path).await),
            _ => {}
        }
        let client = &req.client.client;
        if let Some(over) = self.rate_limits.check(route, req.path, req.query, client) {
            return Plan::Reply(limited_reply(req, route, over.limit, over.retry_after));
        }
        // WeChat login at the edge: callback interception, /_wxedge/* endpoints, the sandbox,
        // the 401 for `require_session` prefixes.
        let proxied = route == Route::Proxy;
        let outcome = self.auth.decide(&auth_request(req), proxied).await;
        let identity = match outcome.action {
            AuthAction::Answer(reply) => {
                return Plan::Reply(reply.with_cookies(outcome.set_cookies))
            }
            AuthAction::Continue(identity) => identity,
        };
        match route {
            Route::Proxy if self.upstreams.is_empty() => {
                METRICS
                    .backend_errors
                    .with_label_values(&["no_backend"])
                    .inc();
                Plan::Reply(Reply::error(
                    RouteClass::Proxy,
                    502,
                    "bad_gateway",
                    "no backend is configured",
                ))
            }
            // Only the backend can take an upgrade; anywhere else it is an ordinary request.
            Route::Proxy if req.upgrade => Plan::Tunnel(identity),
            Route::Proxy => Plan::Forward(identity),
            Route::Static => Plan::Reply(self.static_reply(req).with_cookies(outcome.set_cookies)),
            // The edge's own namespace: an unknown name is a 404, never the SPA.
            Route::Edge | Route::AcmeChallenge | Route::Health | Route::Ready => {
                Plan::Reply(Reply::error(
                    RouteClass::Rejected,
                    404,
                    "not_found",
                    "no such /_wxedge/ endpoint",
                ))
            }
        }
    }

    /// A whole dist file or its 304 from headers built at start-up; `None` for what needs more
    /// (another method, a page load carrying an OAuth code to exchange, a range, a redirect).
    fn quick_static(&self, req: &Incoming<'_>) -> Option<Quick<'_>> {
        let head = req.method == "HEAD";
        if !(head || req.method == "GET") || req.query.is_some_and(|q| q.contains("code=")) {
            return None;
        }
        let quick = self.dist.quick(req.path, &req.conditions, head)?;
        crate::ops::metrics::record_static_hit(quick.encoding.token());
        Some(quick)
    }

    /// The dist's answer: a file (whole, 304, ranges), a directory redirect, or an error.
    fn static_reply(&self, req: &Incoming<'_>) -> Reply {
        let class = RouteClass::Static;
        let head = req.method == "HEAD";
        if !(head || req.method == "GET") {
            let allow = HeaderValue::from_static("GET, HEAD");
            return Reply::text(class, 405, "405 Method Not Allowed\n").with(header::ALLOW, allow);
        }
        match self.dist.answer(req.path, req.query, &req.conditions, head) {
            Answer::File(plan) => {
                crate::ops::metrics::record_static_hit(plan.encoding.token());
                let length = (plan.status != 304).then(|| plan.content_length.unwrap_or(0));
                Reply {
                    class,
                    status: plan.status,
                    headers: plan.headers,
                    body: ReplyBody::Pieces {
                        pieces: plan.body,
                        length,
                    },
                }
            }
            Answer::Redirect(location) => Reply::moved(
                class,
                301,
                &location,
                Bytes::from_static(b"301 Moved Permanently\n"),
            ),
            Answer::Error(status, why) => {
                let why = if status == 404 { "Not Found" } else { why };
                Reply::text(class, status, format!("{status} {why}\n"))
            }
        }
    }

    async fn acme_challenge(&self, path: &str) -> Reply {
        match crate::static_files::acme::challenge(&self.acme_webroot, path).await {
            Some(body) => Reply::text(RouteClass::Static, 200, body),
            None => Reply::text(RouteClass::Static, 404, "404 Not Found\n"),
        }
    }

    /// A redirect listener's answer: `301` to the same host and target over HTTPS (nginx's
    /// `return 301 https://$host$request_uri`), to the HTTPS listener's port.
    fn to_https(&self, req: &Incoming<'_>) -> Plan<'_> {
        let host = req
            .host
            .and_then(|h| std::str::from_utf8(h.trim_ascii()).ok())
            .map(host_without_port)
            .or(self.public_host.as_deref());
        let Some(host) = host else {
            return Plan::Refuse(refuse(400, "a redirect to HTTPS needs a Host header"));
        };
        let port = self.https.as_ref().map_or(443, |h| h.port);
        let location = if port == 443 {
            format!("https://{host}{}", req.target)
        } else {
            format!("https://{host}:{port}{}", req.target)
        };
        let body = Bytes::from_static(b"301 Moved Permanently\n");
        Plan::Reply(Reply::moved(RouteClass::Static, 301, &location, body))
    }
}

/// 429 with `Retry-After` (whole seconds, at least 1): a page for a navigation, JSON for the
/// rest. Counted per limit.
fn limited_reply(
    req: &Incoming<'_>,
    route: Route,
    limit: &str,
    retry_after: std::time::Duration,
) -> Reply {
    METRICS.limited.with_label_values(&[limit]).inc();
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let retry = HeaderValue::from(seconds.max(1));
    let navigation = route != Route::Proxy
        && (req.fields.first("sec-fetch-mode") == Some(b"navigate".as_slice())
            || req
                .fields
                .first("accept")
                .is_some_and(|a| memchr::memmem::find(a, b"text/html").is_some()));
    let reply = if navigation {
        // The normalised path (one leading slash), never the target as sent: `//host/x` there
        // would make the retry link another site's.
        let again = match req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.to_string(),
        };
        let page = pages::busy_page("rate_limited", &again, req.request_id, seconds.max(1));
        Reply::page(RouteClass::Rejected, 429, page)
    } else {
        let message = "too many requests from this address; retry after Retry-After seconds";
        Reply::error(RouteClass::Rejected, 429, "too_many_requests", message)
    };
    reply
        .with(header::RETRY_AFTER, retry)
        .with(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

/// The parts of the request the login looks at.
fn auth_request<'a>(req: &Incoming<'a>) -> AuthRequest<'a> {
    // Only a trusted hop may say the browser used HTTPS in front of it.
    let https = req.tls
        || (req.client.hop_trusted
            && req
                .fields
                .first("x-forwarded-proto")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"https")));
    AuthRequest {
        method: req.method,
        path: req.path,
        query: req.query,
        cookies: req.fields.all("cookie").collect(),
        host: req.host.and_then(|h| std::str::from_utf8(h).ok()),
        https,
        fields: req.fields,
        request_id: req.request_id,
    }
}

/// A prebuilt answer as a reply of its own (for a writer that has no prebuilt form).
pub fn quick_reply(q: &Quick<'_>) -> Reply {
    let mut length = None;
    let mut headers = Vec::with_capacity(q.headers.len());
    for (name, value) in q.headers {
        if name == header::CONTENT_LENGTH {
            length = value.to_str().ok().and_then(|v| v.parse().ok());
        } else {
            headers.push((name.clone(), value.clone()));
        }
    }
    let pieces = if q.body.is_empty() {
        Vec::new()
    } else {
        vec![Piece::Memory(q.body.clone())]
    };
    Reply {
        class: RouteClass::Static,
        status: q.status,
        headers,
        body: ReplyBody::Pieces { pieces, length },
    }
}

/// `host` of `host[:port]` (an IPv6 literal keeps its brackets).
fn host_without_port(h: &str) -> &str {
    match h.rfind(':') {
        Some(i) if !h[i..].contains(']') => &h[..i],
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::client::ClientAddr;
    use crate::request::Fields;
    use crate::static_files::Conditions;

    #[test]
    fn redirect_hosts_lose_their_port_only() {
        assert_eq!(host_without_port("a.test:8080"), "a.test");
        assert_eq!(host_without_port("a.test"), "a.test");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }

    /// A site on its sandbox login: a small dist, `/api/` to a backend, `/api/private/` only
    /// with a session, HTTPS redirects to port 8443.
    fn site(backends: &str) -> crate::site::Site {
        let dist = std::env::temp_dir().join(format!("wxedge-decide-{}", std::process::id()));
        std::fs::create_dir_all(dist.join("assets")).unwrap();
        std::fs::write(dist.join("index.html"), "<!doctype html><title>t</title>").unwrap();
        std::fs::write(dist.join("assets/app.js"), "console.log(1)".repeat(100)).unwrap();
        let env: std::collections::HashMap<String, String> = [
            ("WXEDGE_DIST", dist.to_str().unwrap()),
            ("WXEDGE_BACKEND", backends),
            ("WXEDGE_REQUIRE_SESSION", "/api/private/"),
            ("WXEDGE_PUBLIC_URL", "https://h5.test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = crate::config::load(None, &env).unwrap();
        let s = &config.settings;
        let dist =
            crate::static_files::StaticSite::load(&s.dist, &s.static_files, &s.mp_verify).unwrap();
        let auth = crate::auth::Auth::from_config(&config).unwrap();
        crate::site::Site::new(&config, dist, auth)
    }

    /// What a plan comes to, for the table: its kind, status and class.
    fn summary(plan: &Plan<'_>) -> (&'static str, u16, RouteClass) {
        match plan {
            Plan::Refuse(r) => ("refuse", r.status, RouteClass::Rejected),
            Plan::Reply(r) => ("reply", r.status, r.class),
            Plan::Static(q) => ("static", q.status, RouteClass::Static),
            Plan::Forward(_) => ("forward", 0, RouteClass::Proxy),
            Plan::Tunnel(_) => ("tunnel", 0, RouteClass::Proxy),
        }
    }

    struct Case {
        method: &'static str,
        target: &'static str,
        headers: &'static [(&'static str, &'static str)],
        upgrade: bool,
        has_body: bool,
        redirect_listener: bool,
    }

    const GET: Case = Case {
        method: "GET",
        target: "/",
        headers: &[("Host", "h5.test")],
        upgrade: false,
        has_body: false,
        redirect_listener: false,
    };

    async fn decide(site: &crate::site::Site, c: &Case) -> (&'static str, u16, RouteClass) {
        let lines: Vec<httparse::Header> = c
            .headers
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        let (path, query) = match c.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (c.target, None),
        };
        let fields = Fields::Lines(&lines);
        let client = ClientAddr::unknown();
        let req = Incoming {
            method: c.method,
            path,
            query,
            target: c.target,
            fields,
            conditions: Conditions {
                accept: fields.text("accept"),
                range: fields.text("range"),
                ..Conditions::default()
            },
            host: fields.first("host"),
            client: &client,
            tls: false,
            redirect_listener: c.redirect_listener,
            upgrade: c.upgrade,
            has_body: c.has_body,
            request_id: "rid",
        };
        summary(&site.decide(&req).await)
    }

    #[tokio::test]
    async fn one_table_of_requests_and_their_plans() {
        let site = site("http://127.0.0.1:9");
        let html = &[("Host", "h5.test"), ("Accept", "text/html")];
        let ws = &[("Host", "h5.test"), ("Upgrade", "websocket")];
        for (case, want) in [
            (GET, ("static", 200, RouteClass::Static)),
            (
                Case {
                    target: "/assets/app.js",
                    ..GET
                },
                ("static", 200, RouteClass::Static),
            ),
            (
                Case {
                    target: "/pages/index/index",
                    headers: html,
                    ..GET
                },
                ("static", 200, RouteClass::Static),
            ),
            (
                Case {
                    target: "/assets/nope.js",
                    ..GET
                },
                ("reply", 404, RouteClass::Static),
            ),
            (
                Case {
                    target: "/assets/app.js",
                    headers: &[("Range", "bytes=0-9")],
                    ..GET
                },
                ("reply", 206, RouteClass::Static),
            ),
            (
                Case {
                    method: "POST",
                    has_body: true,
                    ..GET
                },
                ("reply", 405, RouteClass::Static),
            ),
            (
                Case {
                    target: "/api/user",
                    ..GET
                },
                ("forward", 0, RouteClass::Proxy),
            ),
            (
                Case {
                    method: "POST",
                    target: "/api/user",
                    has_body: true,
                    ..GET
                },
                ("forward", 0, RouteClass::Proxy),
            ),
            (
                Case {
                    target: "/api/private/me",
                    ..GET
                },
                ("reply", 401, RouteClass::Proxy),
            ),
            (
                Case {
                    target: "/api/ws",
                    headers: ws,
                    upgrade: true,
                    ..GET
                },
                ("tunnel", 0, RouteClass::Proxy),
            ),
            // An upgrade anywhere but the backend is an ordinary request.
            (
                Case {
                    target: "/",
                    headers: ws,
                    upgrade: true,
                    ..GET
                },
                ("static", 200, RouteClass::Static),
            ),
            (
                Case {
                    target: "/api/ws",
                    upgrade: true,
                    has_body: true,
                    ..GET
                },
                ("refuse", 400, RouteClass::Rejected),
            ),
            (
                Case {
                    target: "/_wxedge/healthz",
                    ..GET
                },
                ("reply", 200, RouteClass::Health),
            ),
            (
                Case {
                    target: "/_wxedge/nope",
                    ..GET
                },
                ("reply", 404, RouteClass::Rejected),
            ),
            (
                Case {
                    target: "/_wxedge/login?return=/",
                    ..GET
                },
                ("reply", 302, RouteClass::Auth),
            ),
            (
                Case {
                    target: "/_wxedge/login?return=https://evil.test/",
                    ..GET
                },
                ("reply", 400, RouteClass::Auth),
            ),
            (
                Case {
                    target: "/_wxedge/session",
                    ..GET
                },
                ("reply", 200, RouteClass::Auth),
            ),
            (
                Case {
                    target: "/.well-known/acme-challenge/tok",
                    ..GET
                },
                ("reply", 404, RouteClass::Static),
            ),
            (
                Case {
                    target: "/page?x=1",
                    redirect_listener: true,
                    ..GET
                },
                ("reply", 301, RouteClass::Static),
            ),
            (
                Case {
                    target: "/.well-known/acme-challenge/tok",
                    redirect_listener: true,
                    ..GET
                },
                ("reply", 404, RouteClass::Static),
            ),
        ] {
            assert_eq!(
                decide(&site, &case).await,
                want,
                "{} {}",
                case.method,
                case.target
            );
        }
    }

    #[tokio::test]
    async fn without_a_backend_api_calls_are_a_502_and_a_redirect_keeps_the_target() {
        let site = site("");
        let api = Case {
            target: "/api/user",
            ..GET
        };
        assert_eq!(decide(&site, &api).await, ("reply", 502, RouteClass::Proxy));
        let req_fields = [httparse::Header {
            name: "Host",
            value: b"h5.test:8080",
        }];
        let client = ClientAddr::unknown();
        let fields = Fields::Lines(&req_fields);
        let req = Incoming {
            method: "GET",
            path: "/p/a",
            query: Some("b=1"),
            target: "/p/%61?b=1",
            fields,
            conditions: Conditions::default(),
            host: fields.first("host"),
            client: &client,
            tls: false,
            redirect_listener: true,
            upgrade: false,
            has_body: false,
            request_id: "rid",
        };
        let Plan::Reply(r) = site.decide(&req).await else {
            panic!("a reply")
        };
        let location = r
            .headers
            .iter()
            .find(|(n, _)| n == header::LOCATION)
            .unwrap();
        assert_eq!(location.1, "https://h5.test/p/%61?b=1");
        let no_host = Incoming { host: None, ..req };
        // `public_url` names the host when the request does not.
        let Plan::Reply(r) = site.decide(&no_host).await else {
            panic!("a reply")
        };
        assert_eq!(r.status, 301);
    }
}
