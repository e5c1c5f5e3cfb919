#![cfg_attr(docsrs, feature(doc_cfg))]
//! # stormwall
//!
//! Resilience pipelines for async Rust, composed outer to inner into one statically-typed
//! pipeline that allocates nothing on the success path, plus a tower
//! [`Layer`](layer::PipelineLayer) to put a pipeline in front of any `tower::Service`.
//!
//! | strategy | module | in one line |
//! |---|---|---|
//! | retry | [`retry`] | try again with backoff and jitter; a shared [`RetryBudget`](retry::RetryBudget) caps the extra load |
//! | timeout | [`timeout`] | give up after a total or per-attempt time |
//! | circuit breaker | [`circuit_breaker`] | stop calling what keeps failing; probe before trusting it again; per key if needed |
//! | bulkhead | [`bulkhead`] | bound calls in flight, with a FIFO queue, per key if needed |
//! | rate limiter | [`rate_limit`] | bound calls per period (GCRA, token bucket, windows), per key if needed |
//! | adaptive throttle | [`retry::AdaptiveThrottle`] | reject locally when the dependency refuses most calls |
//! | hedging | [`hedging`] | race a further attempt against a slow one |
//! | fallback | [`fallback`] | answer something useful instead of an error |
//! | stale-on-error | [`cache`] | answer the last good value for the key when the call fails |
//! | chaos | [`chaos`] | inject faults, latency and fake outcomes, on purpose |
//!
//! Around them: [`telemetry`] (events, `tracing` and `metrics` listeners), [`health`]
//! (tagged health checks), [`clock`] (tokio's clock in paused tests, a cheap recent time
//! elsewhere).
//!
//! ## The pattern
//!
//! A service that calls other services must expect them to be slow, flaky or down. Without
//! protection one slow dependency holds every caller's task and connection until the whole
//! service stalls. A pipeline wraps each call: a total timeout bounds it, retry rides out
//! transient faults, a circuit breaker stops calling a dependency that is down, an attempt
//! timeout bounds each try, a fallback answers something useful when all else failed.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::{Pipeline, Error};
//! use stormwall::retry::{RetryOptions, Jitter};
//! use stormwall::circuit_breaker::CircuitBreakerOptions;
//! use stormwall::fallback::FallbackOptions;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), stormwall::ConfigError> {
//! let pipeline = Pipeline::builder()
//!     .fallback(FallbackOptions::value("payment queued"))  // outermost
//!     .timeout(Duration::from_secs(30))                     // total
//!     .retry(RetryOptions::exponential(Duration::from_millis(200))
//!         .max_retries(3)
//!         .jitter(Jitter::Decorrelated))
//!     .circuit_breaker(CircuitBreakerOptions::new()
//!         .failure_ratio(0.5)
//!         .minimum_throughput(10)
//!         .sampling_duration(Duration::from_secs(10))
//!         .break_duration(Duration::from_secs(30)))
//!     .timeout(Duration::from_secs(10))                     // per attempt, innermost
//!     .build()?;
//!
//! let receipt = pipeline
//!     .execute(|ctx| async move {
//!         // ctx.attempt(), ctx.remaining() ...
//!         Ok::<_, std::io::Error>("charged")
//!     })
//!     .await;
//! assert_eq!(receipt.unwrap(), "charged");
//! # Ok(()) }
//! ```
//!
//! ## Order
//!
//! Builder calls go from outer to inner, like tower's `ServiceBuilder` and Polly's
//! `ResiliencePipelineBuilder`. The usual order is fallback → total timeout → retry →
//! circuit breaker → attempt timeout: the breaker sees every attempt and counts attempt
//! timeouts as failures; retry sees the breaker's rejections (and by default does not retry
//! them); the total timeout bounds retries and their delays.
//!
//! ## Defaults
//!
//! | strategy | option | default |
//! |---|---|---|
//! | retry | `max_retries` | 3 |
//! | retry | `backoff` / `delay` | exponential, 2 s |
//! | retry | `jitter` | `DecorrelatedV2` (Polly's jittered exponential) |
//! | retry | `max_delay` | none |
//! | retry | `should_retry` | every `Err` but other strategies' rejections |
//! | timeout | `timeout` | 30 s |
//! | circuit breaker | `failure_ratio` | 0.1 |
//! | circuit breaker | `minimum_throughput` | 100 |
//! | circuit breaker | `sampling_duration` | 30 s (10 buckets) |
//! | circuit breaker | `break_duration` | 5 s |
//! | circuit breaker | `permitted_calls_in_half_open` / `success_threshold` | 1 / 1 |
//! | circuit breaker | `should_handle` | every `Err` |
//! | fallback | `should_handle` | every `Err` |
//!
//! ## Errors
//!
//! An execution fails with [`Error<E>`]: the operation's own error as [`Error::Inner`], or
//! the decision of a strategy (`Timeout`, `CircuitOpen { retry_after }`, ...). A bad option
//! fails `build()` with a [`ConfigError`] naming the option, the value and the valid range.
//!
//! ## Time
//!
//! Strategies made on a paused tokio clock (`#[tokio::test(start_paused = true)]`) read
//! tokio's clock, so tests take no real time; elsewhere the default
//! [`Clock::Auto`](clock::Clock::Auto) reads a 1 ms *recent time* (one atomic load) where
//! coarse time is enough — window buckets, break expiry, rate limits — instead of a
//! `clock_gettime` per call. See [`clock`] for the rule and for [`Clock::Tokio`](clock::Clock::Tokio).
//!
//! ## Features
//!
//! All on by default but `env`; `default-features = false` leaves tokio (and a few small
//! crates) only.
//!
//! | feature | adds |
//! |---|---|
//! | `cache` | [`cache::MemoryCache`] (on `moka`) |
//! | `metrics` | [`telemetry::MetricsListener`] (the `metrics` facade) |
//! | `serde` | serde for every strategy's options, [`registry::PipelineSpec`] and the health report |
//! | `fast-clock` | [`Clock::Fast`](clock::Clock::Fast) and the default clock's fine readings on the CPU counter (`quanta`) |
//! | `tracing` | [`telemetry::TracingListener`], and a span per execution and per attempt |
//! | `env` (not default) | `STORMWALL__PAYMENT__RETRY__MAX_RETRIES=5` overrides of a config file (`registry::RegistrySpec::from_toml_with_env`, on `figment`) |

pub mod bulkhead;
pub mod cache;
pub mod chaos;
pub mod circuit_breaker;
pub mod clock;
pub mod degrade;
mod error;
pub mod fallback;
pub mod health;
pub mod hedging;
mod keyed;
pub mod layer;
mod layer_future;
pub mod pipeline;
mod random;
pub mod rate_limit;
pub mod registry;
pub mod retry;
pub mod telemetry;
pub mod timeout;

pub use error::{ConfigError, Error};
pub use pipeline::{Context, Pipeline, PipelineBuilder};
