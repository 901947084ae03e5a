//! `/.well-known/acme-challenge/<token>`, read from the ACME webroot at request time (certbot
//! writes the file just before the CA asks for it).

/// The challenge file's bytes for the path, if the token is well formed and the file is there
/// (and small: a key authorization is under 100 bytes).
pub async fn challenge(webroot: &std::path::Path, path: &str) -> Option<Vec<u8>> {
    let token = path.strip_prefix(crate::route::ACME_PREFIX)?;
    let valid = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return None;
    }
    let file = webroot.join(".well-known/acme-challenge").join(token);
    tokio::fs::read(&file)
        .await
        .ok()
        .filter(|b| b.len() <= 64 * 1024)
}
