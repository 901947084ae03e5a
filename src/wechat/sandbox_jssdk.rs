//! The sandbox's JS-SDK half: WeChat's account credentials and a stand-in for its JS-SDK
//! script, so a page that signs `wx.config` can be tried with no WeChat account.
//!
//! * `POST /cgi-bin/stable_token`: the account's global token in normal mode, as WeChat hands
//!   it out: the same token while it is valid, `expires_in` its time left, the next one in its
//!   last 5 minutes (both valid until each ends). The sandbox answers before request bodies are
//!   read, so the JSON body (appid, secret) is not checked here; `tests/common/wechat.rs` checks
//!   it against the real wire format.
//! * `GET /cgi-bin/ticket/getticket?access_token=..&type=jsapi`: 40001 for a token it did not
//!   hand out (or an ended one), 40097 for another `type`; the same ticket while it is valid,
//!   with `expires_in: 7200` whatever is left (as WeChat answers).
//! * `GET /jweixin.js`: the stand-in script. Its `wx.config` asks `GET /jssdk/verify` with what
//!   the page passed and `location.href.split('#')[0]`, and fires `wx.ready` (once, however often
//!   config is called) or `wx.error({errMsg: 'config:invalid signature'})`, as WeChat does.

use std::sync::Mutex;

use serde_json::json;

/// The account token's life (WeChat: 7200 s).
const TOKEN_TTL: u64 = 7200;
/// In its last this many seconds a token is handed over to the next one.
const HANDOVER: u64 = 300;
const TICKET_TTL: u64 = 7200;

#[derive(Clone)]
struct Issued {
    value: String,
    ends: u64,
}

#[derive(Default)]
struct State {
    /// The current token and the one before it (valid until it ends).
    token: Option<Issued>,
    previous_token: Option<Issued>,
    ticket: Option<Issued>,
    previous_ticket: Option<Issued>,
    token_calls: u64,
    ticket_calls: u64,
}

/// What the JS-SDK half answers: a status, a content type and a body.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

pub struct SandboxJsSdk {
    appid: String,
    state: Mutex<State>,
}

fn valid(i: &Option<Issued>, value: &str, now: u64) -> bool {
    i.as_ref().is_some_and(|i| i.value == value && now < i.ends)
}

impl SandboxJsSdk {
    pub fn new(appid: &str) -> SandboxJsSdk {
        SandboxJsSdk {
            appid: appid.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many token and ticket requests were answered.
    #[cfg(test)]
    pub fn calls(&self) -> (u64, u64) {
        let st = self.state();
        (st.token_calls, st.ticket_calls)
    }

    /// `None`: not a JS-SDK path.
    pub fn handle(
        &self,
        method: &str,
        path: &str,
        q: &std::collections::HashMap<String, String>,
        now: u64,
        mint: impl Fn() -> String,
        error: impl Fn(i64, &str) -> String,
    ) -> Option<Answer> {
        let api = |body: String| Answer {
            status: 200,
            content_type: "text/plain",
            body,
        };
        Some(match (method, path) {
            ("POST", "/cgi-bin/stable_token") => api(self.stable_token(now, &mint)),
            ("GET" | "POST", "/cgi-bin/ticket/getticket") => {
                api(self.getticket(q, now, &mint, &error))
            }
            ("GET", "/jssdk/verify") => Answer {
                status: 200,
                content_type: "application/json",
                body: self.verify(q, now),
            },
            ("GET", "/jweixin.js") => Answer {
                status: 200,
                content_type: "application/javascript; charset=utf-8",
                body: STAND_IN_SCRIPT.to_string(),
            },
            (
                _,
                "/cgi-bin/stable_token"
                | "/cgi-bin/ticket/getticket"
                | "/jssdk/verify"
                | "/jweixin.js",
            ) => Answer {
                status: 405,
                content_type: "text/plain",
                body: "method not allowed".into(),
            },
            _ => return None,
        })
    }

    fn stable_token(&self, now: u64, mint: &impl Fn() -> String) -> String {
        let mut st = self.state();
        st.token_calls += 1;
        let current = st.token.clone().filter(|t| now + HANDOVER < t.ends);
        let token = match current {
            Some(t) => t,
            None => {
                let next = Issued {
                    value: format!("SBXTOKEN{}", mint()),
                    ends: now + TOKEN_TTL,
                };
                st.previous_token = st.token.take().filter(|t| now < t.ends);
                st.token = Some(next.clone());
                next
            }
        };
        json!({ "access_token": token.value, "expires_in": token.ends - now }).to_string()
    }

    fn getticket(
        &self,
        q: &std::collections::HashMap<String, String>,
        now: u64,
        mint: &impl Fn() -> String,
        error: &impl Fn(i64, &str) -> String,
    ) -> String {
        let mut st = self.state();
        st.ticket_calls += 1;
        let token = q.get("access_token").map(String::as_str).unwrap_or("");
        if token.is_empty() {
            return error(41001, "access_token missing");
        }
        if !valid(&st.token, token, now) && !valid(&st.previous_token, token, now) {
            return error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            );
        }
        if q.get("type").map(String::as_str) != Some("jsapi") {
            return error(40097, "invalid args");
        }
        let ticket = match st.ticket.clone().filter(|t| now < t.ends) {
            Some(t) => t,
            None => {
                let next = Issued {
                    value: format!("SBXTICKET{}", mint()),
                    ends: now + TICKET_TTL,
                };
                st.previous_ticket = st.ticket.take();
                st.ticket = Some(next.clone());
                next
            }
        };
        json!({ "errcode": 0, "errmsg": "ok", "ticket": ticket.value, "expires_in": TICKET_TTL })
            .to_string()
    }

    /// What the stand-in script's `wx.config` learns: `config:ok` when the signature is the
    /// one WeChat would compute for that URL with a ticket it handed out and that is valid.
    fn verify(&self, q: &std::collections::HashMap<String, String>, now: u64) -> String {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        let st = self.state();
        let timestamp = get("timestamp").parse::<u64>().ok();
        let ok = get("appId") == self.appid
            && timestamp.is_some_and(|ts| {
                [&st.ticket, &st.previous_ticket]
                    .into_iter()
                    .flatten()
                    .filter(|t| now < t.ends)
                    .any(|t| {
                        super::jssdk::sign(&t.value, get("nonceStr"), ts, get("url"))
                            == get("signature")
                    })
            });
        let msg = if ok {
            "config:ok"
        } else {
            "config:invalid signature"
        };
        json!({ "errMsg": msg }).to_string()
    }
}

/// A stand-in for `jweixin-1.6.0.js`: `wx.config`, `wx.ready`, `wx.error`, and a few APIs that
/// report success, enough for a page's start-up code.
const STAND_IN_SCRIPT: &str = r#"/* wxedge sandbox: a stand-in for WeChat's JS-SDK (jweixin-1.6.0.js). Not WeChat's code. */
(function () {
  var script = document.currentScript;
  var base = script && script.src ? script.src.replace(/\/jweixin\.js(\?.*)?$/, '') : '/_wxedge/sandbox';
  var readyFns = [], errorFns = [], ready = false, failed = null;
  function call(f, arg) { try { f(arg); } catch (e) { setTimeout(function () { throw e; }); } }
  function ok(o, name) { if (o && o.success) call(o.success, { errMsg: name + ':ok' }); if (o && o.complete) call(o.complete, { errMsg: name + ':ok' }); }
  var wx = {
    config: function (c) {
      c = c || {};
      var q = ['appId', 'timestamp', 'nonceStr', 'signature'].map(function (k) {
        return k + '=' + encodeURIComponent(c[k] === undefined ? '' : String(c[k]));
      });
      q.push('url=' + encodeURIComponent(location.href.split('#')[0]));
      fetch(base + '/jssdk/verify?' + q.join('&')).then(function (r) { return r.json(); }).then(function (v) {
        if (v.errMsg === 'config:ok') {
          failed = null;
          if (!ready) { ready = true; readyFns.splice(0).forEach(function (f) { call(f); }); }
        } else {
          failed = { errMsg: v.errMsg };
          errorFns.forEach(function (f) { call(f, failed); });
        }
        if (c.debug) { console.log('wx.config', v.errMsg); }
      }, function () {
        failed = { errMsg: 'config:fail' };
        errorFns.forEach(function (f) { call(f, failed); });
      });
    },
    ready: function (f) { if (ready) call(f); else readyFns.push(f); },
    error: function (f) { errorFns.push(f); if (failed) call(f, failed); },
    checkJsApi: function (o) {
      var res = {};
      ((o && o.jsApiList) || []).forEach(function (n) { res[n] = true; });
      if (o && o.success) call(o.success, { checkResult: res, errMsg: 'checkJsApi:ok' });
    },
    updateAppMessageShareData: function (o) { ok(o, 'updateAppMessageShareData'); },
    updateTimelineShareData: function (o) { ok(o, 'updateTimelineShareData'); },
    hideMenuItems: function (o) { ok(o, 'hideMenuItems'); },
    closeWindow: function () {}
  };
  window.wx = window.jWeixin = wx;
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tokens_and_tickets_live_as_wechat_hands_them_out() {
        let s = SandboxJsSdk::new("wxsbx");
        let n = std::sync::atomic::AtomicU64::new(0);
        let mint = || {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_string()
        };
        let err = |c: i64, m: &str| json!({"errcode": c, "errmsg": m}).to_string();
        let call = |m: &str, p: &str, q: &HashMap<String, String>, now: u64| {
            let a = s.handle(m, p, q, now, mint, err).unwrap();
            serde_json::from_str::<serde_json::Value>(&a.body).unwrap()
        };
        let t1 = call("POST", "/cgi-bin/stable_token", &q(&[]), 1000);
        assert_eq!(t1["expires_in"], 7200);
        // The same token while valid, with its time left.
        let again = call("POST", "/cgi-bin/stable_token", &q(&[]), 2000);
        assert_eq!(
            (again["access_token"].clone(), again["expires_in"].clone()),
            (t1["access_token"].clone(), 6200.into())
        );
        // In its last 5 minutes: the next one; the old one still works until it ends.
        let t2 = call("POST", "/cgi-bin/stable_token", &q(&[]), 1000 + 7200 - 100);
        assert_ne!(t2["access_token"], t1["access_token"]);
        let old = t1["access_token"].as_str().unwrap();
        let tk = call(
            "GET",
            "/cgi-bin/ticket/getticket",
            &q(&[("access_token", old), ("type", "jsapi")]),
            8150,
        );
        assert_eq!(tk["errcode"], 0);
        assert_eq!(tk["expires_in"], 7200);
        let stale = call(
            "GET",
            "/cgi-bin/ticket/getticket",
            &q(&[("access_token", old), ("type", "jsapi")]),
            8300,
        );
        assert_eq!(stale["errcode"], 40001);
        // The same ticket, whatever token asks, while it is valid.
        let new = t2["access_token"].as_str().unwrap();
        let tk2 = call(
            "GET",
            "/cgi-bin/ticket/getticket",
            &q(&[("access_token", new), ("type", "jsapi")]),
            8300,
        );
        assert_eq!(tk2["ticket"], tk["ticket"]);
        // Signatures made with it verify; another URL does not.
        let ticket = tk["ticket"].as_str().unwrap();
        let url = "http://h5.test/pages/a?x=1";
        let sig = crate::wechat::jssdk::sign(ticket, "nonce", 8300, url);
        let verify = |u: &str| {
            call(
                "GET",
                "/jssdk/verify",
                &q(&[
                    ("appId", "wxsbx"),
                    ("timestamp", "8300"),
                    ("nonceStr", "nonce"),
                    ("signature", &sig),
                    ("url", u),
                ]),
                8301,
            )["errMsg"]
                .clone()
        };
        assert_eq!(verify(url), "config:ok");
        assert_eq!(verify("http://h5.test/pages/b"), "config:invalid signature");
        assert_eq!(s.calls(), (3, 3));
    }
}
