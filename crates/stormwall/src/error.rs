//! The two error types of the crate: what an execution can fail with ([`Error`]), and what a
//! bad configuration is rejected with ([`ConfigError`]).

use std::time::Duration;

/// Why an execution through a pipeline failed.
///
/// `Inner` carries the operation's own error; every other variant is a decision a strategy
/// made on the caller's behalf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The operation itself failed. It is also the [`source`](std::error::Error::source)
    /// of this error, so error reporters walk on into it.
    #[error("operation failed: {0}")]
    Inner(#[source] E),
    /// A timeout strategy cancelled the operation.
    #[error("operation timed out after {0:?}")]
    Timeout(Duration),
    /// The circuit breaker is open (or isolated, or out of half-open probes) and rejected
    /// the call without running it.
    #[error("circuit is open; retry after {retry_after:?}")]
    CircuitOpen {
        /// How long until the breaker admits a probe; `None` while manually isolated.
        retry_after: Option<Duration>,
    },
    /// A bulkhead had no free slot and no queue place.
    #[error("bulkhead is full")]
    BulkheadFull,
    /// A rate limiter rejected the call.
    #[error("rate limited; retry after {retry_after:?}")]
    RateLimited {
        /// When a permit will be available.
        retry_after: Duration,
    },
    /// A retry was due but the retry budget had none left to spend: the operation failed
    /// and was not tried again. (An `Ok` outcome the retry predicate wanted retried is
    /// returned as it is instead.)
    #[error("retry budget exhausted")]
    BudgetExhausted,
    /// Adaptive throttling rejected the call locally: the dependency has been refusing
    /// most calls, so this one was not sent.
    #[error("throttled locally: the dependency is rejecting most calls")]
    Throttled,
}

impl<E> Error<Error<E>> {
    /// One level instead of two, for a pipeline whose operation runs another pipeline
    /// (the HTTP hedging handler runs each endpoint's breaker and timeout inside hedging):
    /// the outer strategies' errors and the inner ones end up side by side.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall::Error;
    /// let nested: Error<Error<&str>> = Error::Inner(Error::Inner("refused"));
    /// assert_eq!(nested.flatten(), Error::Inner("refused"));
    /// let outer: Error<Error<&str>> = Error::Timeout(Duration::from_secs(1));
    /// assert_eq!(outer.flatten(), Error::Timeout(Duration::from_secs(1)));
    /// ```
    pub fn flatten(self) -> Error<E> {
        match self {
            Error::Inner(inner) => inner,
            Error::Timeout(d) => Error::Timeout(d),
            Error::CircuitOpen { retry_after } => Error::CircuitOpen { retry_after },
            Error::BulkheadFull => Error::BulkheadFull,
            Error::RateLimited { retry_after } => Error::RateLimited { retry_after },
            Error::BudgetExhausted => Error::BudgetExhausted,
            Error::Throttled => Error::Throttled,
        }
    }
}

impl<E> Error<E> {
    /// The operation's own error, if that is what this is.
    pub fn inner(&self) -> Option<&E> {
        match self {
            Error::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// Turns this into the operation's own error, if that is what this is.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Error::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// `true` when a strategy rejected the call without running the operation.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Error::CircuitOpen { .. }
                | Error::BulkheadFull
                | Error::RateLimited { .. }
                | Error::BudgetExhausted
                | Error::Throttled
        )
    }

    /// A short, stable name for the variant (a metrics label): `inner`, `timeout`,
    /// `circuit_open`, `bulkhead_full`, `rate_limited`, `budget_exhausted`, `throttled`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Inner(_) => "inner",
            Error::Timeout(_) => "timeout",
            Error::CircuitOpen { .. } => "circuit_open",
            Error::BulkheadFull => "bulkhead_full",
            Error::RateLimited { .. } => "rate_limited",
            Error::BudgetExhausted => "budget_exhausted",
            Error::Throttled => "throttled",
        }
    }

    /// The wait the rejecting strategy suggests before trying again, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::CircuitOpen { retry_after } => *retry_after,
            Error::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A configuration value was rejected at `build()`.
///
/// The message names the option (`retry.max_delay`), the value that was given and the range
/// that is valid, so a config file's author can fix it without reading the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}` = {value}: {reason}")]
pub struct ConfigError {
    /// The option's path, e.g. `circuit_breaker.failure_ratio`.
    pub field: String,
    /// The rejected value, formatted.
    pub value: String,
    /// What would have been valid.
    pub reason: String,
}

impl ConfigError {
    /// Builds an error for `field`, holding `value`, which should have been `reason`.
    pub fn new(
        field: impl Into<String>,
        value: impl std::fmt::Debug,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError {
            field: field.into(),
            value: format!("{value:?}"),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path with `prefix` (`retry` + `max_delay` → `retry.max_delay`),
    /// so errors from a nested section keep their full key path.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// Small helpers the options types share for their `validate()`.
pub(crate) mod check {
    use super::ConfigError;
    use std::time::Duration;

    pub(crate) fn positive(field: &str, value: Duration) -> Result<(), ConfigError> {
        if value.is_zero() {
            return Err(ConfigError::new(field, value, "must be greater than zero"));
        }
        Ok(())
    }

    pub(crate) fn ratio(field: &str, value: f64) -> Result<(), ConfigError> {
        if !(value > 0.0 && value <= 1.0) {
            return Err(ConfigError::new(
                field,
                value,
                "must be a ratio in (0, 1] (0 < ratio ≤ 1)",
            ));
        }
        Ok(())
    }

    pub(crate) fn at_least(field: &str, value: u32, min: u32) -> Result<(), ConfigError> {
        if value < min {
            return Err(ConfigError::new(field, value, format!("must be ≥ {min}")));
        }
        Ok(())
    }
}
