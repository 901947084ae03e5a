//! For backends that must keep calling WeChat with the code themselves: a WeChat-compatible
//! `GET /sns/oauth2/access_token` on a private listener. It answers from the edge's code cache
//! (the edge usually redeemed the code a moment earlier, on the page load) and otherwise
//! redeems through the same single-flight exchanger, so the code is used at WeChat only once.
//! Such a backend only changes its API base URL.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

use super::query_param;
use crate::ops::metrics::METRICS;
use crate::wechat::{CodeExchanger, ExchangeError, Obtained};

pub struct CompatEndpoint {
    pub exchanger: Arc<CodeExchanger>,
    pub appid: String,
    pub secret: String,
}

fn wechat_error(code: i64, msg: &str) -> String {
    serde_json::json!({ "errcode": code, "errmsg": msg }).to_string()
}

fn same(a: &str, b: &str) -> bool {
    crate::session::ct_eq(a.as_bytes(), b.as_bytes())
}

impl CompatEndpoint {
    async fn answer(&self, path: &str, query: Option<&str>) -> (u16, String) {
        if path != "/sns/oauth2/access_token" {
            return (
                404,
                wechat_error(
                    40066,
                    "invalid url: only /sns/oauth2/access_token is offered here",
                ),
            );
        }
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
        let (status, body) = self.answer(&path, query.as_deref()).await;
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
