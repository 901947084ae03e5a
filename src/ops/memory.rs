//! Giving freed memory back to the system. Idle keep-alive connections give their buffers back
//! after a second (`front::read`), but glibc keeps freed pages in the process unless asked:
//! a burst of connections would otherwise leave the process at its peak size for good.

use std::sync::Once;
use std::time::Duration;

/// How often freed memory is handed back (a `malloc_trim` walks the heap: not per request).
const EVERY: Duration = Duration::from_secs(5);

/// Start the trimmer, once, in the serving process (threads started before Pingora's `-d`
/// fork would not survive it).
pub fn start_trimmer() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        let _ = std::thread::Builder::new()
            .name("wxedge-trim".into())
            .spawn(|| loop {
                std::thread::sleep(EVERY);
                // SAFETY: malloc_trim is thread-safe and takes a plain integer.
                unsafe {
                    libc::malloc_trim(64 * 1024);
                }
            });
    });
}
