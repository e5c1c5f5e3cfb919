use super::backoff::{compute_delay, DelayState};
use super::{NoDelayGenerator, RetryBudgetExhausted, RetryOptions, RetryScheduled};
use crate::pipeline::{Context, OnTransientError, Predicate, Strategy};
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Replaces the computed retry delay with one read from the outcome (e.g. `Retry-After`).
///
/// Any `Fn(&Result<T, Error<E>>, u32) -> Option<Duration>` is a delay generator; `None`
/// keeps the computed delay.
pub trait DelayGenerator<T, E> {
    /// The delay before retry `attempt` (0-based) after `outcome`, or `None` for the default.
    fn delay(&self, outcome: &Result<T, Error<E>>, attempt: u32) -> Option<Duration>;
}

impl<T, E> DelayGenerator<T, E> for NoDelayGenerator {
    #[inline]
    fn delay(&self, _: &Result<T, Error<E>>, _: u32) -> Option<Duration> {
        None
    }
}

impl<T, E, F> DelayGenerator<T, E> for F
where
    F: Fn(&Result<T, Error<E>>, u32) -> Option<Duration>,
{
    fn delay(&self, outcome: &Result<T, Error<E>>, attempt: u32) -> Option<Duration> {
        self(outcome, attempt)
    }
}

/// What a retry refused by its budget returns: [`Error::BudgetExhausted`] in place of a
/// failure, so that retries around this one in the pipeline (which do not retry
/// rejections) stop too; an `Ok` the predicate wanted retried (an HTTP 503 response, say)
/// is still an answer, and is returned as it is.
fn budget_refused<T, E>(outcome: Result<T, Error<E>>) -> Result<T, Error<E>> {
    match outcome {
        Ok(answer) => Ok(answer),
        Err(_) => Err(Error::BudgetExhausted),
    }
}

/// Runs the operation again after a delay while the outcome is one to retry, up to
/// `max_retries` times.
///
/// A retry never sleeps past the context's deadline: when the next delay would end at or
/// after an enclosing timeout's deadline, the last outcome is returned at once instead.
/// When a retry budget refuses a retry, the execution fails with
/// [`Error::BudgetExhausted`] (an `Ok` outcome is returned as it is).
#[derive(Debug, Clone)]
pub struct Retry<P = OnTransientError, G = NoDelayGenerator> {
    options: RetryOptions<P, G>,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl<P, G> Retry<P, G> {
    /// A retry strategy with `options`, validated.
    pub fn new(options: RetryOptions<P, G>) -> Result<Self, crate::ConfigError> {
        options.validate().map_err(|e| e.within("retry"))?;
        Ok(Retry {
            options,
            telemetry: Telemetry::default(),
        })
    }

    /// The options this strategy runs with.
    pub fn options(&self) -> &RetryOptions<P, G> {
        &self.options
    }

    fn next_delay(
        &self,
        generated: Option<Duration>,
        attempt: u32,
        state: &mut DelayState,
    ) -> Duration {
        let o = &self.options;
        match generated {
            Some(delay) => o.max_delay.map_or(delay, |max| delay.min(max)),
            None => compute_delay(
                o.backoff,
                o.jitter,
                o.delay,
                o.max_delay,
                attempt,
                state,
                &mut fastrand::f64,
            ),
        }
    }
}

crate::pipeline::attach_telemetry!([P, G] Retry<P, G>);

impl<T, E, P, G> Strategy<T, E> for Retry<P, G>
where
    P: Predicate<T, E> + Send + Sync,
    G: DelayGenerator<T, E> + Send + Sync,
{
    fn execute<F, Fut>(
        &self,
        ctx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send
    where
        F: Fn(Context) -> Fut + Copy + Send + Sync,
        Fut: Future<Output = Result<T, Error<E>>> + Send,
        T: Send,
        E: Send,
    {
        async move {
            let mut state = DelayState::default();
            let mut attempt = 0u32;
            let budget = self.options.budget.as_ref();
            if let Some(budget) = budget {
                budget.deposit();
            }
            loop {
                let outcome = op(ctx.for_attempt(attempt)).await;
                if attempt >= self.options.max_retries || !self.options.should_retry.test(&outcome)
                {
                    return outcome;
                }
                let generated = self.options.delay_generator.delay(&outcome, attempt);
                let delay = self.next_delay(generated, attempt, &mut state);
                if let Some(deadline) = ctx.deadline() {
                    // Compared as durations: `now + delay` may overflow `Instant`.
                    if delay >= deadline.saturating_duration_since(Instant::now()) {
                        // The enclosing timeout would fire mid-sleep: the real outcome says more.
                        return outcome;
                    }
                }
                if budget.is_some_and(|b| !b.try_withdraw()) {
                    let attempt = attempt + 1;
                    self.telemetry.emit(crate::telemetry::strategy::RETRY, || {
                        Event::RetryBudgetExhausted(RetryBudgetExhausted { attempt })
                    });
                    return budget_refused(outcome);
                }
                attempt += 1;
                self.telemetry.emit(crate::telemetry::strategy::RETRY, || {
                    Event::Retry(RetryScheduled { attempt, delay })
                });
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
