use crate::error::{check, ConfigError};
use crate::pipeline::OnError;
use std::time::Duration;

/// When hedged attempts start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgingMode {
    /// The next attempt starts when the previous ones have not answered within the delay
    /// (or at once when one fails). Polly's default, with 2 s.
    Latency(Duration),
    /// All attempts start at once.
    Parallel,
    /// The next attempt starts only when one fails (Polly's negative delay).
    Fallback,
}

/// Options of the hedging strategy.
#[derive(Debug, Clone)]
pub struct HedgingOptions<P = OnError> {
    /// Attempts beyond the first. Default: 1 (Polly's). Valid: 1 – 10.
    pub max_hedged_attempts: u32,
    /// When they start. Default: `Latency(2 s)` (Polly's). Valid: a latency delay > 0 and
    /// ≤ 1 day.
    pub mode: HedgingMode,
    /// Which outcomes are not acceptable (a hedge may still win). Default: every `Err`.
    pub should_handle: P,
}

impl Default for HedgingOptions {
    fn default() -> Self {
        HedgingOptions {
            max_hedged_attempts: 1,
            mode: HedgingMode::Latency(Duration::from_secs(2)),
            should_handle: OnError,
        }
    }
}

impl HedgingOptions {
    /// Latency mode: a further attempt after `delay` without an answer.
    pub fn latency(delay: Duration) -> Self {
        HedgingOptions {
            mode: HedgingMode::Latency(delay),
            ..Default::default()
        }
    }

    /// Parallel mode: every attempt at once.
    pub fn parallel() -> Self {
        HedgingOptions {
            mode: HedgingMode::Parallel,
            ..Default::default()
        }
    }

    /// Fallback mode: a further attempt only after a failure.
    pub fn fallback() -> Self {
        HedgingOptions {
            mode: HedgingMode::Fallback,
            ..Default::default()
        }
    }
}

impl<P> HedgingOptions<P> {
    /// Sets [`max_hedged_attempts`](Self::max_hedged_attempts).
    pub fn max_hedged_attempts(mut self, attempts: u32) -> Self {
        self.max_hedged_attempts = attempts;
        self
    }

    /// Sets [`should_handle`](Self::should_handle): any `Fn(&Result<T, Error<E>>) -> bool`.
    pub fn handle<Q>(self, should_handle: Q) -> HedgingOptions<Q> {
        HedgingOptions {
            max_hedged_attempts: self.max_hedged_attempts,
            mode: self.mode,
            should_handle,
        }
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check::at_least("max_hedged_attempts", self.max_hedged_attempts, 1)?;
        if self.max_hedged_attempts > 10 {
            return Err(ConfigError::new(
                "max_hedged_attempts",
                self.max_hedged_attempts,
                "must be ≤ 10",
            ));
        }
        if let HedgingMode::Latency(delay) = self.mode {
            check::positive("mode.delay", delay)?;
            if delay > Duration::from_secs(86_400) {
                return Err(ConfigError::new("mode.delay", delay, "must be ≤ 1 day"));
            }
        }
        Ok(())
    }
}
