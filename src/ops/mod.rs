//! Operations: request ids, the access log, Prometheus metrics, health answers, the drain on
//! shutdown and the supervisor that reloads.

pub mod access_log;
pub mod clock;
pub mod health;
pub mod lifecycle;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod metrics_listener;
pub mod record;
pub mod request_id;
pub mod supervisor;

/// What kind of request this was, for logs and metrics (a closed set: bounded label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteClass {
    #[default]
    Static,
    Proxy,
    Auth,
    Health,
    Sandbox,
    /// The login relay's endpoints (`/_wxedge/relay/*`).
    Relay,
    Rejected,
}

impl RouteClass {
    pub fn label(self) -> &'static str {
        match self {
            RouteClass::Static => "static",
            RouteClass::Proxy => "proxy",
            RouteClass::Auth => "auth",
            RouteClass::Health => "health",
            RouteClass::Sandbox => "sandbox",
            RouteClass::Relay => "relay",
            RouteClass::Rejected => "rejected",
        }
    }
}
