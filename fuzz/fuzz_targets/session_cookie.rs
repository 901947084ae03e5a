//! The session cookie opener: `SessionCodec::open_from_cookie_header` on arbitrary `Cookie`
//! header bytes, with a fixed key. It must never panic, and never open anything but a value
//! that `issue` produced (here: the one genuine cookie sealed at start-up).
//!
//! Input: a mode byte, then bytes. Mode bit 0: splice the genuine `wxedge_session=<value>`
//! between the bytes' two halves; bit 1: also flip one bit of the genuine value (bytes 1..4 pick
//! which). `\n` in the bytes separates `Cookie` header values.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wxedge::session::{Identity, Session, SessionCodec, SessionKeys, DEFAULT_COOKIE_NAME};

const NOW: u64 = 1_700_000_000;

struct Fixture {
    codec: SessionCodec,
    session: Session,
    value: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys =
            SessionKeys::from_secrets(&["fuzz-fixed-secret-0123456789abcdef-0123456789".into()])
                .expect("key");
        let codec = SessionCodec::new(keys, DEFAULT_COOKIE_NAME, Duration::from_secs(86400), true);
        let identity = Identity {
            openid: "oFuzz000000000000000000000001".into(),
            unionid: Some("uFuzz".into()),
            scope: "snsapi_userinfo".into(),
            snapshot: false,
            nickname: Some("fuzz".into()),
            avatar: None,
        };
        let (session, set_cookie) = codec.issue(&identity, NOW);
        let pair = set_cookie.split(';').next().unwrap();
        let value = pair
            .strip_prefix(&format!("{DEFAULT_COOKIE_NAME}="))
            .unwrap()
            .to_string();
        // The fixture itself works: the genuine cookie opens.
        assert_eq!(
            codec.open_from_cookie_header(&[pair], NOW + 10),
            Some(session.clone())
        );
        Fixture {
            codec,
            session,
            value,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut header = Vec::with_capacity(rest.len() + f.value.len() + 32);
    let mut genuine_intact = false;
    if mode & 1 == 1 {
        let mut value = f.value.clone().into_bytes();
        if mode & 2 == 2 && rest.len() >= 3 {
            let at = u16::from_le_bytes([rest[0], rest[1]]) as usize % value.len();
            value[at] ^= 1 << (rest[2] % 8);
        } else {
            genuine_intact = true;
        }
        let (a, b) = rest.split_at(rest.len() / 2);
        header.extend_from_slice(a);
        header.extend_from_slice(DEFAULT_COOKIE_NAME.as_bytes());
        header.push(b'=');
        header.extend_from_slice(&value);
        header.extend_from_slice(b);
    } else {
        header.extend_from_slice(rest);
    }
    let values: Vec<&[u8]> = header.split(|&b| b == b'\n').collect();
    for now in [NOW + 10, NOW - 1, u64::MAX] {
        let Some(opened) = f.codec.open_from_cookie_header(&values, now) else {
            continue;
        };
        assert_eq!(opened, f.session, "opened a session that was never issued");
        assert!(now < opened.expires_at, "opened an expired session");
        // It can only have come from the genuine value, unaltered.
        let intact_somewhere = genuine_intact
            || header
                .windows(f.value.len())
                .any(|w| w == f.value.as_bytes());
        assert!(
            intact_somewhere,
            "a cookie header without the issued value opened: {:?}",
            String::from_utf8_lossy(&header)
        );
    }
});
