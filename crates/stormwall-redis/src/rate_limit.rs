//! A rate limiter shared by every replica (GCRA in Lua, keyed per tenant).

use crate::connection::Lazy;
use crate::RedisStoreError;
use redis::{Client, Script};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use stormwall::pipeline::{Attach, BuildStrategy, Context, Strategy};
use stormwall::rate_limit::{KeyedRateLimiter, RateLimitOptions, RateLimited};
use stormwall::telemetry::{Event, Telemetry};
use stormwall::{ConfigError, Error};

/// GCRA on Redis's clock (microseconds): the theoretical arrival time per key.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat - now > tolerance then
  return tat - tolerance - now
end
local next_tat = tat + emission
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return -1
"#;

/// A rate limiter whose quota every replica shares, per key (a tenant, a client IP).
///
/// As a pipeline strategy it limits by the context's key (`Context::with_key`); calls
/// without a key share one quota. Each acquire is one Redis round trip (bounded by the
/// command timeout); while Redis cannot answer, a local keyed limiter with the same
/// options decides.
#[derive(Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
    telemetry: Telemetry,
}

struct Inner {
    connection: Lazy,
    script: Script,
    prefix: String,
    /// Microseconds per permit.
    emission_us: u64,
    /// Microseconds of burst beyond one permit.
    tolerance_us: u64,
    local: KeyedRateLimiter,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// How long an acquire waits for Redis before the local limiter decides, unless set with
/// [`RedisRateLimiter::with_command_timeout`].
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(50);

impl RedisRateLimiter {
    /// A shared limiter named `name` with `options` (GCRA: `permits` per `period`, `burst`);
    /// an acquire waits 50 ms for Redis (see [`with_command_timeout`](Self::with_command_timeout)).
    pub fn new(url: &str, name: &str, options: RateLimitOptions) -> Result<Self, RedisStoreError> {
        Self::with_command_timeout(url, name, options, DEFAULT_COMMAND_TIMEOUT)
    }

    /// Like [`new`](Self::new), with how long an acquire waits for Redis's answer before
    /// the local limiter decides (and the connection is made afresh): the latency a Redis
    /// that is slow, rather than down, can add to a call. Must be above zero.
    pub fn with_command_timeout(
        url: &str,
        name: &str,
        options: RateLimitOptions,
        command_timeout: Duration,
    ) -> Result<Self, RedisStoreError> {
        if command_timeout.is_zero() {
            return Err(RedisStoreError::Config(ConfigError::new(
                "rate_limit.command_timeout",
                command_timeout,
                "above zero",
            )));
        }
        let client = Client::open(url).map_err(|e| RedisStoreError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        options
            .validate()
            .map_err(|e| RedisStoreError::Config(e.within("rate_limit")))?;
        let emission_us = (options.period.as_micros() / u128::from(options.permits)).max(1) as u64;
        Ok(RedisRateLimiter {
            inner: Arc::new(Inner {
                connection: Lazy::new(client, command_timeout),
                script: Script::new(GCRA),
                prefix: format!("stormwall:ratelimit:{name}"),
                emission_us,
                tolerance_us: emission_us * u64::from(options.effective_burst().saturating_sub(1)),
                local: KeyedRateLimiter::new(options, 10_000)
                    .map_err(|e| RedisStoreError::Config(e.within("rate_limit")))?,
            }),
            telemetry: Telemetry::default(),
        })
    }

    /// Takes a permit for `key`, or says how long until one is free.
    pub async fn try_acquire(&self, key: Option<&str>) -> Result<(), Duration> {
        let inner = &*self.inner;
        let redis_key = format!("{}:{{{}}}", inner.prefix, key.unwrap_or(""));
        if let Some(mut connection) = inner.connection.get().await {
            let mut invocation = inner.script.prepare_invoke();
            invocation
                .key(&redis_key)
                .arg(inner.emission_us)
                .arg(inner.tolerance_us);
            let call = invocation.invoke_async::<i64>(&mut connection);
            match tokio::time::timeout(inner.connection.timeout(), call).await {
                Ok(Ok(wait)) if wait < 0 => return Ok(()),
                Ok(Ok(wait)) => return Err(Duration::from_micros(wait as u64)),
                _ => inner.connection.reset().await,
            }
        }
        inner.local.try_acquire(key)
    }
}

impl Attach for RedisRateLimiter {
    fn attach(&mut self, telemetry: &Telemetry) {
        self.telemetry = telemetry.clone();
    }
}

impl BuildStrategy for RedisRateLimiter {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl<T, E> Strategy<T, E> for RedisRateLimiter {
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
            if let Err(retry_after) = self.try_acquire(key.as_deref()).await {
                self.telemetry
                    .emit(stormwall::telemetry::strategy::RATE_LIMIT, || {
                        Event::RateLimited(RateLimited { retry_after })
                    });
                return Err(Error::RateLimited { retry_after });
            }
            op(ctx).await
        }
    }
}
