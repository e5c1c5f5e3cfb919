//! Cache / stale-on-error: when the operation fails, answer with the last good value for
//! the same key, if it is recent enough.
//!
//! Use it for reads whose slightly old answer beats an error (a catalogue, a price list,
//! inventory counts). Do not use it where a stale answer is wrong (balances, permissions).
//! The key is the context's [`key`](crate::Context::key); the cache is in memory
//! ([`MemoryCache`], on `moka`) or anything implementing [`ValueCache`] (Redis).
//!
//! ```
//! # #[cfg(feature = "cache")]
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use stormwall::{Context, Pipeline};
//! use stormwall::cache::{MemoryCache, StaleOnError, StaleOnErrorOptions};
//!
//! let cache = MemoryCache::new(10_000, Duration::from_secs(600));
//! let pipeline = Pipeline::builder()
//!     .strategy(StaleOnError::new(cache, StaleOnErrorOptions::new(Duration::from_secs(60))).unwrap())
//!     .build()
//!     .unwrap();
//! let sku = || Context::new().with_key("sku-42");
//! assert_eq!(pipeline.execute_with(sku(), |_| async { Ok::<_, &str>(7u32) }).await, Ok(7));
//! // The inventory service is down: the last count is served.
//! assert_eq!(pipeline.execute_with(sku(), |_| async { Err::<u32, _>("down") }).await, Ok(7));
//! # }
//! # #[cfg(not(feature = "cache"))] fn main() {}
//! ```

mod events;
mod store;
mod strategy;

pub use events::ServedStale;
#[cfg(feature = "cache")]
pub use store::MemoryCache;
pub use store::{Cached, ValueCache};
pub use strategy::{StaleOnError, StaleOnErrorOptions};
