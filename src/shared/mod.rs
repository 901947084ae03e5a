//! State the replicas share through Redis (`redis_url`; off by default: one replica needs
//! nothing shared, sessions being sealed cookies):
//!
//! * [`RedisCodeCache`]: the OAuth code cache and its single-flight across replicas, so that
//!   the loads of one code reach WeChat once whichever replicas they land on;
//! * [`Revocations`]: logout and the admin revocation, refused on every replica;
//! * [`RedisSpentTickets`]: a login relay ticket is used once, whichever replica takes it;
//! * [`RedisCredentials`]: the account's access_token and jsapi_ticket, fetched by one replica
//!   for all of them.
//!
//! Redis trouble never breaks a login: every operation is bounded and falls back to what this
//! replica knows ([`client`]).

pub mod client;
pub mod codes;
pub mod credentials;
pub mod revocation;
pub mod tickets;

pub use client::Redis;
pub use codes::RedisCodeCache;
pub use credentials::RedisCredentials;
pub use revocation::Revocations;
pub use tickets::RedisSpentTickets;
