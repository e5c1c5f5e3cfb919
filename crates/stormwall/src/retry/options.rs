use super::{Backoff, Jitter, RetryBudget};
use crate::error::{check, ConfigError};
use crate::pipeline::OnTransientError;
use std::time::Duration;

/// Options of the retry strategy. Build with [`RetryOptions::exponential`],
/// [`RetryOptions::linear`], [`RetryOptions::constant`] or [`Default`], adjust with the
/// setters, and hand to [`PipelineBuilder::retry`](crate::PipelineBuilder::retry), which
/// validates them.
///
/// `P` decides which outcomes are retried, `G` may replace the computed delay (for a
/// `Retry-After` the outcome carries).
///
/// With the `serde` feature the data fields read from and write to config files (keys as
/// the fields are named, durations as `"200ms"`, unknown keys refused); the predicate, the
/// delay generator and the budget are code and keep their defaults.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(
        default = "serde_default",
        deny_unknown_fields,
        bound(deserialize = "P: Default, G: Default", serialize = "")
    )
)]
pub struct RetryOptions<P = OnTransientError, G = NoDelayGenerator> {
    /// How many retries after the first attempt.
    /// Default: 3 (Polly's). Valid: ≥ 1; `u32::MAX` means unbounded (see [`Self::unbounded`]).
    pub max_retries: u32,
    /// How the delay grows with the attempt number. Default: [`Backoff::Exponential`]
    /// (Polly's default is constant; constant delays synchronise clients, see DESIGN.md).
    pub backoff: Backoff,
    /// The base delay: the first retry's delay before jitter. Default: 2 s (Polly's).
    /// Valid: > 0 and ≤ 1 day.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub delay: Duration,
    /// Upper bound on any single delay, after jitter and after the delay generator.
    /// Default: `None` (no cap, as in Polly). Valid: ≥ `delay`.
    #[cfg_attr(
        feature = "serde",
        serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")
    )]
    pub max_delay: Option<Duration>,
    /// Randomisation of the delay. Default: [`Jitter::DecorrelatedV2`] (Polly's jittered
    /// exponential backoff).
    pub jitter: Jitter,
    /// Which outcomes are retried. Default: [`OnTransientError`] — every `Err` except
    /// rejections by other strategies (open circuit, full bulkhead, rate limit, budget).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub should_retry: P,
    /// May replace the computed delay from the outcome (`Some(delay)`), e.g. to honour a
    /// `Retry-After`. Default: [`NoDelayGenerator`] (always the computed delay).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub delay_generator: G,
    /// A retry budget shared with other retry strategies: each execution deposits, each
    /// retry withdraws; with the budget empty the execution fails at once with
    /// [`Error::BudgetExhausted`](crate::Error::BudgetExhausted) (an `Ok` outcome the
    /// predicate wanted retried is returned as it is).
    /// Default: `None` (no budget).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub budget: Option<RetryBudget>,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            max_retries: 3,
            backoff: Backoff::Exponential,
            delay: Duration::from_secs(2),
            max_delay: None,
            jitter: Jitter::DecorrelatedV2,
            should_retry: OnTransientError,
            delay_generator: NoDelayGenerator,
            budget: None,
        }
    }
}

impl RetryOptions {
    /// Exponential backoff from `delay` (`delay × 2^attempt`), with the default jitter.
    pub fn exponential(delay: Duration) -> Self {
        RetryOptions {
            delay,
            ..Default::default()
        }
    }

    /// Linear backoff (`delay × (attempt + 1)`), no jitter.
    pub fn linear(delay: Duration) -> Self {
        RetryOptions {
            delay,
            backoff: Backoff::Linear,
            jitter: Jitter::None,
            ..Default::default()
        }
    }

    /// The same `delay` before every retry, no jitter.
    pub fn constant(delay: Duration) -> Self {
        RetryOptions {
            delay,
            backoff: Backoff::Constant,
            jitter: Jitter::None,
            ..Default::default()
        }
    }
}

impl<P, G> RetryOptions<P, G> {
    /// Sets [`max_retries`](Self::max_retries).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Retries for as long as the predicate says so (bounded only by an enclosing timeout).
    pub fn unbounded(mut self) -> Self {
        self.max_retries = u32::MAX;
        self
    }

    /// Sets [`backoff`](Self::backoff).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`max_delay`](Self::max_delay).
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = Some(max_delay);
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`should_retry`](Self::should_retry): any `Fn(&Result<T, Error<E>>) -> bool`.
    pub fn handle<Q>(self, should_retry: Q) -> RetryOptions<Q, G> {
        RetryOptions {
            max_retries: self.max_retries,
            backoff: self.backoff,
            delay: self.delay,
            max_delay: self.max_delay,
            jitter: self.jitter,
            should_retry,
            delay_generator: self.delay_generator,
            budget: self.budget,
        }
    }

    /// Sets [`delay_generator`](Self::delay_generator): any
    /// `Fn(&Result<T, Error<E>>, u32) -> Option<Duration>` (outcome, attempt).
    pub fn delay_generator<H>(self, delay_generator: H) -> RetryOptions<P, H> {
        RetryOptions {
            max_retries: self.max_retries,
            backoff: self.backoff,
            delay: self.delay,
            max_delay: self.max_delay,
            jitter: self.jitter,
            should_retry: self.should_retry,
            delay_generator,
            budget: self.budget,
        }
    }

    /// Sets [`budget`](Self::budget).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check::at_least("max_retries", self.max_retries, 1)?;
        check::positive("delay", self.delay)?;
        if self.delay > Duration::from_secs(86_400) {
            return Err(ConfigError::new("delay", self.delay, "must be ≤ 1 day"));
        }
        if let Some(max) = self.max_delay {
            if max < self.delay {
                return Err(ConfigError::new(
                    "max_delay",
                    max,
                    format!("must be ≥ delay ({:?})", self.delay),
                ));
            }
        }
        Ok(())
    }
}

/// The defaults of every field, whatever the predicate and the delay generator (serde fills
/// the keys a file leaves out from it).
#[cfg(feature = "serde")]
fn serde_default<P: Default, G: Default>() -> RetryOptions<P, G> {
    RetryOptions::default()
        .handle(P::default())
        .delay_generator(G::default())
}

/// The default delay generator: always uses the computed backoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoDelayGenerator;
