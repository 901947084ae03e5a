//! The wall clock at one-second resolution, for what shows seconds only (the `Date` header,
//! access-log times): read from `CLOCK_REALTIME_COARSE`, which the kernel updates every tick
//! and the vDSO hands out without reading the TSC (nginx caches its time the same way, once
//! per event-loop turn). Durations keep using `Instant`.

use std::time::{SystemTime, UNIX_EPOCH};

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

#[cfg(test)]
mod tests {
    use super::*;

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
