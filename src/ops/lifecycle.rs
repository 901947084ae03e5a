//! Shutdown and upgrade, made graceful for real.
//!
//! Pingora's grace period is a fixed sleep, after which the runtimes are dropped with whatever
//! requests are still running. So wxedge (1) stops keep-alive as soon as a shutdown or upgrade
//! starts, so clients move to new connections (the new process) instead of racing a close, and
//! (2) exits as soon as the last in-flight request is done, using `grace_period_seconds` only
//! as the upper bound of that drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pingora::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::ServiceWithDependents;
use tokio::sync::broadcast::Receiver;

use super::metrics::METRICS;

static DRAINING: AtomicBool = AtomicBool::new(false);

/// True once this process is handing over or shutting down.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// The drain watcher, as a Pingora background service: services start in the process that
/// serves, after any `-d` fork (a thread spawned before `run_forever` would stay in the parent).
pub fn service(server: &Server) -> impl ServiceWithDependents {
    let phases = server.watch_execution_phase();
    background_service("lifecycle", Watcher(Mutex::new(Some(phases))))
}

struct Watcher(Mutex<Option<Receiver<ExecutionPhase>>>);

#[async_trait::async_trait]
impl BackgroundService for Watcher {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let phases = self.0.lock().ok().and_then(|mut p| p.take());
        if let Some(phases) = phases {
            watch(phases);
        }
    }
}

/// A thread of its own: it must keep running while Pingora's runtimes shut down.
fn watch(mut phases: Receiver<ExecutionPhase>) {
    let spawned = std::thread::Builder::new()
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
        });
    if let Err(e) = spawned {
        log::error!("lifecycle: no drain watcher ({e}): shutdowns wait the whole grace period");
    }
}
