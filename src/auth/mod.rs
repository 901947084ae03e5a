//! WeChat login at the edge, glued to the request phases: callback interception, the
//! `/_wxedge/*` login endpoints, the sandbox, and which identity goes upstream.
//! The building blocks live in `session` (cookies) and `wechat` (provider).

use bytes::Bytes;
use http::HeaderValue;
use pingora::prelude::*;
use pingora_proxy::Session;

use crate::edge::RequestCtx;
use crate::ops::RouteClass;
use crate::proxy::headers::canonical;

/// Header names the edge sets for the backend (configurable).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub openid: String,
    pub unionid: String,
    pub scope: String,
    pub snapshot: String,
    pub nickname: String,
    pub avatar: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            openid: "X-WX-OpenID".into(),
            unionid: "X-WX-UnionID".into(),
            scope: "X-WX-Scope".into(),
            snapshot: "X-WX-Snapshot".into(),
            nickname: "X-WX-Nickname".into(),
            avatar: "X-WX-Avatar".into(),
        }
    }
}

pub enum AuthAction {
    /// The auth layer answered the request itself.
    Responded(RouteClass),
    /// Go on; these are the identity headers for the backend and the Cookie header to forward
    /// (`None` = unchanged, `Some(None)` = remove it).
    Continue {
        identity_headers: Vec<(String, HeaderValue)>,
        upstream_cookie: Option<Option<String>>,
    },
}

pub struct Auth {
    headers: IdentityHeaders,
}

impl Auth {
    pub fn disabled() -> Auth {
        Auth {
            headers: IdentityHeaders::default(),
        }
    }

    pub fn from_config(_config: &crate::config::Config) -> Result<Auth, String> {
        Ok(Auth::disabled())
    }

    /// Start-up log lines.
    pub fn describe(&self) -> Vec<String> {
        vec!["wechat: login at the edge is off".into()]
    }

    /// Every name a client must never be able to send upstream, in canonical spelling.
    pub fn protected_header_names(&self) -> Vec<String> {
        let h = &self.headers;
        [
            &h.openid,
            &h.unionid,
            &h.scope,
            &h.snapshot,
            &h.nickname,
            &h.avatar,
        ]
        .iter()
        .map(|n| canonical(n))
        .collect()
    }

    pub async fn request_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<AuthAction> {
        Ok(AuthAction::Continue {
            identity_headers: vec![],
            upstream_cookie: None,
        })
    }

    pub fn require_session_refusal(&self, _session: &Session, _ctx: &RequestCtx) -> Option<u16> {
        None
    }

    pub fn unauthorized_body(&self, _session: &Session) -> Bytes {
        crate::edge::json_error("unauthorized", "no WeChat session")
    }
}
