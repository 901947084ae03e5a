//! `X-Request-ID`: kept when the client (or a load balancer) sent a sane one, made otherwise.

use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// The process id, read once (each `std::process::id()` is a system call).
static PID: once_cell::sync::Lazy<u64> = once_cell::sync::Lazy::new(|| std::process::id() as u64);

/// A sane incoming id: short, visible ASCII, nothing that could break a log line.
pub fn accept(incoming: Option<&[u8]>) -> Option<String> {
    let v = incoming?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
    ok.then(|| String::from_utf8_lossy(v).into_owned())
}

/// 32 hex characters, unique per process and across processes.
pub fn generate() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = (t as u64) ^ (*PID << 32);
    let hi = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), seed);
    let lo = xxhash_rust::xxh3::xxh3_64_with_seed(&t.to_le_bytes(), n);
    format!("{hi:016x}{lo:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(accept(Some(b"abc-123")), Some("abc-123".into()));
        assert_eq!(accept(Some(b"a b")), None);
        assert_eq!(accept(Some(b"\"x\n")), None);
        assert_eq!(accept(Some(&[b'a'; 200])), None);
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
