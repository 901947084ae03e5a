//! Shutdown and upgrade, made graceful for real.
//!
//! Pingora's grace period is a fixed sleep, after which the runtimes are dropped with whatever
//! requests are still running. So wxedge (1) stops keep-alive as soon as a shutdown or upgrade
//! starts, so clients move to new connections (the new process) instead of racing a close, and
//! (2) exits as soon as the last in-flight request is done, using `grace_period_seconds` only
//! as the upper bound of that drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pingora::server::{ExecutionPhase, Server};

use super::metrics::METRICS;

static DRAINING: AtomicBool = AtomicBool::new(false);

/// True once this process is handing over or shutting down.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

pub fn watch(server: &Server) {
    let mut phases = server.watch_execution_phase();
    std::thread::Builder::new()
        .name("wxedge-lifecycle".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::GracefulUpgradeTransferringFds)
                | Ok(ExecutionPhase::GracefulTerminate)
                | Ok(ExecutionPhase::ShutdownStarted) => {
                    if !DRAINING.swap(true, Ordering::Relaxed) {
                        log::info!("draining: keep-alive off, waiting for in-flight requests");
                    }
                }
                Ok(ExecutionPhase::ShutdownGracePeriod) => {
                    // The listeners are closed now; leave when nothing is in flight.
                    let mut idle_for = Duration::ZERO;
                    loop {
                        let step = Duration::from_millis(50);
                        std::thread::sleep(step);
                        idle_for = if METRICS.in_flight.get() <= 0 {
                            idle_for + step
                        } else {
                            Duration::ZERO
                        };
                        if idle_for >= Duration::from_millis(200) {
                            log::info!("drained: no request in flight, exiting");
                            super::access_log::flush(Duration::from_secs(5));
                            std::process::exit(0);
                        }
                    }
                }
                // Pingora exits on its own after this (the grace period ran out).
                Ok(ExecutionPhase::ShutdownRuntimes) => {
                    super::access_log::flush(Duration::from_secs(2))
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        })
        .expect("spawning the lifecycle thread");
}
