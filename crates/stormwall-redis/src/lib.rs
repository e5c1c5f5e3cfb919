#![cfg_attr(docsrs, feature(doc_cfg))]
//! Circuit breaker state shared across replicas through Redis.
//!
//! Ten replicas of a service, each with a breaker that opens after 5 failures, let 50 calls
//! through to a dead dependency before all of them open — and disagree for a while after.
//! With [`RedisStateStore`] they share one state: the first 5 failures anywhere open the
//! circuit everywhere, within a pub/sub message.
//!
//! - Every decision is one Lua script run atomically on Redis's clock, with a version that
//!   only grows, so a stale replica cannot overwrite newer state; scripts are sent by SHA
//!   and reloaded transparently after `SCRIPT FLUSH` or a restart.
//! - The success path makes no round trip: replicas cache the state and learn transitions
//!   over pub/sub; successes travel with the next failure report.
//! - One half-open probe lease cluster-wide (or `permitted_calls_in_half_open`).
//! - Manual isolate / close / disable from any replica act on all.
//! - Redis down: each replica falls back to its local breaker within 50 ms, logs it once,
//!   and rejoins when Redis returns.
//! - Keys share one hash tag per breaker (`stormwall:{name}:...`, Redis Cluster safe) and
//!   expire when idle.
//!
//! Also here: [`RedisRateLimiter`] (GCRA in Lua, one quota per tenant across replicas) and
//! [`RedisCache`] (the core's stale-on-error cache, shared).

mod cache;
mod connection;
mod error;
mod rate_limit;
mod scripts;
mod store;

pub use cache::RedisCache;
pub use error::RedisStoreError;
pub use rate_limit::RedisRateLimiter;
pub use store::{RedisStateStore, RedisStoreOptions};
