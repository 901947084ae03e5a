//! The WeChat provider: the HTTP client for the `sns/*` API, the single-flight code exchanger
//! with its result cache, and a built-in WeChat stand-in (the sandbox).
//!
//! Nothing here depends on Pingora or on the session module.

pub mod client;
pub mod code_cache;
pub mod jssdk;
pub mod sandbox;
mod sandbox_jssdk;

#[cfg(test)]
pub(crate) mod testserver;

pub use client::{authorize_url, ExchangeError, WechatClient, WechatClientConfig};
pub use client::{TokenAnswer, UserInfo};
pub use code_cache::{
    Claim, CodeCache, CodeExchanger, ExchangeOutcome, Exchanged, ExchangerConfig, MemoryCodeCache,
    Obtained,
};
pub use sandbox::{Sandbox, SandboxConfig};
