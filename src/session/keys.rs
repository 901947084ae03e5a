//! Session keys: operator secrets → `cookie::Key`s. The first key seals, every key opens.
//! Sealing and opening themselves (AES-256-GCM) are here too, for every sealed value: the
//! session and login cookies (`codec.rs`, `login.rs`) and relay tickets (`ticket.rs`).

use cookie::{Cookie, CookieJar, Key};

/// Minimum length of an operator secret, in bytes (after trimming surrounding whitespace).
pub const MIN_SECRET_LEN: usize = 32;

/// The keys that seal and open session and login cookies (and, as `wechat.relay_key`, relay tickets).
///
/// Each secret is fed directly to [`Key::derive_from`] (HKDF-SHA256 expansion into the 64-byte
/// signing+encryption key; the cookie crate's `key-expansion` feature). That function requires at
/// least 32 bytes, which is exactly the minimum enforced here; a secret should carry ≥ 256 bits of
/// entropy, e.g. `openssl rand -base64 48`.
#[derive(Clone)]
pub struct SessionKeys {
    keys: Vec<Key>,
    random: bool,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("keys", &self.keys.len())
            .field("random", &self.random)
            .finish()
    }
}

impl SessionKeys {
    /// Derives one key per secret. Surrounding whitespace (a key file's newline) is trimmed.
    /// Errors name the secret by position and length only, never by content.
    pub fn from_secrets(secrets: &[String]) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("no key given".into());
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for (i, s) in secrets.iter().enumerate() {
            let t = s.trim();
            if t.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "key #{} is {} bytes long; at least {MIN_SECRET_LEN} bytes are required \
                     (generate one with `openssl rand -base64 48`)",
                    i + 1,
                    t.len()
                ));
            }
            keys.push(Key::derive_from(t.as_bytes()));
        }
        Ok(SessionKeys {
            keys,
            random: false,
        })
    }

    /// One random key for this process only (sandbox / development): sessions do not survive a
    /// restart and are not shared between instances.
    pub fn random() -> Self {
        SessionKeys {
            keys: vec![Key::generate()],
            random: true,
        }
    }

    /// Whether these keys came from [`SessionKeys::random`].
    #[cfg(test)]
    pub fn is_random(&self) -> bool {
        self.random
    }

    pub(crate) fn sealing(&self) -> &Key {
        &self.keys[0]
    }

    pub(crate) fn all(&self) -> &[Key] {
        &self.keys
    }

    /// Seals `plaintext` for `purpose` with the sealing key (AES-256-GCM; `purpose` is bound
    /// as associated data, so a value sealed for one purpose never opens as another, nor as a
    /// cookie: purposes contain a `.`, which cookie names here cannot).
    pub(crate) fn seal(&self, purpose: &str, plaintext: &str) -> String {
        seal_value(self.sealing(), purpose, plaintext)
    }

    /// Opens what [`seal`](Self::seal) made, under any of the keys.
    pub(crate) fn open(&self, purpose: &str, value: &str) -> Option<String> {
        open_value(self.all(), purpose, value)
    }
}

/// AES-256-GCM seal of `plaintext` under the cookie `name` (private jar format:
/// base64(nonce ‖ ciphertext ‖ tag)).
pub(crate) fn seal_value(key: &Key, name: &str, plaintext: &str) -> String {
    let mut jar = CookieJar::new();
    jar.private_mut(key)
        .add(Cookie::new(name.to_string(), plaintext.to_string()));
    jar.get(name)
        .map(|c| c.value().to_string())
        .unwrap_or_default()
}

/// Opens a value sealed by [`seal_value`] under any of `keys`.
pub(crate) fn open_value(keys: &[Key], name: &str, value: &str) -> Option<String> {
    let jar = CookieJar::new();
    keys.iter().find_map(|k| {
        jar.private(k)
            .decrypt(Cookie::new(name.to_string(), value.to_string()))
            .map(|c| c.value().to_string())
    })
}

/// Splits a configured key list (env var or key file) into secrets: one per line or
/// comma-separated, blank entries and `#` comment lines ignored. The first is the sealing key.
#[cfg(test)]
pub fn split_secrets(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secret_rejected_without_echo() {
        let secret = "short-secret-value-31-bytes-xx!".to_string();
        assert_eq!(secret.len(), 31);
        let err = SessionKeys::from_secrets(std::slice::from_ref(&secret)).unwrap_err();
        assert!(!err.contains(&secret));
        assert!(err.contains("31 bytes"), "{err}");
        assert!(err.contains("#1"));

        let good = "a".repeat(40);
        let err = SessionKeys::from_secrets(&[good, "  tiny  ".into()]).unwrap_err();
        assert!(err.contains("#2") && !err.contains("tiny"), "{err}");
    }

    #[test]
    fn empty_list_rejected() {
        assert!(SessionKeys::from_secrets(&[]).is_err());
    }

    #[test]
    fn derivation_is_deterministic_and_trimmed() {
        let s = "0123456789abcdef0123456789abcdef".to_string();
        let a = SessionKeys::from_secrets(std::slice::from_ref(&s)).unwrap();
        let b = SessionKeys::from_secrets(&[format!("{s}\n")]).unwrap();
        assert_eq!(a.sealing().master(), b.sealing().master());
        let c = SessionKeys::from_secrets(&[s.replace('0', "1")]).unwrap();
        assert_ne!(a.sealing().master(), c.sealing().master());
        assert!(!format!("{a:?}").contains("0123"));
    }

    #[test]
    fn random_keys_differ() {
        let a = SessionKeys::random();
        let b = SessionKeys::random();
        assert!(a.is_random());
        assert_ne!(a.sealing().master(), b.sealing().master());
    }

    #[test]
    fn split_secrets_lines_commas_comments() {
        let v = split_secrets("# current first\n  aaa \n\nbbb,ccc\n#old\n");
        assert_eq!(v, vec!["aaa", "bbb", "ccc"]);
        assert!(split_secrets("\n\n").is_empty());
    }
}
