//! Process limits, like nginx's `worker_rlimit_nofile` and `worker_connections`: the soft
//! open-file limit is raised to the hard one at start, and client connections past
//! `max_connections` are closed at once instead of running the process into the limit (where
//! the accept loop would fail and log for every new client).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::metrics::METRICS;

static OPEN: AtomicUsize = AtomicUsize::new(0);
static MAX: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Descriptors kept for everything but client connections (listeners, log, dist files, ...).
const RESERVE: u64 = 128;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; the (soft, hard) limits now in force.
pub fn raise_open_files() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, 0);
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    // `rlim_t` is u64 on Linux.
    (lim.rlim_cur, lim.rlim_max)
}

/// The connection limit: `configured`, or (0) what the open-file limit allows.
pub fn set_max_connections(configured: usize, open_files: u64) -> usize {
    let max = if configured > 0 {
        configured
    } else {
        (open_files.saturating_sub(RESERVE) / 2).max(64) as usize
    };
    MAX.store(max, Ordering::Relaxed);
    max
}

/// Holds one client connection's place; `None` when the limit is reached (close it).
pub struct ConnectionSlot(());

impl ConnectionSlot {
    pub fn take() -> Option<ConnectionSlot> {
        if OPEN.fetch_add(1, Ordering::Relaxed) >= MAX.load(Ordering::Relaxed) {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            METRICS.connections_refused.inc();
            return None;
        }
        Some(ConnectionSlot(()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_limit_leaves_a_reserve_and_two_descriptors_per_connection() {
        assert_eq!(set_max_connections(0, 1_048_576), (1_048_576 - 128) / 2);
        assert_eq!(set_max_connections(0, 100), 64);
        assert_eq!(set_max_connections(500, 1_048_576), 500);
        MAX.store(usize::MAX, Ordering::Relaxed);
    }

    #[test]
    fn the_raised_limit_is_the_hard_one() {
        let (soft, hard) = raise_open_files();
        assert_eq!(soft, hard);
    }
}
