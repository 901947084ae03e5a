//! The edge-started login (`GET /_wxedge/login?return=/path`): a random `state` for WeChat bound
//! to a short-lived, sealed, HttpOnly nonce cookie that also carries the return path.
//!
//! The state is `wxe1` + 32 hex digits (128 random bits; letters and digits only, 36 bytes, within
//! WeChat's 128-byte limit). The cookie holds `{nonce, return path, expiry}` sealed with the
//! session keys under the login cookie's name, so it cannot be forged, read or swapped with the
//! session cookie. `finish_login` accepts the callback only if the state equals the sealed nonce
//! (login-CSRF protection: an attacker cannot make a victim's browser hold the matching cookie).
//!
//! The login relay's own leg to WeChat is bound the same way ([`SessionCodec::new_relay`]): state
//! `wxr1` + 32 hex digits, and the `wxedge_relay` cookie sealing where the browser goes next.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::codec::{cookie_values, SessionCodec, RELAY_COOKIE_NAME};
use super::keys::{open_value, seal_value};
use super::{ct_eq, random_hex, safe_return_path};

/// Life of the login nonce cookie, in seconds.
pub const LOGIN_TTL_SECS: u64 = 600;

const STATE_PREFIX: &str = "wxe1";
const RELAY_STATE_PREFIX: &str = "wxr1";
const STATE_HEX_LEN: usize = 32;

/// What a nonce cookie seals: the state, its expiry, and what the flow must remember.
#[derive(Serialize, Deserialize)]
struct NoncePayload<T> {
    v: u8,
    n: String,
    e: u64,
    #[serde(flatten)]
    data: T,
}

#[derive(Serialize, Deserialize)]
struct ReturnPath {
    r: String,
}

/// Where the login relay sends the browser once WeChat has answered, sealed in the relay cookie.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayBinding {
    /// The target's `redirect_uri`, checked against the allowlist and normalised.
    #[serde(rename = "to")]
    pub redirect_uri: String,
    /// The target's own `state`, handed back unchanged.
    #[serde(rename = "st")]
    pub state: String,
    /// `snsapi_base` or `snsapi_userinfo`.
    #[serde(rename = "s")]
    pub scope: String,
    /// Identity relay (a ticket) rather than code relay.
    #[serde(rename = "t")]
    pub ticket: bool,
}
/// Why a login callback was refused. Show the user a "start again" link, never a retry loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginError {
    /// `state` is missing or not of our format.
    BadState,
    /// No login cookie came with the callback (another browser, cookies blocked, or expired and
    /// deleted by the browser).
    NoCookie,
    /// The login cookie does not open (tampered, foreign key).
    InvalidCookie,
    /// The cookie is fine but was issued for another `state` (another login started later, or a
    /// forged callback).
    StateMismatch,
    /// The login took longer than [`LOGIN_TTL_SECS`].
    Expired,
}

impl LoginError {
    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            LoginError::BadState => "bad_state",
            LoginError::NoCookie => "no_cookie",
            LoginError::InvalidCookie => "invalid_cookie",
            LoginError::StateMismatch => "state_mismatch",
            LoginError::Expired => "expired",
        }
    }
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoginError::BadState => "the login state is missing or malformed",
            LoginError::NoCookie => "the login cookie is missing",
            LoginError::InvalidCookie => "the login cookie is invalid",
            LoginError::StateMismatch => "the login state does not match this browser's login",
            LoginError::Expired => "the login took too long",
        })
    }
}

impl std::error::Error for LoginError {}

/// Whether `state` has the shape of an edge-started login state (`wxe1` + 32 hex digits).
/// Lets the callback handler tell edge-started logins from the frontend's own (constant) states.
pub fn looks_like_login_state(state: &str) -> bool {
    has_state_shape(state, STATE_PREFIX)
}

fn has_state_shape(state: &str, prefix: &str) -> bool {
    state.len() == prefix.len() + STATE_HEX_LEN
        && state.starts_with(prefix)
        && state[prefix.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl SessionCodec {
    /// Starts an edge login: returns the `state` to put in the authorize URL and the `Set-Cookie`
    /// value of the nonce cookie (10 minutes). An unsafe `return_to` is replaced by `/`
    /// (validate with [`safe_return_path`] first if you prefer to refuse it).
    pub fn new_login(&self, return_to: &str, now: u64) -> (String, String) {
        let r = safe_return_path(return_to).unwrap_or_else(|| "/".into());
        self.start_flow(&self.login_cookie_name, STATE_PREFIX, ReturnPath { r }, now)
    }

    /// Checks a login callback's `state` against the nonce cookie; on success the return path
    /// (already safe). Either way, answer with [`clear_login_cookie_header`](Self::clear_login_cookie_header).
    pub fn finish_login<S: AsRef<[u8]>>(
        &self,
        state: &str,
        cookie_header_values: &[S],
        now: u64,
    ) -> Result<String, LoginError> {
        let p: ReturnPath = self.finish_flow(
            &self.login_cookie_name,
            STATE_PREFIX,
            state,
            cookie_header_values,
            now,
        )?;
        // Re-check: the sealed path was checked when sealed, but keys outlive code versions.
        safe_return_path(&p.r).ok_or(LoginError::InvalidCookie)
    }

    /// `Set-Cookie` value deleting the login nonce cookie.
    pub fn clear_login_cookie_header(&self) -> String {
        self.clear_value(&self.login_cookie_name)
    }

    /// Starts the relay's leg to WeChat: its own `state` and the relay cookie (10 minutes).
    pub fn new_relay(&self, binding: &RelayBinding, now: u64) -> (String, String) {
        self.start_flow(RELAY_COOKIE_NAME, RELAY_STATE_PREFIX, binding, now)
    }

    /// Checks the relay callback's `state` against this browser's relay cookie: on success, where
    /// the browser goes next. Either way, answer with [`clear_relay_cookie_header`](Self::clear_relay_cookie_header).
    pub fn finish_relay<S: AsRef<[u8]>>(
        &self,
        state: &str,
        cookie_header_values: &[S],
        now: u64,
    ) -> Result<RelayBinding, LoginError> {
        self.finish_flow(
            RELAY_COOKIE_NAME,
            RELAY_STATE_PREFIX,
            state,
            cookie_header_values,
            now,
        )
    }

    pub fn clear_relay_cookie_header(&self) -> String {
        self.clear_value(RELAY_COOKIE_NAME)
    }

    /// A fresh `prefix` state and the `Set-Cookie` value of `cookie` sealing it with `data`.
    fn start_flow<T: Serialize>(
        &self,
        cookie: &str,
        prefix: &str,
        data: T,
        now: u64,
    ) -> (String, String) {
        let state = format!("{prefix}{}", random_hex(STATE_HEX_LEN / 2));
        let payload = NoncePayload {
            v: 1,
            n: state.clone(),
            e: now.saturating_add(LOGIN_TTL_SECS),
            data,
        };
        let json = serde_json::to_string(&payload).expect("payload serializes");
        let sealed = seal_value(self.keys.sealing(), cookie, &json);
        let header = self.set_cookie_value(cookie, &sealed, LOGIN_TTL_SECS);
        (state, header)
    }

    /// The data sealed with `state` in one of the request's `cookie` cookies.
    fn finish_flow<T: DeserializeOwned, S: AsRef<[u8]>>(
        &self,
        cookie: &str,
        prefix: &str,
        state: &str,
        cookie_header_values: &[S],
        now: u64,
    ) -> Result<T, LoginError> {
        if !has_state_shape(state, prefix) {
            return Err(LoginError::BadState);
        }
        let candidates = cookie_values(cookie_header_values, cookie);
        if candidates.is_empty() {
            return Err(LoginError::NoCookie);
        }
        let mut err = LoginError::InvalidCookie;
        for value in candidates {
            let Some(plain) = open_value(self.keys.all(), cookie, value) else {
                continue;
            };
            let Ok(p) = serde_json::from_str::<NoncePayload<T>>(&plain) else {
                continue;
            };
            if p.v != 1 || !ct_eq(p.n.as_bytes(), state.as_bytes()) {
                err = LoginError::StateMismatch;
                continue;
            }
            if now >= p.e {
                err = LoginError::Expired;
                continue;
            }
            return Ok(p.data);
        }
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionKeys;
    use std::time::Duration;

    const NOW: u64 = 1_700_000_000;

    fn codec(secret: char) -> SessionCodec {
        let keys = SessionKeys::from_secrets(&[secret.to_string().repeat(40)]).unwrap();
        SessionCodec::new(keys, "wxedge_session", Duration::from_secs(3600), true)
    }

    fn cookie_of(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn login_roundtrip() {
        let c = codec('k');
        let (state, set) = c.new_login("/pages/a?b=1#/x", NOW);
        assert!(state.len() <= 128);
        assert!(state.bytes().all(|b| b.is_ascii_alphanumeric()), "{state}");
        assert!(looks_like_login_state(&state));
        assert!(set.starts_with("wxedge_login="));
        assert!(
            set.contains("; HttpOnly")
                && set.contains("; Max-Age=600")
                && set.contains("; SameSite=Lax")
        );
        assert!(!set.contains("pages"), "return path must be sealed: {set}");
        let h = format!("other=1; {}", cookie_of(&set));
        assert_eq!(
            c.finish_login(&state, &[h.as_str()], NOW + 30),
            Ok("/pages/a?b=1#/x".to_string())
        );
        // Two logins give different states.
        let (state2, _) = c.new_login("/", NOW);
        assert_ne!(state, state2);
    }

    #[test]
    fn login_refusals() {
        let c = codec('k');
        let (state, set) = c.new_login("/home", NOW);
        let h = cookie_of(&set);
        let hs = [h.as_str()];

        let (other_state, _) = c.new_login("/home", NOW);
        assert_eq!(
            c.finish_login(&other_state, &hs, NOW),
            Err(LoginError::StateMismatch)
        );
        assert_eq!(c.finish_login("STATE", &hs, NOW), Err(LoginError::BadState));
        assert_eq!(c.finish_login("", &hs, NOW), Err(LoginError::BadState));
        let upper = state.to_uppercase().replacen("WXE", "wxe", 1);
        assert_eq!(c.finish_login(&upper, &hs, NOW), Err(LoginError::BadState));
        assert_eq!(
            c.finish_login(&state, &["a=1"], NOW),
            Err(LoginError::NoCookie)
        );
        assert_eq!(
            c.finish_login(&state, &hs, NOW + LOGIN_TTL_SECS),
            Err(LoginError::Expired)
        );
        assert_eq!(
            codec('z').finish_login(&state, &hs, NOW),
            Err(LoginError::InvalidCookie)
        );
        let mut t = h.clone().into_bytes();
        let mid = t.len() / 2;
        t[mid] = if t[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(t).unwrap();
        assert_eq!(
            c.finish_login(&state, &[tampered.as_str()], NOW),
            Err(LoginError::InvalidCookie)
        );
        // A session cookie's value presented as the login cookie does not open (name-bound seal).
        let (_, sess) = c.issue(
            &crate::session::Identity {
                openid: "o1".into(),
                unionid: None,
                scope: "snsapi_base".into(),
                snapshot: false,
                nickname: None,
                avatar: None,
            },
            NOW,
        );
        let v = cookie_of(&sess).split_once('=').unwrap().1.to_string();
        let swapped = format!("wxedge_login={v}");
        assert_eq!(
            c.finish_login(&state, &[swapped.as_str()], NOW),
            Err(LoginError::InvalidCookie)
        );
        // The good cookie still works alongside a bad one.
        let both = format!("wxedge_login=junk; {h}");
        assert_eq!(
            c.finish_login(&state, &[both.as_str()], NOW),
            Ok("/home".into())
        );
        assert!(c.clear_login_cookie_header().starts_with("wxedge_login=;"));
    }

    #[test]
    fn unsafe_return_becomes_root() {
        let c = codec('k');
        for bad in ["//evil.com", "https://evil.com", "/%2f%2fevil", ""] {
            let (state, set) = c.new_login(bad, NOW);
            let h = cookie_of(&set);
            assert_eq!(
                c.finish_login(&state, &[h.as_str()], NOW),
                Ok("/".into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn relay_binding_roundtrip_and_refusals() {
        let c = codec('k');
        let binding = RelayBinding {
            redirect_uri: "https://shop.example.com/_wxedge/callback".into(),
            state: "wxe1abc".into(),
            scope: "snsapi_base".into(),
            ticket: true,
        };
        let (state, set) = c.new_relay(&binding, NOW);
        assert!(state.starts_with("wxr1") && state.len() == 36, "{state}");
        assert!(
            set.starts_with("wxedge_relay=") && !set.contains("shop"),
            "{set}"
        );
        let h = cookie_of(&set);
        assert_eq!(c.finish_relay(&state, &[h.as_str()], NOW + 5), Ok(binding));
        // Another relay login's state, a login state, an expired or missing cookie.
        let (other, _) = c.new_relay(
            &RelayBinding {
                ticket: false,
                ..c.finish_relay(&state, &[h.as_str()], NOW).unwrap()
            },
            NOW,
        );
        assert_eq!(
            c.finish_relay(&other, &[h.as_str()], NOW),
            Err(LoginError::StateMismatch)
        );
        let login_state = format!("wxe1{}", &state[4..]);
        assert_eq!(
            c.finish_relay(&login_state, &[h.as_str()], NOW),
            Err(LoginError::BadState)
        );
        assert_eq!(
            c.finish_relay(&state, &[h.as_str()], NOW + LOGIN_TTL_SECS),
            Err(LoginError::Expired)
        );
        assert_eq!(
            c.finish_relay(&state, &["a=1"], NOW),
            Err(LoginError::NoCookie)
        );
        // A login cookie's value under the relay cookie's name does not open (name-bound seal).
        let (lstate, lset) = c.new_login("/", NOW);
        let swapped = format!(
            "wxedge_relay={}",
            cookie_of(&lset).split_once('=').unwrap().1
        );
        assert_eq!(
            c.finish_relay(&format!("wxr1{}", &lstate[4..]), &[swapped.as_str()], NOW),
            Err(LoginError::InvalidCookie)
        );
        assert!(c.clear_relay_cookie_header().starts_with("wxedge_relay=;"));
    }

    #[test]
    fn error_labels_and_display() {
        assert_eq!(LoginError::StateMismatch.label(), "state_mismatch");
        assert!(LoginError::Expired.to_string().contains("too long"));
    }
}
