//! Retry: run the operation again when it fails with something transient.
//!
//! Use it for failures that go away on their own (a dropped connection, a 503, a timeout).
//! Do not use it for failures that will not (a 400, a missing record), nor for operations
//! that are not safe to repeat. Put a total timeout outside it so the retries cannot run
//! forever, and a breaker inside it so retries stop hammering a dependency that is down.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::{Pipeline, retry::{RetryOptions, Jitter}};
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let pipeline = Pipeline::builder()
//!     .retry(RetryOptions::exponential(Duration::from_millis(100))
//!         .max_retries(3)
//!         .jitter(Jitter::Full))
//!     .build()
//!     .unwrap();
//!
//! let calls = AtomicU32::new(0);
//! let answer = pipeline
//!     .execute(|_ctx| {
//!         let n = calls.fetch_add(1, Ordering::Relaxed);
//!         async move { if n < 2 { Err("flaky") } else { Ok(42) } }
//!     })
//!     .await;
//! assert_eq!(answer, Ok(42));
//! assert_eq!(calls.load(Ordering::Relaxed), 3);
//! # }
//! ```

mod backoff;
mod budget;
mod events;
mod options;
mod strategy;
mod throttle;

pub use backoff::{Backoff, Jitter};
pub use budget::{RetryBudget, RetryBudgetOptions};
pub use events::{RetryBudgetExhausted, RetryScheduled, Throttled};
pub use options::{NoDelayGenerator, RetryOptions};
pub use strategy::{DelayGenerator, Retry};
pub use throttle::{AdaptiveThrottle, AdaptiveThrottleOptions};
