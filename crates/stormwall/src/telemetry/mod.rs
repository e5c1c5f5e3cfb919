//! Telemetry: every strategy reports what it did as an [`Event`] to the pipeline's
//! [`EventListener`].
//!
//! Listeners run inline, on the task that raised the event, so keep them short (count,
//! log, forward to a channel). With no listener attached, raising an event costs one
//! branch: the event is never even built.
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
//! use std::time::Duration;
//! use stormwall::{Pipeline, retry::RetryOptions, telemetry::{Event, EventListener, EventSource}};
//!
//! #[derive(Default)]
//! struct CountRetries(AtomicU32);
//! impl EventListener for CountRetries {
//!     fn on_event(&self, _source: &EventSource<'_>, event: &Event) {
//!         if let Event::Retry(_) = event {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let counter = Arc::new(CountRetries::default());
//! let pipeline = Pipeline::builder()
//!     .name("payments")
//!     .listener(counter.clone())
//!     .retry(RetryOptions::constant(Duration::from_millis(10)).max_retries(2))
//!     .build()
//!     .unwrap();
//! let _ = pipeline.execute(|_| async { Err::<(), _>("down") }).await;
//! assert_eq!(counter.0.load(Ordering::Relaxed), 2);
//! # }
//! ```

#[cfg(feature = "metrics")]
mod metrics_listener;
#[cfg(feature = "tracing")]
mod tracing_listener;

#[cfg(feature = "metrics")]
pub use metrics_listener::MetricsListener;
#[cfg(feature = "tracing")]
pub use tracing_listener::TracingListener;

use crate::bulkhead::BulkheadRejected;
use crate::cache::ServedStale;
use crate::chaos::ChaosInjected;
use crate::circuit_breaker::{CircuitRejected, CircuitTransition};
use crate::clock::{Clock, Mark, Timer};
use crate::fallback::FallbackUsed;
use crate::hedging::HedgeStarted;
use crate::rate_limit::RateLimited;
use crate::retry::{RetryBudgetExhausted, RetryScheduled, Throttled};
use crate::timeout::TimedOut;
use std::sync::Arc;
use std::time::Duration;

/// The strategy labels events carry ([`EventSource::strategy`], the `strategy` label of
/// `stormwall_strategy_events_total`), one constant each so that no emitter spells one.
pub mod strategy {
    /// [`crate::retry`].
    pub const RETRY: &str = "retry";
    /// [`crate::retry::AdaptiveThrottle`].
    pub const ADAPTIVE_THROTTLE: &str = "adaptive_throttle";
    /// [`crate::timeout`].
    pub const TIMEOUT: &str = "timeout";
    /// [`crate::circuit_breaker`].
    pub const CIRCUIT_BREAKER: &str = "circuit_breaker";
    /// [`crate::fallback`].
    pub const FALLBACK: &str = "fallback";
    /// [`crate::bulkhead`].
    pub const BULKHEAD: &str = "bulkhead";
    /// [`crate::rate_limit`].
    pub const RATE_LIMIT: &str = "rate_limit";
    /// [`crate::chaos`].
    pub const CHAOS: &str = "chaos";
    /// [`crate::hedging`].
    pub const HEDGING: &str = "hedging";
    /// [`crate::cache`] (stale-on-error).
    pub const STALE_ON_ERROR: &str = "stale_on_error";
    /// The pipeline itself (attempts and executions).
    pub const PIPELINE: &str = "pipeline";
    /// [`crate::degrade`] (feature switches).
    pub const SWITCH: &str = "switch";
    /// [`crate::registry`] (reloads).
    pub const REGISTRY: &str = "registry";
}

/// Declares [`Event`] from one table: each row is a variant, its payload, the strategy that
/// raises it and its stable name. [`Event::index`], [`Event::name`], [`Event::strategy`]
/// and `EVENT_KINDS` all come from the rows, so they cannot disagree.
macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) => ($strategy:ident, $name:literal), )*) => {
        /// Something a strategy did.
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum Event {
            $( $(#[$doc])* $variant($payload), )*
        }

        /// The variants' positions, in declaration order.
        #[allow(dead_code)]
        #[repr(usize)]
        enum Kind {
            $( $variant, )*
        }

        /// Every event kind as (strategy label, event name), in [`Event::index`] order:
        /// the metrics listener registers one counter per entry up front.
        #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
        pub(crate) const EVENT_KINDS: &[(&str, &str)] = &[ $( (strategy::$strategy, $name), )* ];

        impl Event {
            /// The event's position in `EVENT_KINDS`.
            #[inline]
            #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
            pub(crate) fn index(&self) -> usize {
                match self {
                    $( Event::$variant(_) => Kind::$variant as usize, )*
                }
            }

            /// A short, stable name for the event (a metrics label), e.g. `retry`,
            /// `circuit_transition`, `attempt_completed`.
            #[inline]
            pub fn name(&self) -> &'static str {
                match self {
                    $( Event::$variant(_) => $name, )*
                }
            }

            /// The label of the strategy that raises it (one of the [`strategy`] constants).
            #[inline]
            pub fn strategy(&self) -> &'static str {
                match self {
                    $( Event::$variant(_) => strategy::$strategy, )*
                }
            }
        }
    };
}

events! {
    /// Retry is about to wait and try again.
    Retry(RetryScheduled) => (RETRY, "retry"),
    /// A retry was due but the retry budget was empty.
    RetryBudgetExhausted(RetryBudgetExhausted) => (RETRY, "retry_budget_exhausted"),
    /// Adaptive throttling rejected a call locally.
    Throttled(Throttled) => (ADAPTIVE_THROTTLE, "throttled"),
    /// A timeout cancelled the operation.
    Timeout(TimedOut) => (TIMEOUT, "timeout"),
    /// A circuit breaker changed state.
    CircuitTransition(CircuitTransition) => (CIRCUIT_BREAKER, "circuit_transition"),
    /// A circuit breaker rejected a call.
    CircuitRejected(CircuitRejected) => (CIRCUIT_BREAKER, "circuit_rejected"),
    /// Fallback replaced an outcome.
    Fallback(FallbackUsed) => (FALLBACK, "fallback"),
    /// A bulkhead rejected a call.
    BulkheadRejected(BulkheadRejected) => (BULKHEAD, "bulkhead_rejected"),
    /// A rate limiter rejected a call.
    RateLimited(RateLimited) => (RATE_LIMIT, "rate_limited"),
    /// A chaos strategy injected into a call.
    ChaosInjected(ChaosInjected) => (CHAOS, "chaos_injected"),
    /// Hedging started a further attempt.
    HedgeStarted(HedgeStarted) => (HEDGING, "hedge_started"),
    /// Stale-on-error answered with a cached value.
    ServedStale(ServedStale) => (STALE_ON_ERROR, "served_stale"),
    /// One attempt of the operation ended (raised by the pipeline for every call of the
    /// operation, retries and hedges included).
    AttemptCompleted(AttemptCompleted) => (PIPELINE, "attempt_completed"),
    /// A whole execution through the pipeline ended.
    ExecutionCompleted(ExecutionCompleted) => (PIPELINE, "execution_completed"),
    /// A feature switch changed.
    SwitchChanged(crate::degrade::SwitchChanged) => (SWITCH, "switch_changed"),
    /// A [`PipelineRegistry`](crate::registry::PipelineRegistry) reloaded a pipeline.
    PipelineReloaded(crate::registry::PipelineReloaded) => (REGISTRY, "pipeline_reloaded"),
}

/// A whole execution through the pipeline ended, after every strategy had its say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionCompleted {
    /// Wall time from the call to `execute` to its outcome.
    pub duration: Duration,
    /// Whether the outcome was `Ok`.
    pub success: bool,
}

/// One attempt of the operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptCompleted {
    /// 0 for the first attempt.
    pub attempt: u32,
    /// How long the operation ran.
    pub duration: Duration,
    /// Whether it returned `Ok`.
    pub success: bool,
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSource<'a> {
    /// The pipeline's name (`"default"` unless set with `PipelineBuilder::name`).
    pub pipeline: &'a str,
    /// The strategy kind, one of the [`strategy`] constants: `retry`, `timeout`,
    /// `circuit_breaker`, `fallback`, `pipeline`, ...
    pub strategy: &'static str,
}

/// Receives every event the strategies of a pipeline raise.
///
/// Called inline on the task that raised the event; must not block. A listener must not
/// call back into the manual control of the breaker that raised a transition.
pub trait EventListener: Send + Sync + 'static {
    /// Handles one event.
    fn on_event(&self, source: &EventSource<'_>, event: &Event);
}

/// What each strategy holds to raise events: the pipeline's name and its listener.
///
/// One pointer, `None` without a listener: cheap to hold in every strategy and every
/// attempt, and cloned (one atomic increment) only when a listener is attached.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Reporter>>,
}

struct Reporter {
    pipeline: Arc<str>,
    listener: Arc<dyn EventListener>,
    /// Times attempts and executions for the listener.
    timer: Timer,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("pipeline", &self.pipeline())
            .field("listener", &self.is_enabled())
            .finish()
    }
}

impl Telemetry {
    /// Telemetry for the pipeline `name`, reporting to `listener` (if any).
    pub fn new(name: impl Into<Arc<str>>, listener: Option<Arc<dyn EventListener>>) -> Self {
        Self::with_clock(name, listener, Clock::Auto)
    }

    /// Like [`new`](Self::new), timing attempts and executions on `clock`.
    pub fn with_clock(
        name: impl Into<Arc<str>>,
        listener: Option<Arc<dyn EventListener>>,
        clock: Clock,
    ) -> Self {
        let pipeline = name.into();
        Telemetry {
            inner: listener.map(|listener| {
                Arc::new(Reporter {
                    pipeline,
                    listener,
                    timer: Timer::new(clock),
                })
            }),
        }
    }

    /// The current moment on the telemetry's clock (`None` without a listener).
    #[inline]
    pub(crate) fn mark(&self) -> Option<Mark> {
        self.inner.as_ref().map(|r| r.timer.mark())
    }

    /// The current moment on the telemetry's clock, read afresh: an end (`None` without a
    /// listener).
    #[inline]
    pub(crate) fn now(&self) -> Option<Mark> {
        self.inner.as_ref().map(|r| r.timer.now())
    }

    /// The time from `start` to `end` on the telemetry's clock.
    #[inline]
    pub(crate) fn between(&self, start: Option<Mark>, end: Option<Mark>) -> Duration {
        match (&self.inner, start, end) {
            (Some(r), Some(start), Some(end)) => r.timer.between(start, end),
            _ => Duration::ZERO,
        }
    }

    /// The pipeline's name (`"default"` when no listener is attached: nothing reads it).
    pub fn pipeline(&self) -> &str {
        self.inner.as_ref().map_or("default", |r| &r.pipeline)
    }

    /// `true` when a listener is attached.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Raises the event `make` builds — only if a listener is attached. `strategy` is one
    /// of the [`strategy`] constants, the one the event's row names.
    #[inline]
    pub fn emit(&self, strategy: &'static str, make: impl FnOnce() -> Event) {
        if let Some(reporter) = &self.inner {
            let source = EventSource {
                pipeline: &reporter.pipeline,
                strategy,
            };
            let event = make();
            debug_assert_eq!(
                strategy,
                event.strategy(),
                "an event is raised under the strategy its row in the table names"
            );
            reporter.listener.on_event(&source, &event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_event_once_at_its_index() {
        let retry = Event::Retry(RetryScheduled {
            attempt: 0,
            delay: Duration::ZERO,
        });
        assert_eq!(EVENT_KINDS[retry.index()], (retry.strategy(), retry.name()));
        let done = Event::ExecutionCompleted(ExecutionCompleted {
            duration: Duration::ZERO,
            success: true,
        });
        assert_eq!(
            EVENT_KINDS[done.index()],
            ("pipeline", "execution_completed")
        );
        let mut names: Vec<_> = EVENT_KINDS.iter().map(|(_, name)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EVENT_KINDS.len(), "event names are unique");
    }
}
