//! `X-Request-ID`: kept when the client (or a load balancer) sent a sane one, made otherwise.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Gives each thread its own run of ids.
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's seed (process id, start time, thread number) and how many ids it made:
    /// no clock read and no shared counter per request.
    static MINE: (u64, Cell<u64>) = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let thread = THREADS.fetch_add(1, Ordering::Relaxed);
        let seed = xxhash_rust::xxh3::xxh3_64(
            &[t.to_le_bytes().as_slice(), &std::process::id().to_le_bytes(), &thread.to_le_bytes()].concat(),
        );
        (seed, Cell::new(0))
    };
}

/// A sane incoming id: short, visible ASCII, nothing that could break a log line.
pub fn accept(incoming: Option<&[u8]>) -> Option<String> {
    let v = incoming?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
    ok.then(|| String::from_utf8_lossy(v).into_owned())
}

/// 32 hex characters, unique per process and across processes: this thread's seed and the
/// number of its id, each mixed by xxh3 (a seed collision would need two threads started in
/// the same nanosecond with the same process id).
pub fn generate() -> String {
    let (seed, n) = MINE.with(|(seed, count)| {
        let n = count.get().wrapping_add(1);
        count.set(n);
        (*seed, n)
    });
    let hi = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), seed);
    let lo = xxhash_rust::xxh3::xxh3_64_with_seed(&seed.to_le_bytes(), n);
    let mut id = [0u8; 32];
    hex_into(&mut id[..16], hi);
    hex_into(&mut id[16..], lo);
    // Hex digits: always UTF-8.
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

fn hex_into(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
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
        let other = std::thread::spawn(generate).join().unwrap();
        let mut all: Vec<String> = (0..1000).map(|_| generate()).collect();
        all.extend([a, b, other]);
        assert!(all
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit())));
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "ids repeat");
    }
}
