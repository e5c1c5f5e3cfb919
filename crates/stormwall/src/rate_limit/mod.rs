//! Rate limiter: cap how many calls per period go out (or come in), overall or per tenant.
//!
//! Use it to stay within a dependency's quota, to shed load before it reaches a struggling
//! service, or to keep one tenant from taking everyone's share ([`KeyedRateLimiter`]). It
//! limits calls per period, not calls in flight — that is the bulkhead's job. Rejections
//! carry `retry_after`, so callers (and retry) know when to come back.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::{Pipeline, Error, rate_limit::RateLimitOptions};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let pipeline = Pipeline::builder()
//!     .rate_limit(RateLimitOptions::per_second(2))
//!     .build()
//!     .unwrap();
//! let call = || pipeline.execute(|_| async { Ok::<_, ()>(()) });
//! assert_eq!(call().await, Ok(()));
//! assert_eq!(call().await, Ok(()));
//! assert_eq!(call().await, Err(Error::RateLimited { retry_after: Duration::from_millis(500) }));
//! tokio::time::advance(Duration::from_millis(500)).await;
//! assert_eq!(call().await, Ok(()));
//! # }
//! ```

mod events;
mod layer;
mod limiter;
mod options;
mod strategy;

pub use events::RateLimited;
pub use layer::{RateLimitLayer, RateLimitService};
pub use options::{RateLimitAlgorithm, RateLimitOptions};
pub use strategy::{KeyedRateLimiter, RateLimiter};
