//! Timeout: give up on an operation that takes too long.
//!
//! Use one outermost as a total budget for the whole execution (retries included), and one
//! innermost as a budget per attempt. Without a timeout, a slow dependency holds the
//! caller's task, connection and memory for as long as it likes.
//!
//! Polly distinguishes *optimistic* timeouts (the operation honours a cancellation token)
//! from *pessimistic* ones (the caller walks away, the operation keeps running). A Rust
//! future has no such split: it only runs while it is polled, so dropping it cancels it at
//! its next await point, and its destructors release what it held. Every timeout here is
//! therefore both cheap and real. (Blocking code run with `spawn_blocking` is the
//! exception: a dropped `JoinHandle` does not stop the thread.)
//!
//! ```
//! use std::time::Duration;
//! use stormwall::{Pipeline, Error};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let pipeline = Pipeline::builder()
//!     .timeout(Duration::from_secs(1))
//!     .build()
//!     .unwrap();
//!
//! let outcome = pipeline
//!     .execute(|ctx| async move {
//!         assert!(ctx.remaining().unwrap() <= Duration::from_secs(1));
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok::<_, ()>("too late")
//!     })
//!     .await;
//! assert_eq!(outcome, Err(Error::Timeout(Duration::from_secs(1))));
//! # }
//! ```

mod events;
mod future;
mod options;
mod strategy;

pub use events::TimedOut;
pub use future::TimeoutFuture;
pub use options::TimeoutOptions;
pub use strategy::Timeout;
