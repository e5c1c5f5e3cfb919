//! Hedging: when a call is slow (or fails), send another one — possibly to another
//! endpoint — and take whichever answers first.
//!
//! Use it for idempotent reads where tail latency matters (p99 of a replicated store) and
//! the dependency has the capacity for the extra calls. Do not use it for writes that are
//! not idempotent, nor in front of a dependency that is overloaded — hedges add load.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::{Pipeline, hedging::HedgingOptions};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let pipeline = Pipeline::builder()
//!     .hedging(HedgingOptions::latency(Duration::from_millis(100)))
//!     .build()
//!     .unwrap();
//! let answer = pipeline
//!     .execute(|ctx| async move {
//!         // The primary replica stalls; the hedge (attempt 1) asks another one.
//!         let replica = if ctx.attempt() == 0 { "slow" } else { "fast" };
//!         if replica == "slow" {
//!             tokio::time::sleep(Duration::from_secs(10)).await;
//!         }
//!         Ok::<_, ()>(replica)
//!     })
//!     .await;
//! assert_eq!(answer, Ok("fast"));
//! # }
//! ```

mod events;
mod options;
mod strategy;

pub use events::HedgeStarted;
pub use options::{HedgingMode, HedgingOptions};
pub use strategy::Hedging;
