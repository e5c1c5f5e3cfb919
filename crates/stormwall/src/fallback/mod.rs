//! Fallback: answer something useful when the operation could not.
//!
//! Use it where a degraded answer beats an error: a cached or default value, "accepted,
//! will process later", an empty recommendation list. Do not use it to hide failures the
//! caller must act on.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::{Pipeline, fallback::FallbackOptions};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let pipeline = Pipeline::builder()
//!     .fallback(FallbackOptions::value("queued for later"))
//!     .timeout(Duration::from_millis(100))
//!     .build()
//!     .unwrap();
//!
//! let answer = pipeline
//!     .execute(|_| async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, std::io::Error>("charged")
//!     })
//!     .await;
//! assert_eq!(answer.unwrap(), "queued for later");
//! # }
//! ```

mod events;
mod options;
mod strategy;

pub use events::FallbackUsed;
pub use options::FallbackOptions;
pub use strategy::{Fallback, FallbackAction, FallbackFn, FallbackValue};
