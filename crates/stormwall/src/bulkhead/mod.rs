//! Bulkhead: bound how many calls run at once, so one slow dependency cannot take every
//! task, connection and byte of memory the service has.
//!
//! Use it in front of a dependency whose slowness must not spread (a bulkhead per
//! dependency), or per tenant ([`KeyedBulkhead`]) so one tenant cannot starve the others.
//! A short queue absorbs bursts; a queue timeout bounds the wait. It is not a rate limiter:
//! it limits calls in flight, not calls per second.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::{Pipeline, Error, bulkhead::BulkheadOptions};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let pipeline = Pipeline::builder()
//!     .bulkhead(BulkheadOptions::new(1).queue_limit(1))
//!     .build()
//!     .unwrap();
//! let slow = || pipeline.execute(|_| async {
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, ()>("done")
//! });
//! // One runs, one waits, the third is turned away.
//! let (a, b, c) = tokio::join!(slow(), slow(), slow());
//! assert_eq!((a, b), (Ok("done"), Ok("done")));
//! assert_eq!(c, Err(Error::BulkheadFull));
//! # }
//! ```

mod events;
mod layer;
mod options;
mod slots;
mod strategy;

pub use events::{BulkheadRejected, BulkheadRejection};
pub use layer::{BulkheadLayer, BulkheadService, OwnedSlot};
pub use options::BulkheadOptions;
pub use strategy::{Bulkhead, KeyedBulkhead};
