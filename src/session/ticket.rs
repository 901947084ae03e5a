//! The identity relay's ticket: who logged in at the relay edge, sealed for one target edge.
//!
//! AES-256-GCM under the key the two edges share (`wechat.relay_key`; the cookie crate's private
//! format, bound to the name `wxedge_ticket` as associated data so no cookie opens as a ticket).
//! It names its audience (the target's exact origin), the `state` of the target's own login (so
//! it completes only the login this browser started there), a random id (single use, through
//! [`SpentTickets`]) and an expiry [`TICKET_TTL_SECS`] after issue.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::codec::{cap_identity, Identity, MAX_COOKIE_VALUE};
use super::keys::{open_value, seal_value};
use super::{ct_eq, random_hex, Origin, SessionKeys};

/// A ticket's life, in seconds: a redirect's worth.
pub const TICKET_TTL_SECS: u64 = 60;
/// How far the relay edge's clock may run ahead of the target's.
const CLOCK_SKEW_SECS: u64 = 30;
const SEAL_NAME: &str = "wxedge_ticket";
const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Payload {
    v: u8,
    id: String,
    aud: String,
    st: String,
    e: u64,
    who: Identity,
}

/// An opened ticket: not yet spent (see [`SpentTickets`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    pub id: String,
    pub identity: Identity,
    pub expires_at: u64,
}

/// Why a ticket was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketError {
    /// Tampered, truncated, sealed with another key, or not a ticket.
    Invalid,
    Expired,
    /// Addressed to another site.
    Audience,
    /// Made for another login than the one this browser started here.
    State,
    /// Used before.
    Replayed,
}

impl TicketError {
    /// For logs, metrics and the error page.
    pub fn label(self) -> &'static str {
        match self {
            TicketError::Invalid => "ticket_invalid",
            TicketError::Expired => "ticket_expired",
            TicketError::Audience => "ticket_audience",
            TicketError::State => "ticket_state",
            TicketError::Replayed => "ticket_replayed",
        }
    }
}

/// Seals and opens tickets with the shared relay key (the first seals, all open: rotation as
/// with session keys).
#[derive(Clone, Debug)]
pub struct TicketCodec {
    keys: SessionKeys,
}

impl TicketCodec {
    pub fn new(keys: SessionKeys) -> TicketCodec {
        TicketCodec { keys }
    }

    /// A ticket for `who`, valid at `audience` only, for the login there whose state is `state`.
    pub fn seal(&self, who: &Identity, audience: &Origin, state: &str, now: u64) -> String {
        let p = Payload {
            v: VERSION,
            id: random_hex(16),
            aud: audience.as_str().to_string(),
            st: state.to_string(),
            e: now.saturating_add(TICKET_TTL_SECS),
            who: cap_identity(who),
        };
        let json = serde_json::to_string(&p).expect("payload serializes");
        seal_value(self.keys.sealing(), SEAL_NAME, &json)
    }

    /// Opens `ticket` presented at `audience` for the login with `state`.
    pub fn open(
        &self,
        ticket: &str,
        audience: &Origin,
        state: &str,
        now: u64,
    ) -> Result<Ticket, TicketError> {
        if ticket.is_empty() || ticket.len() > MAX_COOKIE_VALUE {
            return Err(TicketError::Invalid);
        }
        let plain = open_value(self.keys.all(), SEAL_NAME, ticket).ok_or(TicketError::Invalid)?;
        let p: Payload = serde_json::from_str(&plain).map_err(|_| TicketError::Invalid)?;
        // A ticket living longer than a ticket can was not made by a relay edge.
        if p.v != VERSION
            || p.who.openid.is_empty()
            || p.e > now + TICKET_TTL_SECS + CLOCK_SKEW_SECS
        {
            return Err(TicketError::Invalid);
        }
        if p.aud != audience.as_str() {
            return Err(TicketError::Audience);
        }
        if now >= p.e {
            return Err(TicketError::Expired);
        }
        if !ct_eq(p.st.as_bytes(), state.as_bytes()) {
            return Err(TicketError::State);
        }
        Ok(Ticket {
            id: p.id,
            identity: p.who,
            expires_at: p.e,
        })
    }
}

/// Ticket ids already used, each kept until its ticket expires: what makes a ticket single-use.
///
/// [`MemorySpentTickets`] covers one process. Replicas of a target site behind one name need one
/// shared record, e.g. Redis: `SET wxedge:ticket:<id> 1 NX EXAT <expires_at>` is `first_use`.
#[async_trait]
pub trait SpentTickets: Send + Sync {
    /// Records `id` as used until `expires_at` (Unix seconds); `false` if it already was, or
    /// if it cannot be recorded (refusing is safe, forgetting is not).
    async fn first_use(&self, id: &str, expires_at: u64, now: u64) -> bool;
}

/// The per-process record, bounded: expired ids are dropped when it fills up.
pub struct MemorySpentTickets {
    ids: Mutex<HashMap<String, u64>>,
    max: usize,
}

impl MemorySpentTickets {
    /// 100 000 ids: more than 1 600 logins a second for a whole ticket lifetime.
    pub const DEFAULT_MAX: usize = 100_000;

    pub fn new(max: usize) -> MemorySpentTickets {
        MemorySpentTickets {
            ids: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }
}

impl Default for MemorySpentTickets {
    fn default() -> Self {
        MemorySpentTickets::new(Self::DEFAULT_MAX)
    }
}

#[async_trait]
impl SpentTickets for MemorySpentTickets {
    async fn first_use(&self, id: &str, expires_at: u64, now: u64) -> bool {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.get(id).is_some_and(|&e| e > now) {
            return false;
        }
        if ids.len() >= self.max {
            ids.retain(|_, e| *e > now);
            if ids.len() >= self.max {
                return false;
            }
        }
        ids.insert(id.to_string(), expires_at);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn codec(secret: char) -> TicketCodec {
        TicketCodec::new(SessionKeys::from_secrets(&[secret.to_string().repeat(40)]).unwrap())
    }

    fn origin(s: &str) -> Origin {
        Origin::parse(s).unwrap()
    }

    fn alice() -> Identity {
        Identity {
            openid: "oAlice".into(),
            unionid: Some("uAlice".into()),
            scope: "snsapi_base".into(),
            snapshot: false,
            nickname: None,
            avatar: None,
        }
    }

    #[test]
    fn roundtrip_for_its_audience_and_state() {
        let c = codec('r');
        let shop = origin("https://shop.example.com");
        let t = c.seal(&alice(), &shop, "wxe1s", NOW);
        assert!(!t.contains("oAlice") && !t.contains("shop"), "sealed: {t}");
        let opened = c.open(&t, &shop, "wxe1s", NOW + 59).unwrap();
        assert_eq!(opened.identity, alice());
        assert_eq!(opened.expires_at, NOW + TICKET_TTL_SECS);
        assert_eq!(opened.id.len(), 32);
        // Every ticket has its own id.
        let again = c.open(&c.seal(&alice(), &shop, "wxe1s", NOW), &shop, "wxe1s", NOW);
        assert_ne!(again.unwrap().id, opened.id);
    }

    #[test]
    fn refusals() {
        let c = codec('r');
        let shop = origin("https://shop.example.com");
        let t = c.seal(&alice(), &shop, "wxe1s", NOW);
        let open = |t: &str, aud: &str, st: &str, now: u64| c.open(t, &origin(aud), st, now);
        assert_eq!(
            open(&t, "https://shop.example.com", "wxe1s", NOW + 60),
            Err(TicketError::Expired)
        );
        for other in [
            "https://camp.example.com",
            "http://shop.example.com",
            "https://shop.example.com:8443",
        ] {
            assert_eq!(
                open(&t, other, "wxe1s", NOW),
                Err(TicketError::Audience),
                "{other}"
            );
        }
        assert_eq!(
            open(&t, "https://shop.example.com", "wxe1other", NOW),
            Err(TicketError::State)
        );
        // Tampered at every position, truncated, empty, oversized, another key, a cookie.
        for i in (0..t.len()).step_by(7) {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(b).unwrap();
            assert_eq!(
                open(&bad, "https://shop.example.com", "wxe1s", NOW),
                Err(TicketError::Invalid),
                "byte {i}"
            );
        }
        for bad in [&t[..t.len() - 1], "", &"A".repeat(5000)] {
            assert_eq!(
                open(bad, "https://shop.example.com", "wxe1s", NOW),
                Err(TicketError::Invalid)
            );
        }
        assert_eq!(
            codec('x').open(&t, &shop, "wxe1s", NOW),
            Err(TicketError::Invalid)
        );
        let keys = SessionKeys::from_secrets(&["r".repeat(40)]).unwrap();
        let cookie = seal_value(keys.sealing(), "wxedge_session", "{}");
        assert_eq!(
            c.open(&cookie, &shop, "wxe1s", NOW),
            Err(TicketError::Invalid)
        );
        // Minted to live longer than any ticket: not from a relay edge.
        let future = c.seal(&alice(), &shop, "wxe1s", NOW + 1000);
        assert_eq!(
            c.open(&future, &shop, "wxe1s", NOW),
            Err(TicketError::Invalid)
        );
        // A relay clock a little ahead is fine.
        let ahead = c.seal(&alice(), &shop, "wxe1s", NOW + 20);
        assert!(c.open(&ahead, &shop, "wxe1s", NOW).is_ok());
    }

    #[test]
    fn rotated_keys_open_old_tickets() {
        let shop = origin("https://shop.example.com");
        let old = codec('o');
        let both =
            TicketCodec::new(SessionKeys::from_secrets(&["n".repeat(40), "o".repeat(40)]).unwrap());
        let t = old.seal(&alice(), &shop, "s", NOW);
        assert!(both.open(&t, &shop, "s", NOW).is_ok());
        assert_eq!(
            old.open(&both.seal(&alice(), &shop, "s", NOW), &shop, "s", NOW),
            Err(TicketError::Invalid)
        );
    }

    #[tokio::test]
    async fn single_use_until_expiry_and_bounded() {
        let spent = MemorySpentTickets::new(2);
        assert!(spent.first_use("a", NOW + 60, NOW).await);
        assert!(!spent.first_use("a", NOW + 60, NOW + 1).await);
        assert!(spent.first_use("b", NOW + 10, NOW).await);
        // Full of live ids: refuse rather than forget one.
        assert!(!spent.first_use("c", NOW + 60, NOW + 5).await);
        // Once "b" has expired there is room again.
        assert!(spent.first_use("c", NOW + 70, NOW + 11).await);
        assert!(!spent.first_use("a", NOW + 60, NOW + 12).await);
    }
}
