//! The login relay (授权中转). WeChat sends codes only to `redirect_uri`s on the account's
//! authorized domains (two at most), so the edge that owns one logs users in for other sites.
//!
//! On the relay edge (`wechat.relay_targets`):
//! * `GET /_wxedge/relay/authorize?redirect_uri=URL&state=S[&scope=][&appid=][&mode=code|ticket]`:
//!   URL must be on an allowlisted origin. The browser goes to WeChat with the relay's own
//!   callback and a fresh state, bound to a sealed `wxedge_relay` cookie that holds URL and S, so
//!   a callback can only continue to the target this browser asked for.
//! * `GET /_wxedge/relay/callback?code=C&state=N`: N must match this browser's relay cookie.
//!   Code relay: on to `URL?code=C&state=S`. Identity relay: C is redeemed here and the target
//!   gets `URL?ticket=T&state=S` instead; the code never leaves the authorized domain.
//!
//! On a target edge (`wechat.relay_url`): the edge-started login authorizes through the relay,
//! and `GET /_wxedge/relay/ticket?ticket=T&state=S` turns a ticket into this site's session.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::{
    page_reply, pages, query_param, redirect_reply, AuthRequest, Login, Reply, SetCookies,
};
use crate::config::WechatSettings;
use crate::ops::metrics::METRICS;
use crate::ops::RouteClass;
use crate::session::{
    allowed_redirect, Origin, RelayBinding, SessionKeys, SpentTickets, TicketCodec, TicketError,
};

/// How a target site's logins go through the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The target gets the code and redeems it itself.
    Code,
    /// The relay redeems the code; the target gets a sealed ticket.
    Ticket,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Code => "code",
            Mode::Ticket => "ticket",
        }
    }

    fn of(ticket: bool) -> Mode {
        if ticket {
            Mode::Ticket
        } else {
            Mode::Code
        }
    }
}

/// The relay settings of one edge: either side, or both.
pub(super) struct Relay {
    /// Relay side: the exact origins it logs users in for.
    targets: Vec<Origin>,
    /// The key shared with the other edge, for tickets (identity relay).
    tickets: Option<TicketCodec>,
    spent: Arc<dyn SpentTickets>,
    /// Target side: the relay edge's origin and the mode of this site's logins.
    via: Option<(Origin, Mode)>,
    /// Target side, identity relay: this site's origin, which its tickets must name.
    audience: Option<Origin>,
}

fn count(mode: &str, result: &str) {
    METRICS
        .relay_logins
        .with_label_values(&[mode, result])
        .inc();
}

fn enc(v: &str) -> String {
    utf8_percent_encode(v, NON_ALPHANUMERIC).to_string()
}

/// `url` (no fragment: the allowlist check refused them) with `params` added to its query.
fn with_params(url: &str, params: &[(&str, &str)]) -> String {
    let mut out = url.to_string();
    for (i, (k, v)) in params.iter().enumerate() {
        let sep = if i > 0 || url.contains('?') { '&' } else { '?' };
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(&enc(v));
    }
    out
}

/// The relay's answers: their own route class, and a referrer that never carries a code or ticket.
fn relay_reply(mut r: Reply) -> Reply {
    r.class = RouteClass::Relay;
    r.with(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    )
}

/// WeChat's rule for `state`: letters and digits, at most 128 bytes.
fn wechat_state(s: &str) -> bool {
    s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Relay {
    /// `spent` records used tickets: this process's own, or Redis shared by the replicas.
    pub(super) fn from_config(
        w: &WechatSettings,
        session_keys: &[String],
        spent: Arc<dyn SpentTickets>,
    ) -> Result<Relay, String> {
        let targets = w
            .relay_targets
            .iter()
            .map(|t| {
                Origin::parse(t).ok_or_else(|| {
                    format!("wechat.relay_targets: `{t}` is not an origin such as https://shop.example.com (scheme, host and port only)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tickets = if w.relay_key.is_empty() {
            None
        } else {
            // Every site holding the relay key can mint logins for the others: never the
            // session key, which only this site's replicas may hold.
            if w.relay_key
                .iter()
                .any(|k| session_keys.iter().any(|s| s.trim() == k.trim()))
            {
                return Err("wechat.relay_key: must differ from session.keys".into());
            }
            let keys = SessionKeys::from_secrets(&w.relay_key)
                .map_err(|e| format!("wechat.relay_key: {e}"))?;
            Some(TicketCodec::new(keys))
        };
        let via = match (w.relay_url.as_str(), w.relay_mode.as_str()) {
            ("", "") => None,
            ("", _) => return Err("wechat.relay_mode: set, but wechat.relay_url is not".into()),
            (url, mode) => {
                let base = Origin::parse(url).ok_or_else(|| {
                    format!("wechat.relay_url: `{url}` is not an origin such as https://auth.example.com")
                })?;
                let mode = match mode {
                    "" | "ticket" => Mode::Ticket,
                    "code" => Mode::Code,
                    m => return Err(format!("wechat.relay_mode: `{m}` must be ticket or code")),
                };
                Some((base, mode))
            }
        };
        let audience = match via {
            Some((_, Mode::Ticket)) => {
                if tickets.is_none() {
                    return Err("wechat.relay_mode ticket (the default) needs wechat.relay_key (WXEDGE_RELAY_KEY), the key shared with the relay edge; or relay_mode code".into());
                }
                Some(Origin::parse(&w.public_url).ok_or(
                    "wechat.relay_mode ticket needs wechat.public_url (WXEDGE_PUBLIC_URL): this site's origin, which its tickets must name",
                )?)
            }
            _ => None,
        };
        Ok(Relay {
            targets,
            tickets,
            spent,
            via,
            audience,
        })
    }

    /// Start-up log lines.
    pub(super) fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.targets.is_empty() {
            let list: Vec<&str> = self.targets.iter().map(Origin::as_str).collect();
            lines.push(format!(
                "wechat: login relay for {}{}",
                list.join(", "),
                if self.tickets.is_some() {
                    " (code and ticket)"
                } else {
                    " (code only: no relay_key)"
                }
            ));
        }
        if let Some((base, mode)) = &self.via {
            lines.push(format!(
                "wechat: logins go through the relay at {base} ({} mode)",
                mode.label()
            ));
        }
        lines
    }
}

impl Login {
    /// Where an edge-started login sends the browser when it goes through a relay.
    pub(super) fn relay_authorize_url(&self, origin: &str, state: &str) -> Option<String> {
        let (base, mode) = self.relay.via.as_ref()?;
        let back = match mode {
            Mode::Code => "/_wxedge/callback",
            Mode::Ticket => "/_wxedge/relay/ticket",
        };
        Some(with_params(
            &format!("{base}/_wxedge/relay/authorize"),
            &[
                ("appid", &self.provider.appid),
                ("redirect_uri", &format!("{origin}{back}")),
                ("response_type", "code"),
                ("scope", &self.provider.scope),
                ("state", state),
                ("mode", mode.label()),
            ],
        ))
    }

    /// `/_wxedge/relay/*`; `None` when this edge does not serve that endpoint.
    pub(super) async fn relay_endpoint(
        &self,
        req: &AuthRequest<'_>,
        name: &str,
        now: u64,
        out: &mut SetCookies,
    ) -> Option<Reply> {
        let relaying = !self.relay.targets.is_empty();
        let reply = match name {
            "authorize" if relaying => self.relay_authorize(req, now, out),
            "callback" if relaying => self.relay_callback(req, now, out).await,
            "ticket" => match (&self.relay.tickets, &self.relay.audience) {
                (Some(tickets), Some(audience)) => {
                    self.relay_ticket(req, tickets, audience, now, out).await
                }
                _ => return None,
            },
            _ => return None,
        };
        Some(relay_reply(reply))
    }

    fn relay_refused(&self, req: &AuthRequest, mode: &str, label: &str, back: &str) -> Reply {
        log::info!("login relay refused a request: {label}");
        count(mode, label);
        page_reply(400, pages::error_page(label, back, req.request_id))
    }

    /// `/_wxedge/relay/authorize`: check the target, bind it to this browser, go to WeChat.
    fn relay_authorize(&self, req: &AuthRequest, now: u64, out: &mut SetCookies) -> Reply {
        let param = |k: &str| query_param(req.query, k);
        let mode = match param("mode").as_deref() {
            None | Some("") | Some("code") => Mode::Code,
            Some("ticket") if self.relay.tickets.is_some() => Mode::Ticket,
            Some(_) => return self.relay_refused(req, "unknown", "relay_request", "/"),
        };
        let Some((_, redirect_uri)) =
            param("redirect_uri").and_then(|r| allowed_redirect(&r, &self.relay.targets))
        else {
            return self.relay_refused(req, mode.label(), "relay_target", "/");
        };
        let state = param("state").unwrap_or_default();
        let scope = param("scope").unwrap_or_else(|| self.provider.scope.clone());
        // A code for another account's appid would be useless to the target.
        let appid_ok = param("appid").is_none_or(|a| a == self.provider.appid);
        if !wechat_state(&state)
            || !matches!(scope.as_str(), "snsapi_base" | "snsapi_userinfo")
            || !appid_ok
        {
            return self.relay_refused(req, mode.label(), "relay_request", "/");
        }
        let binding = RelayBinding {
            redirect_uri,
            state,
            scope,
            ticket: mode == Mode::Ticket,
        };
        let (relay_state, cookie) = self.codec.new_relay(&binding, now);
        out.push(cookie);
        let callback = format!("{}/_wxedge/relay/callback", self.origin(req));
        redirect_reply(crate::wechat::authorize_url(
            &self.provider.open_base,
            &self.provider.appid,
            &callback,
            &binding.scope,
            &relay_state,
        ))
    }

    /// `/_wxedge/relay/callback`: WeChat's answer, passed on to the target this browser asked for.
    async fn relay_callback(&self, req: &AuthRequest<'_>, now: u64, out: &mut SetCookies) -> Reply {
        let state = query_param(req.query, "state").unwrap_or_default();
        let b = match self.codec.finish_relay(&state, &req.cookies, now) {
            Ok(b) => b,
            Err(e) => {
                log::info!("login relay callback refused: {}", e.label());
                count("unknown", "state");
                return page_reply(400, pages::error_page("state", "/", req.request_id));
            }
        };
        out.push(self.codec.clear_relay_cookie_header());
        let mode = Mode::of(b.ticket);
        // Checked again: the allowlist may have changed since the cookie was sealed.
        let Some((audience, _)) = allowed_redirect(&b.redirect_uri, &self.relay.targets) else {
            return self.relay_refused(req, mode.label(), "relay_target", "/");
        };
        let code = query_param(req.query, "code").unwrap_or_default();
        if code.is_empty() {
            // The user refused (snsapi_userinfo): the target learns it as from WeChat, no code.
            count(mode.label(), "denied");
            return redirect_reply(with_params(&b.redirect_uri, &[("state", &b.state)]));
        }
        if mode == Mode::Code {
            count(mode.label(), "code_sent");
            return redirect_reply(with_params(
                &b.redirect_uri,
                &[("code", &code), ("state", &b.state)],
            ));
        }
        // The relay key was removed since this login started.
        let Some(tickets) = &self.relay.tickets else {
            return self.relay_refused(req, mode.label(), "relay_request", "/");
        };
        match self.redeem(&code).await {
            Ok(identity) => {
                let ticket = tickets.seal(&identity, &audience, &b.state, now);
                count(mode.label(), "ticket_sent");
                redirect_reply(with_params(
                    &b.redirect_uri,
                    &[("ticket", &ticket), ("state", &b.state)],
                ))
            }
            Err((label, _)) if label == super::BUSY => super::busy_reply(req, out),
            Err((label, req_id)) => {
                log::warn!(
                    "wechat code exchange failed on the login relay: errcode {label}{}",
                    req_id.map(|r| format!(" (req_id {r})")).unwrap_or_default()
                );
                count(mode.label(), "exchange_failed");
                // Start over at the relay, for the same target and the same login there.
                let retry = with_params(
                    "/_wxedge/relay/authorize",
                    &[
                        ("redirect_uri", &b.redirect_uri),
                        ("state", &b.state),
                        ("scope", &b.scope),
                        ("mode", mode.label()),
                    ],
                );
                super::login_failed_page(&label, &retry, req.request_id)
            }
        }
    }

    /// `/_wxedge/relay/ticket` on a target edge: this browser's login, completed by a ticket.
    async fn relay_ticket(
        &self,
        req: &AuthRequest<'_>,
        tickets: &TicketCodec,
        audience: &Origin,
        now: u64,
        out: &mut SetCookies,
    ) -> Reply {
        let state = query_param(req.query, "state").unwrap_or_default();
        let to = match self.codec.finish_login(&state, &req.cookies, now) {
            Ok(to) => to,
            Err(e) => {
                log::info!("relay ticket refused: login {}", e.label());
                count("ticket", "state");
                let page = pages::error_page("state", "/_wxedge/login?return=/", req.request_id);
                return page_reply(400, page);
            }
        };
        out.push(self.codec.clear_login_cookie_header());
        let raw = query_param(req.query, "ticket").unwrap_or_default();
        let opened = tickets.open(&raw, audience, &state, now);
        let result = match opened {
            Ok(t) if self.relay.spent.first_use(&t.id, t.expires_at, now).await => Ok(t.identity),
            Ok(t) => {
                // WeChat's browser may load this URL twice: the first load's session is enough.
                let current = self.codec.open_from_cookie_header(&req.cookies, now);
                if current.is_some_and(|s| s.identity.openid == t.identity.openid) {
                    count("ticket", "replayed_same_session");
                    return redirect_reply(to);
                }
                Err(TicketError::Replayed)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(identity) => {
                count("ticket", "accepted");
                let (_s, set) = self.codec.issue(&identity, now);
                out.push(set);
                redirect_reply(to)
            }
            Err(e) => {
                log::info!("relay ticket refused: {}", e.label());
                count("ticket", e.label());
                let status = match e {
                    TicketError::Audience => 403,
                    TicketError::Expired | TicketError::Replayed => 410,
                    TicketError::Invalid | TicketError::State => 400,
                };
                let retry = format!("/_wxedge/login?return={}", enc(&to));
                page_reply(status, pages::error_page(e.label(), &retry, req.request_id))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Arc<dyn SpentTickets> {
        Arc::new(crate::session::MemorySpentTickets::default())
    }

    #[test]
    fn params_are_appended_encoded() {
        assert_eq!(
            with_params("https://a.example/p", &[("code", "c+1"), ("state", "S")]),
            "https://a.example/p?code=c%2B1&state=S"
        );
        assert_eq!(
            with_params("https://a.example/p?x=1", &[("state", "")]),
            "https://a.example/p?x=1&state="
        );
    }

    #[test]
    fn state_rule() {
        assert!(wechat_state("STATE") && wechat_state("") && wechat_state(&"a".repeat(128)));
        assert!(!wechat_state(&"a".repeat(129)) && !wechat_state("a b") && !wechat_state("a&b=c"));
    }

    fn settings(pairs: &[(&str, &str)]) -> WechatSettings {
        let mut w = WechatSettings::default();
        for (k, v) in pairs {
            let list = || v.split(',').map(String::from).collect::<Vec<_>>();
            match *k {
                "targets" => w.relay_targets = list(),
                "key" => w.relay_key = list(),
                "url" => w.relay_url = v.to_string(),
                "mode" => w.relay_mode = v.to_string(),
                "public" => w.public_url = v.to_string(),
                _ => unreachable!(),
            }
        }
        w
    }

    #[test]
    fn settings_are_checked() {
        let key = "k".repeat(40);
        let ok = |p: &[(&str, &str)]| Relay::from_config(&settings(p), &[], memory()).map(|_| ());
        assert!(ok(&[]).is_ok());
        assert!(ok(&[("targets", "https://a.example,http://127.0.0.1:81")]).is_ok());
        assert!(ok(&[("url", "https://auth.example"), ("mode", "code")]).is_ok());
        assert!(ok(&[
            ("url", "https://auth.example"),
            ("key", &key),
            ("public", "https://a.example")
        ])
        .is_ok());
        for (p, needle) in [
            (vec![("targets", "https://a.example/x")], "relay_targets"),
            (vec![("targets", "a.example")], "relay_targets"),
            (vec![("url", "https://auth.example")], "relay_key"),
            (
                vec![("url", "https://auth.example"), ("key", &key)],
                "public_url",
            ),
            (vec![("url", "auth.example"), ("mode", "code")], "relay_url"),
            (
                vec![("url", "https://auth.example"), ("mode", "x")],
                "relay_mode",
            ),
            (vec![("mode", "code")], "relay_url"),
            (vec![("key", "short")], "relay_key"),
        ] {
            let e = ok(&p).unwrap_err();
            assert!(e.contains(needle), "{p:?}: {e}");
        }
        let e = Relay::from_config(
            &settings(&[("key", &key)]),
            std::slice::from_ref(&key),
            memory(),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(e.contains("differ"), "{e}");
    }
}
