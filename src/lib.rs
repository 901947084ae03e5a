//! wxedge: one Pingora binary in front of a WeChat H5 site.
//!
//! Modules follow the life of a request:
//! configuration → request parsing and routing → static files → WeChat OAuth and sessions →
//! proxying to the backend → operations. Modules are crate-private unless the binary or the
//! fuzz targets (`fuzz/`) use them, so the compiler reports dead code.

pub(crate) mod auth;
pub mod config;
pub(crate) mod front;
pub(crate) mod html;
pub(crate) mod ops;
pub(crate) mod pipeline;
pub mod proxy;
pub(crate) mod reply;
pub mod request;
pub(crate) mod route;
pub mod server;
pub mod session;
pub(crate) mod shared;
pub(crate) mod site;
pub mod static_files;
pub(crate) mod throttle;
pub(crate) mod tls;
pub(crate) mod wechat;

/// The access log's request path (a request's record, dropped), for its benchmark alone
/// (`benches/log_line.rs`); everything else in `ops` stays private.
#[doc(hidden)]
pub mod access_log_bench {
    pub use crate::ops::access_log::{blocks_waiting, flush, init, Format};
    pub use crate::ops::record::{LogFields, RequestRecord};
    pub use crate::ops::RouteClass;
}
