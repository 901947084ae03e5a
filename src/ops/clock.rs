//! The wall clock at one-second resolution, for what shows seconds only (the `Date` header,
//! access-log times): read from `CLOCK_REALTIME_COARSE`, which the kernel updates every tick
//! and the vDSO hands out without reading the TSC (nginx caches its time the same way, once
//! per event-loop turn). Durations keep using `Instant`.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, from the coarse clock (at most a tick behind).
pub fn unix_secs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 && ts.tv_sec > 0 {
        return ts.tv_sec as u64;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

thread_local! {
    /// The `Date` value, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Call `f` with the current HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn with_http_date(f: impl FnOnce(&[u8])) {
    let secs = unix_secs();
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            }
        }
        f(&d.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_is_an_http_date() {
        let mut got = Vec::new();
        with_http_date(|d| got.extend_from_slice(d));
        let s = String::from_utf8(got).unwrap();
        assert!(httpdate::parse_http_date(&s).is_ok(), "{s}");
    }

    #[test]
    fn the_coarse_clock_is_the_wall_clock() {
        let fine = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let coarse = unix_secs();
        assert!(
            coarse + 1 >= fine && coarse <= fine + 1,
            "{coarse} vs {fine}"
        );
    }
}
