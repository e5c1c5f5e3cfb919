use super::limiter::Limiter;
use super::{RateLimitOptions, RateLimited};
use crate::keyed::Keyed;
use crate::pipeline::{Context, Strategy};
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Admits at most `permits` calls per `period` (by the configured algorithm); rejects the
/// rest at once with [`Error::RateLimited`] carrying the time until a permit is free.
///
/// A `RateLimiter` is a handle: clones share one budget.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limiter: Arc<Limiter>,
    options: RateLimitOptions,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl RateLimiter {
    /// A rate limiter with `options`, validated.
    pub fn new(options: RateLimitOptions) -> Result<Self, crate::ConfigError> {
        options.validate().map_err(|e| e.within("rate_limit"))?;
        Ok(RateLimiter {
            limiter: Arc::new(Limiter::new(&options)),
            options,
            telemetry: Telemetry::default(),
        })
    }

    /// Takes a permit now, or says how long until one is free — for code that is not a
    /// closure.
    #[inline]
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.limiter.try_acquire()
    }

    /// The options this limiter runs with.
    pub fn options(&self) -> &RateLimitOptions {
        &self.options
    }
}

fn rejected<T, E>(telemetry: &Telemetry, retry_after: Duration) -> Result<T, Error<E>> {
    telemetry.emit(crate::telemetry::strategy::RATE_LIMIT, || {
        Event::RateLimited(RateLimited { retry_after })
    });
    Err(Error::RateLimited { retry_after })
}

crate::pipeline::attach_telemetry!([] RateLimiter);

impl<T, E> Strategy<T, E> for RateLimiter {
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
            if let Err(retry_after) = self.limiter.try_acquire() {
                return rejected(&self.telemetry, retry_after);
            }
            op(ctx).await
        }
    }
}

/// One rate limiter per key (tenant, client), keyed by the context's
/// [`key`](Context::key); calls without a key share a default limiter.
///
/// At most `max_keys` keys are tracked. When a new key arrives at the limit, keys whose
/// limiter is back to its initial state are forgotten (nothing is lost); if none is, the new
/// key's call is rejected with a retry-after of one period — memory stays bounded whatever
/// keys callers send.
#[derive(Debug, Clone)]
pub struct KeyedRateLimiter {
    options: RateLimitOptions,
    default: Arc<Limiter>,
    by_key: Arc<Keyed<Limiter>>,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl KeyedRateLimiter {
    /// Per-key limiters with `options` each, for at most `max_keys` keys at once.
    pub fn new(options: RateLimitOptions, max_keys: usize) -> Result<Self, crate::ConfigError> {
        options.validate().map_err(|e| e.within("rate_limit"))?;
        Ok(KeyedRateLimiter {
            options,
            default: Arc::new(Limiter::new(&options)),
            by_key: Arc::new(Keyed::new(max_keys, "rate_limit.max_keys")?),
            telemetry: Telemetry::default(),
        })
    }

    /// How many keys are tracked now.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// Takes a permit for `key` now, or says how long until one is free.
    pub fn try_acquire(&self, key: Option<&str>) -> Result<(), Duration> {
        let Some(key) = key else {
            return self.default.try_acquire();
        };
        // Idle: back to its initial state, so forgetting it loses nothing.
        let Some(limiter) = self
            .by_key
            .get_or_make(key, Limiter::is_idle, || Limiter::new(&self.options))
        else {
            return Err(self.options.period);
        };
        limiter.try_acquire()
    }
}

crate::pipeline::attach_telemetry!([] KeyedRateLimiter);

impl<T, E> Strategy<T, E> for KeyedRateLimiter {
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
            if let Err(retry_after) = self.try_acquire(ctx.key()) {
                return rejected(&self.telemetry, retry_after);
            }
            op(ctx).await
        }
    }
}
