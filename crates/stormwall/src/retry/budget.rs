//! Retry budget (Finagle / Linkerd): retries may add at most a percentage of the requests,
//! plus a small floor, over a sliding window — so retries cannot multiply load on a
//! dependency that is already failing.

use crate::circuit_breaker::window::TimeWindow;
use crate::clock::{Clock, Stopwatch};
use crate::error::{check, ConfigError};
use std::sync::Arc;
use std::time::Duration;

/// Options of a [`RetryBudget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetOptions {
    /// How long a request's deposit counts. Default: 10 s (Finagle's). Valid: ≥ 1 s and
    /// ≤ 1 hour.
    pub ttl: Duration,
    /// Retries allowed per second whatever the traffic, so a quiet client can still retry.
    /// Default: 10 (Finagle's). Valid: any.
    pub min_retries_per_second: u32,
    /// Retries allowed as a fraction of requests within `ttl`. Default: 0.2 (Finagle's).
    /// Valid: 0 – 10.
    pub percent_can_retry: f64,
    /// The clock. Default: [`Clock::Auto`].
    pub clock: Clock,
}

impl Default for RetryBudgetOptions {
    fn default() -> Self {
        RetryBudgetOptions {
            ttl: Duration::from_secs(10),
            min_retries_per_second: 10,
            percent_can_retry: 0.2,
            clock: Clock::Auto,
        }
    }
}

impl RetryBudgetOptions {
    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "ttl",
                self.ttl,
                "must be ≥ 1s and ≤ 1 hour",
            ));
        }
        if !(0.0..=10.0).contains(&self.percent_can_retry) {
            return Err(ConfigError::new(
                "percent_can_retry",
                self.percent_can_retry,
                "must be between 0 and 10",
            ));
        }
        check::at_least("min_retries_per_second", self.min_retries_per_second, 0)
    }
}

/// A retry budget, shared by every retry strategy holding a clone (one per client, say).
///
/// Each execution deposits one request; each retry must withdraw one retry. A retry is
/// allowed while retries in the last `ttl` stay below
/// `min_retries_per_second × ttl + percent_can_retry × requests in the last ttl`. Under
/// contention a few concurrent withdrawals may overdraw it by the number of racing callers.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// total = requests + retries, failures = retries (the breaker's window, reused).
    window: TimeWindow,
    stopwatch: Stopwatch,
    floor: f64,
    percent: f64,
}

/// The same budget: one made by the same [`new`](Self::new) call (clones share it).
impl PartialEq for RetryBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl RetryBudget {
    /// A budget with `options`, validated.
    pub fn new(options: RetryBudgetOptions) -> Result<Self, ConfigError> {
        options.validate().map_err(|e| e.within("retry_budget"))?;
        Ok(RetryBudget {
            inner: Arc::new(Inner {
                window: TimeWindow::new(options.ttl),
                stopwatch: Stopwatch::start(options.clock),
                floor: f64::from(options.min_retries_per_second) * options.ttl.as_secs_f64(),
                percent: options.percent_can_retry,
            }),
        })
    }

    /// Records a request (a first attempt).
    #[inline]
    pub fn deposit(&self) {
        let now = self.inner.stopwatch.nanos();
        self.inner.window.record(now, false, false);
    }

    /// Takes one retry from the budget; `false` when there is none left.
    pub fn try_withdraw(&self) -> bool {
        let now = self.inner.stopwatch.nanos();
        if self.balance_at(now) < 1.0 {
            return false;
        }
        self.inner.window.record(now, true, false);
        true
    }

    /// Retries available now (may be fractional).
    pub fn balance(&self) -> f64 {
        self.balance_at(self.inner.stopwatch.nanos())
    }

    fn balance_at(&self, now: u64) -> f64 {
        let counts = self.inner.window.counts(now);
        let retries = f64::from(counts.failures);
        let requests = f64::from(counts.total) - retries;
        self.inner.floor + self.inner.percent * requests - retries
    }
}
