//! Circuit breaker: stop calling a dependency that keeps failing, give it time to recover,
//! and probe before trusting it again.
//!
//! Use it in front of any remote dependency, inside retry (so retries stop when the circuit
//! opens) and outside the attempt timeout (so timeouts count as failures). It does not help
//! with a dependency that is merely slow for everyone — that is the timeout's job — and it
//! is not a rate limiter.
//!
//! **Semantics.** States: Closed, Open, HalfOpen, Isolated (forced open), Disabled (forced
//! closed, counts nothing). While Closed, the circuit opens when, within the sampling window
//! (the last `sampling_duration` in 10 buckets, or the last N calls), at least
//! `minimum_throughput` calls ended and the proportion of failures is ≥ `failure_ratio`; or
//! after `consecutive_failures` failures in a row; or when the proportion of calls slower
//! than the slow-call threshold is ≥ the slow-call ratio. While Open, every call is rejected
//! at once with the time until the break ends. The first call after `break_duration` turns
//! the circuit HalfOpen and runs as a probe; up to `permitted_calls_in_half_open` probes run
//! at once, further calls are rejected (not queued). `success_threshold` successful probes
//! close the circuit with an empty window; one failed probe opens it again (for a break
//! from the generator, if any). A call admitted while Closed that ends after a trip teaches
//! the breaker nothing.
//!
//! **Guarantees.** Every transition is raised exactly once, numbered by `sequence` without
//! gaps, even under contention; listeners on different threads may receive two transitions
//! out of order and can restore it from `sequence`. Admitting and recording a success while
//! closed take no lock and allocate nothing. A cancelled call (a dropped future or permit)
//! gives back its half-open slot.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::{Pipeline, Error, circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, CircuitState}};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let breaker = CircuitBreaker::new(
//!     CircuitBreakerOptions::new()
//!         .failure_ratio(0.5)
//!         .minimum_throughput(4)
//!         .sampling_duration(Duration::from_secs(10))
//!         .break_duration(Duration::from_secs(30)),
//! ).unwrap();
//! let pipeline = Pipeline::builder().circuit_breaker(breaker.clone()).build().unwrap();
//!
//! for _ in 0..4 {
//!     let _ = pipeline.execute(|_| async { Err::<(), _>("down") }).await;
//! }
//! assert_eq!(breaker.state(), CircuitState::Open);
//! let rejected = pipeline.execute(|_| async { Ok::<_, &str>(()) }).await;
//! assert_eq!(rejected, Err(Error::CircuitOpen { retry_after: Some(Duration::from_secs(30)) }));
//! # }
//! ```

mod breaker;
pub mod controller;
mod events;
mod keyed;
mod options;
mod state;
pub mod store;
pub(crate) mod window;

pub use breaker::{CircuitBreaker, Permit, TransitionObserver};
pub use events::{CircuitRejected, CircuitTransition, TransitionOrigin, TransitionReason};
pub use keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerLayer, KeyedCircuitBreakerService};
pub use options::{
    BreakDurationArgs, BreakDurationGenerator, CircuitBreakerOptions, SamplingWindow,
    SlowCallOptions,
};
pub use state::CircuitState;
pub use store::{
    Acquired, CallOutcome, Command, InMemoryStore, ProbeLease, Rejection, StateStore, Ticket,
    TransitionSink,
};
