//! Route once: which part of the edge answers a request, decided from its normalised path
//! alone. The front door and Pingora's phases both call [`Router::route`], so they cannot
//! disagree.

/// Who answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/_wxedge/healthz`: the process is up.
    Health,
    /// `/_wxedge/readyz`: the dist is loaded and a backend answers.
    Ready,
    /// The rest of `/_wxedge/`: the login endpoints, the sandbox, or a JSON 404.
    Edge,
    /// `/.well-known/acme-challenge/<token>`: a certificate renewal's proof, from disk.
    AcmeChallenge,
    /// A proxy prefix: the backend.
    Proxy,
    /// Everything else: the dist (and the OAuth callback on page loads).
    Static,
}

#[derive(Debug, Clone)]
pub struct Router {
    /// Each prefix, e.g. `/api/`; `/api` itself also matches it (nginx's `location /api/`
    /// answers `/api` with a redirect to `/api/`; the backend is the better judge).
    prefixes: Vec<String>,
}

pub const EDGE_PREFIX: &str = "/_wxedge/";
pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// What a redirect-to-HTTPS listener still serves over plain HTTP: WeChat fetches
/// `/MP_verify_<token>.txt` and ACME CAs fetch their challenge over plain HTTP.
pub fn stays_on_plain_http(path: &str) -> bool {
    path.starts_with(ACME_PREFIX)
        || path
            .strip_prefix("/MP_verify_")
            .is_some_and(|rest| rest.ends_with(".txt") && !rest.contains('/'))
}

impl Router {
    pub fn new(prefixes: &[String]) -> Router {
        Router {
            prefixes: prefixes.to_vec(),
        }
    }

    /// `path` must be normalised ([`crate::request::path::normalise`]).
    pub fn route(&self, path: &str) -> Route {
        if let Some(rest) = path.strip_prefix(EDGE_PREFIX) {
            return match rest {
                "healthz" => Route::Health,
                "readyz" => Route::Ready,
                _ => Route::Edge,
            };
        }
        if path.starts_with(ACME_PREFIX) {
            return Route::AcmeChallenge;
        }
        if self.is_proxied(path) {
            Route::Proxy
        } else {
            Route::Static
        }
    }

    fn is_proxied(&self, path: &str) -> bool {
        self.prefixes.iter().any(|p| {
            path.starts_with(p.as_str()) || (p.len() > 1 && p.strip_suffix('/') == Some(path))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table() {
        let r = Router::new(&["/api/".into(), "/upload/".into()]);
        for (path, want) in [
            ("/", Route::Static),
            ("/index.html", Route::Static),
            ("/pages/index/index", Route::Static),
            ("/api", Route::Proxy),
            ("/api/", Route::Proxy),
            ("/api/user/info", Route::Proxy),
            ("/apix", Route::Static),
            ("/apix/y", Route::Static),
            ("/upload/a", Route::Proxy),
            ("/_wxedge/healthz", Route::Health),
            ("/_wxedge/readyz", Route::Ready),
            ("/_wxedge/login", Route::Edge),
            ("/_wxedge/sandbox/connect/oauth2/authorize", Route::Edge),
            ("/_wxedge/", Route::Edge),
            ("/_wxedge", Route::Static),
            ("/.well-known/acme-challenge/tok-1_x", Route::AcmeChallenge),
            ("/.well-known/security.txt", Route::Static),
        ] {
            assert_eq!(r.route(path), want, "{path}");
        }
        // A prefix of `/` proxies everything but the edge's own namespace.
        let all = Router::new(&["/".into()]);
        assert_eq!(all.route("/x"), Route::Proxy);
        assert_eq!(all.route("/_wxedge/healthz"), Route::Health);
    }

    #[test]
    fn plain_http_keeps_wechat_verification_and_acme_only() {
        for p in ["/MP_verify_abc123.txt", "/.well-known/acme-challenge/tok"] {
            assert!(stays_on_plain_http(p), "{p}");
        }
        for p in [
            "/",
            "/MP_verify_abc.txt/x",
            "/MP_verify_abc.html",
            "/x/MP_verify_abc.txt",
            "/.well-known/acme-challengex",
            "/api/MP_verify_a.txt",
        ] {
            assert!(!stays_on_plain_http(p), "{p}");
        }
    }
}
