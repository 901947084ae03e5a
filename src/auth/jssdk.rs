//! `GET /_wxedge/jssdk/config?url=<encodeURIComponent(location.href.split('#')[0])>`: what a
//! page passes to `wx.config` (`appId`, `timestamp`, `nonceStr`, `signature`), for URLs on this
//! site's own origins only. The signing and the credentials are the provider's
//! (`wechat::jssdk`); this is the endpoint: the request's rules and the answers.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;

use super::AuthRequest;
use crate::ops::metrics::METRICS;
use crate::ops::RouteClass;
use crate::reply::Reply;
use crate::wechat::jssdk::{page_url, sign, Credentials, Unavailable};

pub struct JsSdkEndpoint {
    credentials: Arc<Credentials>,
    /// `host[:port]` (lower case) of origins signed besides the request's own `Host`: the
    /// public URL's, and `wechat.jssdk_origins`.
    origins: Vec<String>,
}

/// `host[:port]` of an origin (`https://h5.example.com`), lower case; `None` if it is not one.
pub fn origin_host(origin: &str) -> Option<String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))?;
    let host = rest.trim_end_matches('/');
    (!host.is_empty() && !host.contains(['/', '?', '#', '@', ' ']))
        .then(|| host.to_ascii_lowercase())
}

impl JsSdkEndpoint {
    pub fn new(credentials: Arc<Credentials>, origins: Vec<String>) -> JsSdkEndpoint {
        JsSdkEndpoint {
            credentials,
            origins,
        }
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// The answer to `/_wxedge/jssdk/config`.
    pub async fn config(&self, req: &AuthRequest<'_>) -> Reply {
        if req.method != "GET" && req.method != "HEAD" {
            let mut r = error(405, "method_not_allowed", "use GET");
            r.headers
                .push((http::header::ALLOW, HeaderValue::from_static("GET, HEAD")));
            return r;
        }
        let host = req.host.map(str::to_ascii_lowercase);
        let ours = |h: &str| host.as_deref() == Some(h) || self.origins.iter().any(|o| o == h);
        let url = match page_url(raw_param(req.query, "url"), ours) {
            Ok(url) => url,
            Err(why) => {
                counted("bad_url");
                return error(400, "bad_url", why.message());
            }
        };
        let ticket = match self.credentials.ticket().await {
            Ok(t) => t,
            Err(Unavailable::Transient(_)) => {
                counted("unavailable");
                let mut r = error(
                    503,
                    "wechat_unavailable",
                    "WeChat did not hand out the JS-SDK ticket just now; retry shortly",
                );
                r.headers
                    .push((http::header::RETRY_AFTER, HeaderValue::from_static("5")));
                return r;
            }
            Err(Unavailable::Refused { errcode, .. }) => {
                counted("refused");
                let message = format!(
                    "WeChat refused the edge's JS-SDK credentials (errcode {errcode}); the edge's log says what to fix"
                );
                return error(502, "wechat_refused", &message);
            }
        };
        let timestamp = crate::ops::clock::unix_secs();
        let nonce = nonce();
        let signature = sign(&ticket, &nonce, timestamp, &url);
        counted("signed");
        let body = serde_json::json!({
            "appId": self.credentials.appid(),
            "timestamp": timestamp,
            "nonceStr": nonce,
            "signature": signature,
        });
        // `Cache-Control: no-store` (every reply's): a signature is for the page that asked.
        Reply::json(RouteClass::Auth, 200, Bytes::from(body.to_string()))
    }
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply::error(RouteClass::Auth, status, code, message)
}

fn counted(result: &str) {
    METRICS.jssdk_signatures.with_label_values(&[result]).inc();
}

/// `name`'s value as sent (still percent-encoded): the URL is decoded once, by `page_url`.
fn raw_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// 16 letters and digits, never the same twice in a process (what WeChat's SDKs send as
/// `nonceStr`). It is public (it goes back to the page) and needs to be unique, not secret: a
/// hash of a counter under a per-process random seed, so no system call per signature.
fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let hex = crate::session::random_hex(8);
        u64::from_str_radix(&hex, 16).unwrap_or(0)
    });
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let mut h = xxhash_rust::xxh3::xxh3_128_with_seed(&n.to_le_bytes(), seed);
    (0..16)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u128) as usize] as char;
            h /= ALPHABET.len() as u128;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_params() {
        assert_eq!(
            origin_host("https://H5.example.com/").as_deref(),
            Some("h5.example.com")
        );
        assert_eq!(
            origin_host("http://h5.example.com:8080").as_deref(),
            Some("h5.example.com:8080")
        );
        assert_eq!(origin_host("h5.example.com"), None);
        assert_eq!(origin_host("https://h5.example.com/path"), None);
        assert_eq!(
            raw_param(Some("a=1&url=https%3A%2F%2Fx%2F%3Fa%3D1&b=2"), "url"),
            Some("https%3A%2F%2Fx%2F%3Fa%3D1")
        );
        assert_eq!(raw_param(Some("urls=1"), "url"), None);
        let n = nonce();
        assert_eq!(n.len(), 16);
        assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(n, nonce());
    }
}
