//! Chaos: inject faults, latency, fake outcomes or side effects into a share of the calls
//! (Polly's simmy strategies), to prove the pipeline copes before production proves it
//! does not.
//!
//! Put chaos strategies innermost, where the dependency would fail, and switch them on and
//! off at runtime with [`ChaosControl`]. Seed them for reproducible runs. Do not leave them
//! enabled in production unless that is the point.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::{Pipeline, Error};
//! use stormwall::chaos::{Chaos, ChaosOptions, Fault};
//! use stormwall::retry::RetryOptions;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // Half the calls fail before reaching the dependency; retry hides it from the caller.
//! let chaos = Chaos::new(
//!     ChaosOptions::rate(0.5).seed(7),
//!     Fault(|_ctx: &stormwall::Context| Error::Inner("injected")),
//! ).unwrap();
//! let control = chaos.control();
//! let pipeline = Pipeline::builder()
//!     .retry(RetryOptions::constant(Duration::from_millis(10)).max_retries(10))
//!     .strategy(chaos)
//!     .build()
//!     .unwrap();
//! for _ in 0..20 {
//!     assert_eq!(pipeline.execute(|_| async { Ok::<_, &str>("real") }).await, Ok("real"));
//! }
//! control.disable(); // and the chaos stops
//! # }
//! ```

mod events;
mod options;
mod strategy;

pub use events::ChaosInjected;
pub use options::{ChaosControl, ChaosOptions};
pub use strategy::{Behavior, Chaos, Fault, Injection, Latency, Outcome};
