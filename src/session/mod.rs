//! Sessions and cookies, apart from the WeChat provider.
//!
//! * [`SessionKeys`]: the operator's secrets turned into AES-256-GCM keys (first seals, all open).
//! * [`SessionCodec`]: seals an [`Identity`] into the `wxedge_session` cookie and opens it again;
//!   also the short-lived `wxedge_login` nonce cookie of the edge-started login
//!   ([`SessionCodec::new_login`] / [`SessionCodec::finish_login`]) and the removal of both cookies
//!   from the `Cookie` header forwarded to the backend ([`SessionCodec::strip_cookie`]).
//! * [`cookies`]: finding cookies in the request's `Cookie` header.
//! * [`safe_return_path`]: the open-redirect guard for `?return=`; [`allowed_redirect`] the login
//!   relay's, for absolute URLs on allowlisted [`Origin`]s.
//! * [`TicketCodec`]: the login relay's single-use, audience-bound identity tickets.
//!
//! Nothing here depends on Pingora: header values go in and out as strings.

mod codec;
pub mod cookies;
mod keys;
mod login;
mod return_path;
mod ticket;

pub use codec::{Identity, Session, SessionCodec, DEFAULT_COOKIE_NAME};
pub use keys::SessionKeys;
pub use login::{looks_like_login_state, LoginError, RelayBinding, LOGIN_TTL_SECS};
pub use return_path::{allowed_redirect, safe_return_path, Origin};
pub use ticket::{
    MemorySpentTickets, SpentTickets, Ticket, TicketCodec, TicketError, TICKET_TTL_SECS,
};

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `n` bytes (at most 64) from the operating system's CSPRNG, as lowercase hex.
///
/// The randomness comes from `cookie::Key::generate()` (the `rand` thread RNG seeded from the OS,
/// already a dependency of the cookie crate's `private` feature), so no extra crate is needed.
pub fn random_hex(n: usize) -> String {
    let n = n.min(64);
    let key = cookie::Key::generate();
    let mut s = String::with_capacity(n * 2);
    for b in &key.master()[..n] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Compares two secrets in time independent of where they differ (`subtle`; the length is
/// not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_is_hex_and_differs() {
        let a = random_hex(16);
        let b = random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(random_hex(100).len(), 128);
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(ct_eq(b"", b""));
    }
}
