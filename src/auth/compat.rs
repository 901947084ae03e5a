//! For backends that must keep calling WeChat themselves: WeChat-compatible endpoints on a
//! private listener. Such a backend only changes its API base URL.
//!
//! - `GET /sns/oauth2/access_token`: answered from the edge's code cache (the edge usually
//!   redeemed the code a moment earlier, on the page load), otherwise redeemed through the same
//!   single-flight exchanger, so the code is used at WeChat only once.
//! - The backend's 中控 (with `wechat.jssdk`): `GET /cgi-bin/token`, `POST /cgi-bin/stable_token`
//!   and `GET /cgi-bin/ticket/getticket?type=jsapi` answered from the edge's own access_token and
//!   jsapi_ticket (appid and secret checked like WeChat, in constant time), so the backend stops
//!   fetching its own token and overwriting anyone's; `force_refresh` is not passed on (it would
//!   kill every holder's token). `POST /cgi-bin/wxedge/token_failed?access_token=..`: the
//!   backend's call got 40001/42001 with that token; the edge drops it if it is still the one it
//!   holds (compare-and-swap), fetches the next, and answers it. No other `cgi-bin/*` call is
//!   proxied.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

use super::query_param;
use crate::ops::metrics::METRICS;
use crate::wechat::jssdk::{Credentials, Unavailable};
use crate::wechat::{CodeExchanger, ExchangeError, Obtained};

pub struct CompatEndpoint {
    pub exchanger: Arc<CodeExchanger>,
    pub appid: String,
    pub secret: String,
    /// The account's access_token and jsapi_ticket, when `wechat.jssdk` is on.
    pub credentials: Option<Arc<Credentials>>,
}

/// Request bodies (`stable_token`'s JSON) are small; more is refused.
const MAX_BODY: usize = 4096;

fn wechat_error(code: i64, msg: &str) -> String {
    serde_json::json!({ "errcode": code, "errmsg": msg }).to_string()
}

fn same(a: &str, b: &str) -> bool {
    crate::session::ct_eq(a.as_bytes(), b.as_bytes())
}

/// A credential the way WeChat answers one.
fn credential_json(field: &str, value: &str, expires_in: u64, with_errcode: bool) -> String {
    let mut v = serde_json::json!({ field: value, "expires_in": expires_in });
    if with_errcode {
        v["errcode"] = 0.into();
        v["errmsg"] = "ok".into();
    }
    v.to_string()
}

/// Why the edge has no credential to hand out, as WeChat would say it: its own errcode for a
/// refusal, `-1` (busy: SDKs retry) for the rest.
fn unavailable_json(why: &Unavailable) -> String {
    match why {
        Unavailable::Refused { errcode, .. } => {
            wechat_error(*errcode, "refused by WeChat (see the edge's log)")
        }
        Unavailable::Transient(_) => wechat_error(-1, "system error"),
    }
}

impl CompatEndpoint {
    async fn answer(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        if path.starts_with("/cgi-bin/") {
            return match &self.credentials {
                Some(c) => self.account(c, method, path, query, body).await,
                None => (
                    404,
                    wechat_error(40066, "invalid url: the JS-SDK (wechat.jssdk) is off"),
                ),
            };
        }
        if path != "/sns/oauth2/access_token" {
            return (
                404,
                wechat_error(
                    40066,
                    "invalid url: only /sns/oauth2/access_token and the token endpoints are offered here",
                ),
            );
        }
        self.code(query).await
    }

    /// The backend's 中控: the account's credentials from the edge.
    async fn account(
        &self,
        c: &Arc<Credentials>,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        let get = |n| query_param(query, n).unwrap_or_default();
        let token = |r: Result<(Arc<str>, u64), Unavailable>| match r {
            Ok((t, left)) => (200, credential_json("access_token", &t, left, false)),
            Err(why) => (200, unavailable_json(&why)),
        };
        match (method, path) {
            ("GET", "/cgi-bin/token") => {
                if let Err(e) = self.client_credential(&get("appid"), &get("secret"), &get("grant_type")) {
                    return (200, e);
                }
                token(c.access_token().await)
            }
            ("POST", "/cgi-bin/stable_token") => {
                let v: serde_json::Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(_) => return (200, wechat_error(47001, "data format error: a JSON body is required")),
                };
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
                if let Err(e) = self.client_credential(&s("appid"), &s("secret"), &s("grant_type")) {
                    return (200, e);
                }
                // `force_refresh` is not passed on: it would end every holder's token.
                token(c.access_token().await)
            }
            ("GET", "/cgi-bin/ticket/getticket") => {
                if get("type") != "jsapi" {
                    return (200, wechat_error(40097, "invalid args: only type=jsapi is offered"));
                }
                if !c.holds_token(&get("access_token")) {
                    return (200, wechat_error(40001, "invalid credential, access_token is invalid or not latest"));
                }
                match c.ticket_left().await {
                    Ok((t, left)) => (200, credential_json("ticket", &t, left, true)),
                    Err(why) => (200, unavailable_json(&why)),
                }
            }
            ("POST", "/cgi-bin/wxedge/token_failed") => {
                let failed = get("access_token");
                if failed.is_empty() {
                    return (200, wechat_error(41001, "access_token missing"));
                }
                token(c.token_failed(&failed).await)
            }
            (_, "/cgi-bin/token" | "/cgi-bin/stable_token" | "/cgi-bin/ticket/getticket" | "/cgi-bin/wxedge/token_failed") => {
                (405, wechat_error(43001, "require another method"))
            }
            _ => (
                404,
                wechat_error(40066, "invalid url: not proxied; only token, stable_token, ticket/getticket and wxedge/token_failed are offered"),
            ),
        }
    }

    /// WeChat's checks of a client-credential grant.
    fn client_credential(&self, appid: &str, secret: &str, grant: &str) -> Result<(), String> {
        if grant != "client_credential" {
            return Err(wechat_error(40002, "invalid grant_type"));
        }
        if !same(appid, &self.appid) {
            return Err(wechat_error(40013, "invalid appid"));
        }
        if !same(secret, &self.secret) {
            return Err(wechat_error(40125, "invalid appsecret"));
        }
        Ok(())
    }

    /// `sns/oauth2/access_token`: the code exchange.
    async fn code(&self, query: Option<&str>) -> (u16, String) {
        let get = |n| query_param(query, n).unwrap_or_default();
        if !same(&get("appid"), &self.appid) {
            return (200, wechat_error(40013, "invalid appid"));
        }
        if !same(&get("secret"), &self.secret) {
            return (200, wechat_error(40125, "invalid appsecret"));
        }
        if get("grant_type") != "authorization_code" {
            return (200, wechat_error(40002, "invalid grant_type"));
        }
        let code = get("code");
        if code.is_empty() {
            return (200, wechat_error(41008, "missing code"));
        }
        let result = self.exchanger.redeem(&code).await;
        match result.obtained {
            Obtained::Cached => METRICS.code_cache_hits.inc(),
            Obtained::Joined => METRICS.singleflight_joins.inc(),
            Obtained::Fresh => {}
        }
        let body = match result.outcome.as_ref() {
            Ok(ex) => {
                let t = &ex.token;
                let mut v = serde_json::json!({
                    "access_token": t.access_token,
                    "expires_in": t.expires_in,
                    "refresh_token": t.refresh_token,
                    "openid": t.openid,
                    "scope": t.scope,
                });
                if t.is_snapshotuser {
                    v["is_snapshotuser"] = 1.into();
                }
                if let Some(u) = &t.unionid {
                    v["unionid"] = u.clone().into();
                }
                v.to_string()
            }
            Err(ExchangeError::WeChat {
                errcode, errmsg, ..
            }) => wechat_error(*errcode, errmsg),
            Err(_) => wechat_error(-1, "system error"),
        };
        (200, body)
    }
}

#[async_trait::async_trait]
impl ProxyHttp for CompatEndpoint {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().map(str::to_string);
        let method = session.req_header().method.as_str().to_string();
        let mut request_body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if request_body.len() + chunk.len() > MAX_BODY {
                return pingora::Error::e_explain(
                    pingora::ErrorType::HTTPStatus(413),
                    "request body too large",
                );
            }
            request_body.extend_from_slice(&chunk);
        }
        let (status, body) = self
            .answer(&method, &path, query.as_deref(), &request_body)
            .await;
        let mut resp = ResponseHeader::build(status, Some(3))?;
        // WeChat itself labels these answers text/plain; clients parse the body as JSON.
        resp.insert_header(
            http::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        pingora::Error::e_explain(
            pingora::ErrorType::HTTPStatus(404),
            "the compat listener proxies nothing",
        )
    }
}
