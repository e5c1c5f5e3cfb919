use super::{Cached, ServedStale, ValueCache};
use crate::error::{check, ConfigError};
use crate::pipeline::{Context, OnError, Predicate, Strategy};
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use std::future::Future;
use std::time::Duration;

/// Options of stale-on-error.
#[derive(Debug, Clone)]
pub struct StaleOnErrorOptions<P = OnError> {
    /// The oldest value still worth serving. Default: 5 minutes. Valid: > 0.
    pub max_staleness: Duration,
    /// Which outcomes a cached value replaces. Default: every `Err`.
    pub should_handle: P,
}

impl Default for StaleOnErrorOptions {
    fn default() -> Self {
        StaleOnErrorOptions {
            max_staleness: Duration::from_secs(300),
            should_handle: OnError,
        }
    }
}

impl StaleOnErrorOptions {
    /// Serve values up to `max_staleness` old.
    pub fn new(max_staleness: Duration) -> Self {
        StaleOnErrorOptions {
            max_staleness,
            ..Default::default()
        }
    }
}

impl<P> StaleOnErrorOptions<P> {
    /// Sets [`should_handle`](Self::should_handle).
    pub fn handle<Q>(self, should_handle: Q) -> StaleOnErrorOptions<Q> {
        StaleOnErrorOptions {
            max_staleness: self.max_staleness,
            should_handle,
        }
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check::positive("max_staleness", self.max_staleness)
    }
}

/// Remembers the last good value per [`Context::key`] and serves it when the operation
/// fails, if it is no older than `max_staleness`. Calls without a key pass through.
#[derive(Debug, Clone)]
pub struct StaleOnError<C, P = OnError> {
    cache: C,
    options: StaleOnErrorOptions<P>,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl<C, P> StaleOnError<C, P> {
    /// Stale-on-error over `cache` with `options`, validated.
    pub fn new(cache: C, options: StaleOnErrorOptions<P>) -> Result<Self, ConfigError> {
        options.validate().map_err(|e| e.within("stale_on_error"))?;
        Ok(StaleOnError {
            cache,
            options,
            telemetry: Telemetry::default(),
        })
    }
}

crate::pipeline::attach_telemetry!([C, P] StaleOnError<C, P>);

impl<T, E, C, P> Strategy<T, E> for StaleOnError<C, P>
where
    T: Clone + Send + Sync,
    C: ValueCache<T>,
    P: Predicate<T, E> + Send + Sync,
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
            let key = ctx.key().map(str::to_owned);
            let outcome = op(ctx).await;
            let Some(key) = key else {
                return outcome;
            };
            if let Ok(value) = &outcome {
                self.cache.put(&key, value.clone()).await;
                return outcome;
            }
            if !self.options.should_handle.test(&outcome) {
                return outcome;
            }
            match self.cache.get(&key).await {
                Some(Cached { value, age }) if age <= self.options.max_staleness => {
                    self.telemetry
                        .emit(crate::telemetry::strategy::STALE_ON_ERROR, || {
                            Event::ServedStale(ServedStale { age })
                        });
                    Ok(value)
                }
                _ => outcome,
            }
        }
    }
}
