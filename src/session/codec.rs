//! The session cookie: an [`Identity`] sealed with AES-256-GCM (the cookie crate's private jar,
//! which also binds the cookie *name* as associated data, so a login cookie can never be replayed
//! as a session cookie or the other way round).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::cookies;
use super::keys::{open_value, seal_value, SessionKeys};

pub const DEFAULT_COOKIE_NAME: &str = "wxedge_session";
pub const DEFAULT_LOGIN_COOKIE_NAME: &str = "wxedge_login";
/// The login relay's cookie (see `login.rs`), named here because the codec strips it too.
pub(crate) const RELAY_COOKIE_NAME: &str = "wxedge_relay";

/// Longest cookie value we try to open (a sealed session is ~0.3–2.4 KB).
pub(crate) const MAX_COOKIE_VALUE: usize = 4096;
/// At most this many same-named cookies are tried per request.
const MAX_CANDIDATES: usize = 4;

// Field caps applied when sealing, so the cookie stays far below 4 KB whatever WeChat sends.
const MAX_ID_LEN: usize = 128;
const MAX_SCOPE_LEN: usize = 64;
const MAX_NICKNAME_LEN: usize = 96;
const MAX_AVATAR_LEN: usize = 512;

/// Who the browser is, as WeChat told the edge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub openid: String,
    pub unionid: Option<String>,
    /// `snsapi_base` or `snsapi_userinfo` (as WeChat answered it).
    pub scope: String,
    /// A snapshot-page user (`is_snapshotuser: 1`): the openid is virtual.
    pub snapshot: bool,
    pub nickname: Option<String>,
    pub avatar: Option<String>,
}

/// An opened (or freshly sealed) session. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub identity: Identity,
    /// Names this session (not the person) for revocation: random, fixed when it is issued.
    pub id: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// The sealed payload: short keys keep the cookie small.
#[derive(Serialize, Deserialize)]
struct Payload {
    v: u8,
    o: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    s: String,
    #[serde(default, skip_serializing_if = "is_false")]
    p: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    i: u64,
    e: u64,
    /// The session id; cookies sealed before it existed have none (see [`legacy_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
}

const PAYLOAD_VERSION: u8 = 1;

fn is_false(b: &bool) -> bool {
    !*b
}

thread_local! {
    // Cookie values this thread has opened, by codec: opening one costs an AES-GCM decryption,
    // base64 and JSON (several µs), and a browser sends the same value with every API call.
    // Only values that opened are kept, compared in full; expiry is still checked on every use.
    // Keyed by a seeded xxh3 of the value, so the map needs no hashing of its own.
    static OPENED: RefCell<FxHashMap<u64, Opened>> = RefCell::new(FxHashMap::default());
}
/// (codec id, the cookie value, what it opened to), by a hash of the value.
type Opened = (u64, Box<str>, Rc<Payload>);
/// Per thread; emptied when full (a cache, not a record: a miss only costs one decryption).
const OPENED_MAX: usize = 2048;
static CODEC_IDS: AtomicU64 = AtomicU64::new(1);

/// Seals and opens session cookies, and the login nonce cookie (see `login.rs`).
#[derive(Clone, Debug)]
pub struct SessionCodec {
    /// Tells this codec's (keys, cookie name) apart in the per-thread cache of opened values.
    id: u64,
    pub(crate) keys: SessionKeys,
    pub(crate) cookie_name: String,
    pub(crate) login_cookie_name: String,
    pub(crate) lifetime: Duration,
    pub(crate) secure: bool,
}

impl SessionCodec {
    /// `secure = false` only for plain-HTTP development (`WXEDGE_COOKIE_SECURE=false`).
    pub fn new(
        keys: SessionKeys,
        cookie_name: impl Into<String>,
        lifetime: Duration,
        secure: bool,
    ) -> Self {
        SessionCodec {
            id: CODEC_IDS.fetch_add(1, Ordering::Relaxed),
            keys,
            cookie_name: cookie_name.into(),
            login_cookie_name: DEFAULT_LOGIN_COOKIE_NAME.into(),
            lifetime,
            secure,
        }
    }

    /// Overrides the login nonce cookie's name (default `wxedge_login`).
    #[cfg(test)]
    pub fn with_login_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.login_cookie_name = name.into();
        self
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    pub fn secure(&self) -> bool {
        self.secure
    }

    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    /// A new session for `identity` starting at `now`, and its sealed cookie value.
    /// Over-long fields are capped (nickname truncated, an avatar URL > 512 bytes dropped).
    pub fn seal(&self, identity: &Identity, now: u64) -> (Session, String) {
        let session = Session {
            identity: cap_identity(identity),
            id: super::random_hex(12),
            issued_at: now,
            expires_at: now.saturating_add(self.lifetime.as_secs()),
        };
        let value = self.seal_session(&session);
        (session, value)
    }

    /// [`seal`](Self::seal) plus the full `Set-Cookie` value: what the callback answer needs.
    pub fn issue(&self, identity: &Identity, now: u64) -> (Session, String) {
        let (session, value) = self.seal(identity, now);
        let max_age = session.expires_at.saturating_sub(session.issued_at);
        let header = self.set_cookie_value(&self.cookie_name, &value, max_age);
        (session, header)
    }

    /// The full `Set-Cookie` value for `session` (sealed anew; `Max-Age` = its whole lifetime,
    /// so call it when the session is issued).
    pub fn set_cookie_header(&self, session: &Session) -> String {
        let value = self.seal_session(session);
        let max_age = session.expires_at.saturating_sub(session.issued_at);
        self.set_cookie_value(&self.cookie_name, &value, max_age)
    }

    /// `Set-Cookie` value that deletes the session cookie (logout).
    pub fn clear_cookie_header(&self) -> String {
        self.clear_value(&self.cookie_name)
    }

    /// Finds and opens our session cookie among the request's `Cookie` header values (raw bytes or
    /// strings). Anything wrong — missing, tampered, truncated, foreign key, expired, oversized,
    /// non-UTF-8, unknown payload version — gives `None`.
    ///
    /// A session is valid while `now < expires_at` and `now < issued_at + lifetime` (so shortening
    /// the configured lifetime takes effect at once).
    pub fn open_from_cookie_header<S: AsRef<[u8]>>(
        &self,
        cookie_header_values: &[S],
        now: u64,
    ) -> Option<Session> {
        for value in cookie_values(cookie_header_values, &self.cookie_name) {
            let Some(p) = self.open_payload(value) else {
                continue;
            };
            if p.v != PAYLOAD_VERSION || p.o.is_empty() {
                continue;
            }
            if now >= p.e || now >= p.i.saturating_add(self.lifetime.as_secs()) {
                continue;
            }
            return Some(Session {
                identity: Identity {
                    openid: p.o.clone(),
                    unionid: p.u.clone(),
                    scope: p.s.clone(),
                    snapshot: p.p,
                    nickname: p.n.clone(),
                    avatar: p.a.clone(),
                },
                id: p.d.clone().unwrap_or_else(|| legacy_id(&p.o, p.i)),
                issued_at: p.i,
                expires_at: p.e,
            });
        }
        None
    }

    /// Decrypt and parse one session cookie value, or find it opened already on this thread.
    fn open_payload(&self, value: &str) -> Option<Rc<Payload>> {
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(value.as_bytes(), self.id);
        let hit = OPENED.with(|c| {
            c.borrow()
                .get(&hash)
                .filter(|(id, v, _)| *id == self.id && &**v == value)
                .map(|(_, _, p)| p.clone())
        });
        if hit.is_some() {
            return hit;
        }
        let plain = open_value(self.keys.all(), &self.cookie_name, value)?;
        let p = Rc::new(serde_json::from_str::<Payload>(&plain).ok()?);
        OPENED.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= OPENED_MAX {
                c.clear();
            }
            c.insert(hash, (self.id, value.into(), p.clone()));
        });
        Some(p)
    }

    /// The request's `Cookie` header values as one, without our session, login and relay
    /// cookies and those `also` names, for the backend; `None` when nothing else remains (then
    /// drop the header).
    pub fn strip_cookie<S: AsRef<[u8]>>(&self, headers: &[S], also: &[&str]) -> Option<String> {
        cookies::without(headers, |name| {
            name == self.cookie_name
                || name == self.login_cookie_name
                || name == RELAY_COOKIE_NAME
                || also.contains(&name)
        })
    }

    fn seal_session(&self, s: &Session) -> String {
        let p = Payload {
            v: PAYLOAD_VERSION,
            o: s.identity.openid.clone(),
            u: s.identity.unionid.clone(),
            s: s.identity.scope.clone(),
            p: s.identity.snapshot,
            n: s.identity.nickname.clone(),
            a: s.identity.avatar.clone(),
            i: s.issued_at,
            e: s.expires_at,
            d: Some(s.id.clone()),
        };
        let json = serde_json::to_string(&p).expect("payload serializes");
        seal_value(self.keys.sealing(), &self.cookie_name, &json)
    }

    pub(crate) fn set_cookie_value(&self, name: &str, value: &str, max_age: u64) -> String {
        format!(
            "{name}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}{}",
            if self.secure { "; Secure" } else { "" }
        )
    }

    pub(crate) fn clear_value(&self, name: &str) -> String {
        format!(
            "{name}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The id of a session sealed before sessions had one: its openid and issue time (two such
/// sessions of one person issued in the same second share it).
fn legacy_id(openid: &str, issued_at: u64) -> String {
    let h = xxhash_rust::xxh3::xxh3_128_with_seed(openid.as_bytes(), issued_at);
    format!("legacy-{h:032x}")
}

/// Values of the cookies called `name` in the given `Cookie` header values: UTF-8, at most
/// [`MAX_COOKIE_VALUE`] bytes, surrounding quotes removed, at most [`MAX_CANDIDATES`] of them.
pub(crate) fn cookie_values<'a, S: AsRef<[u8]>>(headers: &'a [S], name: &'a str) -> Vec<&'a str> {
    cookies::values(headers, name)
        .map(|v| {
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
        .filter(|v| !v.is_empty() && v.len() <= MAX_COOKIE_VALUE)
        .take(MAX_CANDIDATES)
        .collect()
}

pub(crate) fn cap_identity(id: &Identity) -> Identity {
    Identity {
        openid: truncate(&id.openid, MAX_ID_LEN),
        unionid: id.unionid.as_deref().map(|u| truncate(u, MAX_ID_LEN)),
        scope: truncate(&id.scope, MAX_SCOPE_LEN),
        snapshot: id.snapshot,
        nickname: id.nickname.as_deref().map(|n| {
            let clean: String = n.chars().filter(|c| !c.is_control()).collect();
            truncate(&clean, MAX_NICKNAME_LEN)
        }),
        avatar: id
            .avatar
            .as_deref()
            .filter(|a| a.len() <= MAX_AVATAR_LEN && !a.chars().any(char::is_control))
            .map(String::from),
    }
}

/// At most `max` bytes, cut on a char boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn keys(secret: &str) -> SessionKeys {
        SessionKeys::from_secrets(&[secret.repeat(32)]).unwrap()
    }

    fn codec_with(k: SessionKeys) -> SessionCodec {
        SessionCodec::new(k, DEFAULT_COOKIE_NAME, Duration::from_secs(7 * 86400), true)
    }

    fn codec() -> SessionCodec {
        codec_with(keys("a"))
    }

    fn alice() -> Identity {
        Identity {
            openid: "oAlice0000000000000000000001".into(),
            unionid: Some("uAlice".into()),
            scope: "snsapi_userinfo".into(),
            snapshot: false,
            nickname: Some("爱丽丝 \"A\"".into()),
            avatar: Some("https://thirdwx.qlogo.cn/mmopen/x/132".into()),
        }
    }

    fn cookie_of(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn seal_open_roundtrip() {
        let c = codec();
        let (s, set) = c.issue(&alice(), NOW);
        assert_eq!(s.issued_at, NOW);
        assert_eq!(s.expires_at, NOW + 7 * 86400);
        let opened = c
            .open_from_cookie_header(&[cookie_of(&set).as_str()], NOW + 10)
            .unwrap();
        assert_eq!(opened, s);
        assert_eq!(opened.identity, alice());
        // The value is not readable: no openid in clear.
        assert!(!set.contains("oAlice"));
    }

    #[test]
    fn set_cookie_attributes() {
        let c = codec();
        let (_, set) = c.issue(&alice(), NOW);
        assert!(set.starts_with("wxedge_session="));
        for attr in [
            "; HttpOnly",
            "; SameSite=Lax",
            "; Path=/",
            "; Max-Age=604800",
            "; Secure",
        ] {
            assert!(set.contains(attr), "{attr} missing in {set}");
        }
        let (s, _) = c.seal(&alice(), NOW);
        let again = c.set_cookie_header(&s);
        assert!(again.contains("; Max-Age=604800"));
        assert_eq!(
            c.open_from_cookie_header(&[cookie_of(&again)], NOW)
                .unwrap(),
            s
        );

        let plain = SessionCodec::new(keys("a"), "sid", Duration::from_secs(60), false);
        let (_, set) = plain.issue(&alice(), NOW);
        assert!(set.starts_with("sid=") && !set.contains("Secure") && set.contains("Max-Age=60"));
        let clear = plain.clear_cookie_header();
        assert!(
            clear.starts_with("sid=;") && clear.contains("Max-Age=0") && !clear.contains("Secure")
        );
        assert!(c.clear_cookie_header().contains("; Secure"));
    }

    #[test]
    fn cookie_stays_small_with_huge_fields() {
        let c = codec();
        let id = Identity {
            openid: "o".repeat(500),
            unionid: Some("u".repeat(500)),
            scope: "s".repeat(500),
            snapshot: true,
            nickname: Some("\"\\😀\u{1}".repeat(300)),
            avatar: Some(format!("https://x/{}", "\"".repeat(500))),
        };
        let (s, set) = c.issue(&id, NOW);
        assert!(set.len() < 3000, "Set-Cookie is {} bytes", set.len());
        let nick = s.identity.nickname.as_ref().unwrap();
        assert!(nick.len() <= MAX_NICKNAME_LEN && !nick.contains('\u{1}'));
        let opened = c.open_from_cookie_header(&[cookie_of(&set)], NOW).unwrap();
        assert_eq!(opened.identity, s.identity);
        assert!(opened.identity.snapshot);

        // A plausible avatar URL is kept; an absurd one is dropped rather than cut.
        let long_avatar = format!("https://x/{}", "a".repeat(600));
        let (s, _) = c.seal(
            &Identity {
                avatar: Some(long_avatar),
                ..alice()
            },
            NOW,
        );
        assert_eq!(s.identity.avatar, None);
    }

    #[test]
    fn finds_cookie_among_several_headers() {
        let c = codec();
        let (s, set) = c.issue(&alice(), NOW);
        let ours = cookie_of(&set);
        let h1 = "a=1; b=2".to_string();
        let h2 = format!("x=y;{ours} ; z=\"q\"");
        assert_eq!(
            c.open_from_cookie_header(&[h1.as_str(), h2.as_str()], NOW),
            Some(s.clone())
        );
        // A stale cookie of the same name first (e.g. another path) does not hide the good one.
        let h = format!("wxedge_session=garbage; {ours}");
        assert_eq!(c.open_from_cookie_header(&[h], NOW), Some(s.clone()));
        // Quoted value.
        let v = ours.split_once('=').unwrap().1;
        let h = format!("wxedge_session=\"{v}\"");
        assert_eq!(c.open_from_cookie_header(&[h], NOW), Some(s));
        // Not present / empty input.
        assert_eq!(c.open_from_cookie_header(&["a=1"], NOW), None);
        let none: &[&str] = &[];
        assert_eq!(c.open_from_cookie_header(none, NOW), None);
    }

    #[test]
    fn bad_cookies_are_none() {
        let c = codec();
        let (_, set) = c.issue(&alice(), NOW);
        let ours = cookie_of(&set);
        let v = ours.split_once('=').unwrap().1.to_string();
        let name = "wxedge_session";

        // Tampered: flip one base64 char in the middle.
        let mut t = v.clone().into_bytes();
        let mid = t.len() / 2;
        t[mid] = if t[mid] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{name}={}", String::from_utf8(t).unwrap());
        // Truncated, at several lengths.
        let trunc: Vec<String> = [1, 10, 16, 28, v.len() - 1]
            .iter()
            .map(|n| format!("{name}={}", &v[..*n]))
            .collect();
        for h in [tampered.clone(), format!("{name}="), format!("{name}=!!!!")]
            .iter()
            .chain(trunc.iter())
        {
            assert_eq!(c.open_from_cookie_header(&[h.as_str()], NOW), None, "{h}");
        }
        // Oversized.
        let big = format!("{name}={}", "A".repeat(10_000));
        assert_eq!(c.open_from_cookie_header(&[big], NOW), None);
        // Non-UTF-8 bytes.
        let mut raw = format!("{name}=").into_bytes();
        raw.extend_from_slice(&[0xff, 0xfe, 0x80]);
        raw.extend_from_slice(v.as_bytes());
        assert_eq!(c.open_from_cookie_header(&[raw.as_slice()], NOW), None);
        // Foreign key.
        let other = codec_with(keys("b"));
        assert_eq!(other.open_from_cookie_header(&[ours.as_str()], NOW), None);
        // A valid seal of something that is not a session payload.
        let junk = seal_value(c.keys.sealing(), name, "{\"hello\":1}");
        assert_eq!(
            c.open_from_cookie_header(&[format!("{name}={junk}")], NOW),
            None
        );
        // Sealed under another cookie name (name is the AEAD's associated data).
        let swapped = seal_value(c.keys.sealing(), "wxedge_login", "x");
        assert_eq!(
            c.open_from_cookie_header(&[format!("{name}={swapped}")], NOW),
            None
        );
    }

    #[test]
    fn expiry_and_lifetime() {
        let c = SessionCodec::new(keys("a"), "s", Duration::from_secs(100), true);
        let (_, set) = c.issue(&alice(), NOW);
        let h = cookie_of(&set);
        assert!(c.open_from_cookie_header(&[h.as_str()], NOW + 99).is_some());
        assert!(c
            .open_from_cookie_header(&[h.as_str()], NOW + 100)
            .is_none());
        assert!(c
            .open_from_cookie_header(&[h.as_str()], NOW + 10_000)
            .is_none());
        // Shortening the configured lifetime applies to cookies already issued.
        let shorter = SessionCodec::new(c.keys.clone(), "s", Duration::from_secs(10), true);
        assert!(shorter
            .open_from_cookie_header(&[h.as_str()], NOW + 5)
            .is_some());
        assert!(shorter
            .open_from_cookie_header(&[h.as_str()], NOW + 50)
            .is_none());
    }

    #[test]
    fn sessions_have_ids_and_older_cookies_get_a_stable_one() {
        let c = codec();
        let (a, set_a) = c.issue(&alice(), NOW);
        let (b, _) = c.issue(&alice(), NOW);
        assert_ne!(a.id, b.id, "two logins of one person are two sessions");
        assert_eq!(a.id.len(), 24);
        let opened = c
            .open_from_cookie_header(&[cookie_of(&set_a).as_str()], NOW + 1)
            .unwrap();
        assert_eq!(opened.id, a.id);
        // A cookie sealed before sessions had ids.
        let old = seal_value(
            c.keys.sealing(),
            DEFAULT_COOKIE_NAME,
            r#"{"v":1,"o":"oOld","s":"snsapi_base","i":1700000000,"e":1700600000}"#,
        );
        let header = format!("{DEFAULT_COOKIE_NAME}={old}");
        let first = c.open_from_cookie_header(&[header.as_str()], NOW).unwrap();
        let again = c.open_from_cookie_header(&[header.as_str()], NOW).unwrap();
        assert!(first.id.starts_with("legacy-"), "{}", first.id);
        assert_eq!(first.id, again.id);
        assert_eq!(first.identity.openid, "oOld");
    }

    #[test]
    fn key_rotation() {
        let old = "o".repeat(32);
        let new = "n".repeat(32);
        let before = codec_with(SessionKeys::from_secrets(std::slice::from_ref(&old)).unwrap());
        let after = codec_with(SessionKeys::from_secrets(&[new.clone(), old.clone()]).unwrap());
        let only_new = codec_with(SessionKeys::from_secrets(&[new]).unwrap());

        let (s_old, set_old) = before.issue(&alice(), NOW);
        let h_old = cookie_of(&set_old);
        assert_eq!(
            after.open_from_cookie_header(&[h_old.as_str()], NOW),
            Some(s_old)
        );
        assert_eq!(
            only_new.open_from_cookie_header(&[h_old.as_str()], NOW),
            None
        );

        // New cookies are sealed with the first key.
        let (_, set_new) = after.issue(&alice(), NOW);
        let h_new = cookie_of(&set_new);
        assert!(only_new
            .open_from_cookie_header(&[h_new.as_str()], NOW)
            .is_some());
        assert!(before
            .open_from_cookie_header(&[h_new.as_str()], NOW)
            .is_none());
    }

    #[test]
    fn strip_cookie_removes_ours_only() {
        let c = codec();
        assert_eq!(
            c.strip_cookie(&["a=1; wxedge_session=XYZ; b=2"], &[]),
            Some("a=1; b=2".into())
        );
        assert_eq!(
            c.strip_cookie(&[" wxedge_login=q ;wxedge_session=XYZ;c=3 "], &[]),
            Some("c=3".into())
        );
        assert_eq!(
            c.strip_cookie(&["wxedge_session=XYZ; wxedge_login=1"], &[]),
            None
        );
        assert_eq!(
            c.strip_cookie(&["wxedge_relay=R; d=4"], &[]),
            Some("d=4".into())
        );
        assert_eq!(c.strip_cookie(&[""], &[]), None);
        assert_eq!(c.strip_cookie(&[" ; ;"], &[]), None);
        // Similar names are not ours.
        assert_eq!(
            c.strip_cookie(&["wxedge_session2=1; xwxedge_session=2"], &[]),
            Some("wxedge_session2=1; xwxedge_session=2".into())
        );
        // Value containing '=' is kept whole.
        assert_eq!(c.strip_cookie(&["t=a=b"], &[]), Some("t=a=b".into()));
        let custom = codec().with_login_cookie_name("lg");
        assert_eq!(
            custom.strip_cookie(&["lg=1; wxedge_login=2"], &[]),
            Some("wxedge_login=2".into())
        );
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
