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

/// Something a strategy did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Retry is about to wait and try again.
    Retry(RetryScheduled),
    /// A retry was due but the retry budget was empty.
    RetryBudgetExhausted(RetryBudgetExhausted),
    /// Adaptive throttling rejected a call locally.
    Throttled(Throttled),
    /// A timeout cancelled the operation.
    Timeout(TimedOut),
    /// A circuit breaker changed state.
    CircuitTransition(CircuitTransition),
    /// A circuit breaker rejected a call.
    CircuitRejected(CircuitRejected),
    /// Fallback replaced an outcome.
    Fallback(FallbackUsed),
    /// A bulkhead rejected a call.
    BulkheadRejected(BulkheadRejected),
    /// A rate limiter rejected a call.
    RateLimited(RateLimited),
    /// A chaos strategy injected into a call.
    ChaosInjected(ChaosInjected),
    /// Hedging started a further attempt.
    HedgeStarted(HedgeStarted),
    /// Stale-on-error answered with a cached value.
    ServedStale(ServedStale),
    /// One attempt of the operation ended (raised by the pipeline for every call of the
    /// operation, retries and hedges included).
    AttemptCompleted(AttemptCompleted),
    /// A whole execution through the pipeline ended.
    ExecutionCompleted(ExecutionCompleted),
    /// A feature switch changed.
    SwitchChanged(crate::degrade::SwitchChanged),
}

/// Every event kind as (strategy label, event name), in [`Event::index`] order: the
/// metrics listener registers one counter per entry up front.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const EVENT_KINDS: [(&str, &str); 15] = [
    ("retry", "retry"),
    ("retry", "retry_budget_exhausted"),
    ("adaptive_throttle", "throttled"),
    ("timeout", "timeout"),
    ("circuit_breaker", "circuit_transition"),
    ("circuit_breaker", "circuit_rejected"),
    ("fallback", "fallback"),
    ("bulkhead", "bulkhead_rejected"),
    ("rate_limit", "rate_limited"),
    ("chaos", "chaos_injected"),
    ("hedging", "hedge_started"),
    ("stale_on_error", "served_stale"),
    ("pipeline", "attempt_completed"),
    ("pipeline", "execution_completed"),
    ("switch", "switch_changed"),
];

impl Event {
    /// The event's position in [`EVENT_KINDS`].
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn index(&self) -> usize {
        match self {
            Event::Retry(_) => 0,
            Event::RetryBudgetExhausted(_) => 1,
            Event::Throttled(_) => 2,
            Event::Timeout(_) => 3,
            Event::CircuitTransition(_) => 4,
            Event::CircuitRejected(_) => 5,
            Event::Fallback(_) => 6,
            Event::BulkheadRejected(_) => 7,
            Event::RateLimited(_) => 8,
            Event::ChaosInjected(_) => 9,
            Event::HedgeStarted(_) => 10,
            Event::ServedStale(_) => 11,
            Event::AttemptCompleted(_) => 12,
            Event::ExecutionCompleted(_) => 13,
            Event::SwitchChanged(_) => 14,
        }
    }

    /// A short, stable name for the event (a metrics label): `retry`, `timeout`,
    /// `circuit_transition`, `circuit_rejected`, `fallback`, `bulkhead_rejected`,
    /// `rate_limited`, `retry_budget_exhausted`, `throttled`, `chaos_injected`,
    /// `hedge_started`, `served_stale`, `attempt_completed`, `execution_completed`,
    /// `switch_changed`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Retry(_) => "retry",
            Event::RetryBudgetExhausted(_) => "retry_budget_exhausted",
            Event::Throttled(_) => "throttled",
            Event::Timeout(_) => "timeout",
            Event::CircuitTransition(_) => "circuit_transition",
            Event::CircuitRejected(_) => "circuit_rejected",
            Event::Fallback(_) => "fallback",
            Event::BulkheadRejected(_) => "bulkhead_rejected",
            Event::RateLimited(_) => "rate_limited",
            Event::ChaosInjected(_) => "chaos_injected",
            Event::HedgeStarted(_) => "hedge_started",
            Event::ServedStale(_) => "served_stale",
            Event::AttemptCompleted(_) => "attempt_completed",
            Event::ExecutionCompleted(_) => "execution_completed",
            Event::SwitchChanged(_) => "switch_changed",
        }
    }
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
    /// The strategy kind: `retry`, `timeout`, `circuit_breaker`, `fallback`, `pipeline`.
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

    /// Raises the event `make` builds — only if a listener is attached.
    #[inline]
    pub fn emit(&self, strategy: &'static str, make: impl FnOnce() -> Event) {
        if let Some(reporter) = &self.inner {
            let source = EventSource {
                pipeline: &reporter.pipeline,
                strategy,
            };
            reporter.listener.on_event(&source, &make());
        }
    }
}
