//! wxedge: one Pingora binary in front of a WeChat H5 site.
//!
//! Modules follow the life of a request:
//! configuration → static files → WeChat OAuth and sessions → proxying to the backend → operations.

pub mod auth;
pub mod config;
pub mod edge;
pub mod front;
pub mod html;
pub mod ops;
pub mod proxy;
pub mod request;
pub mod route;
pub mod server;
pub mod session;
pub mod static_files;
pub mod validation;
pub mod wechat;
