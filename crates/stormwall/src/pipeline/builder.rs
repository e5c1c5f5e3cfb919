use super::{Attach, Identity, Pipeline, Stack};
use crate::bulkhead::{Bulkhead, BulkheadOptions, KeyedBulkhead};
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, InMemoryStore, StateStore};
use crate::clock::Clock;
use crate::fallback::{Fallback, FallbackOptions};
use crate::rate_limit::{KeyedRateLimiter, RateLimitOptions, RateLimiter};
use crate::retry::{AdaptiveThrottle, AdaptiveThrottleOptions, Retry, RetryOptions};
use crate::telemetry::{EventListener, Telemetry};
use crate::timeout::{Timeout, TimeoutOptions};
use crate::ConfigError;
use std::sync::Arc;
use std::time::Duration;

/// Something the builder can turn into a strategy: options (validated here) or a strategy
/// already built (a shared [`CircuitBreaker`], say).
pub trait BuildStrategy {
    /// The strategy it becomes.
    type Strategy: Attach;
    /// Validates and builds.
    fn build_strategy(self) -> Result<Self::Strategy, ConfigError>;
}

/// Composes a [`Pipeline`], outer to inner, like tower's `ServiceBuilder`: the first
/// strategy added is the outermost. Options are validated at [`build`](Self::build), which
/// reports the first invalid one by its key path (`retry.max_delay`).
pub struct PipelineBuilder<S> {
    /// The first configuration error wins; later strategies are then not validated.
    strategy: Result<S, ConfigError>,
    name: Arc<str>,
    listener: Option<Arc<dyn EventListener>>,
    /// Times attempts and executions for the listener.
    clock: Clock,
}

impl PipelineBuilder<Identity> {
    pub(crate) fn new() -> Self {
        PipelineBuilder {
            strategy: Ok(Identity),
            name: Arc::from("default"),
            listener: None,
            clock: Clock::Auto,
        }
    }
}

impl<S> PipelineBuilder<S> {
    /// Names the pipeline in every event it raises. Default: `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sends every event of every strategy to `listener`.
    pub fn listener(mut self, listener: Arc<dyn EventListener>) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The clock the pipeline times attempts and executions on, for the listener's
    /// `AttemptCompleted` and `ExecutionCompleted` events. Default: [`Clock::Auto`] (tokio's
    /// clock when built on a paused one, the CPU counter otherwise); [`Clock::Tokio`] to
    /// follow tokio's clock whenever it is paused. Strategies keep the clocks their own options name.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Adds `strategy` inside the ones added so far.
    pub fn strategy<B: BuildStrategy>(self, strategy: B) -> PipelineBuilder<Stack<S, B::Strategy>> {
        let strategy = self
            .strategy
            .and_then(|outer| Ok(Stack::new(outer, strategy.build_strategy()?)));
        PipelineBuilder {
            strategy,
            name: self.name,
            listener: self.listener,
            clock: self.clock,
        }
    }

    /// Adds a timeout (a `Duration` or [`TimeoutOptions`]): outermost, it bounds the whole
    /// execution; inside retry, each attempt.
    pub fn timeout(self, timeout: impl Into<TimeoutOptions>) -> PipelineBuilder<Stack<S, Timeout>> {
        self.strategy(timeout.into())
    }

    /// Adds a retry.
    pub fn retry<P, G>(
        self,
        options: RetryOptions<P, G>,
    ) -> PipelineBuilder<Stack<S, Retry<P, G>>> {
        self.strategy(options)
    }

    /// Adds a circuit breaker: options (a new breaker) or a [`CircuitBreaker`] handle
    /// (shared with whoever else holds a clone).
    pub fn circuit_breaker<B, P, St>(
        self,
        breaker: B,
    ) -> PipelineBuilder<Stack<S, CircuitBreaker<P, St>>>
    where
        B: BuildStrategy<Strategy = CircuitBreaker<P, St>>,
    {
        self.strategy(breaker)
    }

    /// Adds a bulkhead: options (a new bulkhead), or a [`Bulkhead`] / [`KeyedBulkhead`]
    /// handle.
    pub fn bulkhead<B: BuildStrategy>(self, bulkhead: B) -> PipelineBuilder<Stack<S, B::Strategy>> {
        self.strategy(bulkhead)
    }

    /// Adds a rate limiter: options (a new limiter), or a [`RateLimiter`] /
    /// [`KeyedRateLimiter`] handle.
    pub fn rate_limit<B: BuildStrategy>(
        self,
        limiter: B,
    ) -> PipelineBuilder<Stack<S, B::Strategy>> {
        self.strategy(limiter)
    }

    /// Adds hedging.
    pub fn hedging<P>(
        self,
        options: crate::hedging::HedgingOptions<P>,
    ) -> PipelineBuilder<Stack<S, crate::hedging::Hedging<P>>> {
        self.strategy(options)
    }

    /// Adds a fallback.
    pub fn fallback<A, P>(
        self,
        options: FallbackOptions<A, P>,
    ) -> PipelineBuilder<Stack<S, Fallback<A, P>>> {
        self.strategy(options)
    }

    /// Validates every option and builds the pipeline.
    pub fn build(self) -> Result<Pipeline<S>, ConfigError>
    where
        S: Attach,
    {
        let mut strategy = self.strategy?;
        let telemetry = Telemetry::with_clock(self.name, self.listener, self.clock);
        strategy.attach(&telemetry);
        Ok(Pipeline::from_parts(strategy, telemetry))
    }
}

impl BuildStrategy for TimeoutOptions {
    type Strategy = Timeout;
    fn build_strategy(self) -> Result<Timeout, ConfigError> {
        Timeout::new(self)
    }
}

impl BuildStrategy for Duration {
    type Strategy = Timeout;
    fn build_strategy(self) -> Result<Timeout, ConfigError> {
        Timeout::new(self)
    }
}

impl<P, G> BuildStrategy for RetryOptions<P, G> {
    type Strategy = Retry<P, G>;
    fn build_strategy(self) -> Result<Retry<P, G>, ConfigError> {
        Retry::new(self)
    }
}

impl<P> BuildStrategy for CircuitBreakerOptions<P> {
    type Strategy = CircuitBreaker<P, InMemoryStore>;
    fn build_strategy(self) -> Result<Self::Strategy, ConfigError> {
        CircuitBreaker::new(self)
    }
}

impl<P> BuildStrategy for crate::circuit_breaker::KeyedCircuitBreaker<P> {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl<P, St: StateStore> BuildStrategy for CircuitBreaker<P, St> {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl<A, P> BuildStrategy for FallbackOptions<A, P> {
    type Strategy = Fallback<A, P>;
    fn build_strategy(self) -> Result<Self::Strategy, ConfigError> {
        Ok(Fallback::new(self))
    }
}

macro_rules! built_strategy {
    ($($ty:ty),*) => {$(
        impl BuildStrategy for $ty {
            type Strategy = Self;
            fn build_strategy(self) -> Result<Self, ConfigError> {
                Ok(self)
            }
        }
    )*};
}
built_strategy!(
    Timeout,
    Identity,
    Bulkhead,
    KeyedBulkhead,
    RateLimiter,
    KeyedRateLimiter
);

impl BuildStrategy for RateLimitOptions {
    type Strategy = RateLimiter;
    fn build_strategy(self) -> Result<RateLimiter, ConfigError> {
        RateLimiter::new(self)
    }
}

impl BuildStrategy for BulkheadOptions {
    type Strategy = Bulkhead;
    fn build_strategy(self) -> Result<Bulkhead, ConfigError> {
        Bulkhead::new(self)
    }
}

impl<P, G> BuildStrategy for Retry<P, G> {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl<P> BuildStrategy for AdaptiveThrottleOptions<P> {
    type Strategy = AdaptiveThrottle<P>;
    fn build_strategy(self) -> Result<Self::Strategy, ConfigError> {
        AdaptiveThrottle::new(self)
    }
}

impl<P> BuildStrategy for AdaptiveThrottle<P> {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl<I> BuildStrategy for crate::chaos::Chaos<I> {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl<P> BuildStrategy for crate::hedging::HedgingOptions<P> {
    type Strategy = crate::hedging::Hedging<P>;
    fn build_strategy(self) -> Result<Self::Strategy, ConfigError> {
        crate::hedging::Hedging::new(self)
    }
}

impl<P> BuildStrategy for crate::hedging::Hedging<P> {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl<C, P> BuildStrategy for crate::cache::StaleOnError<C, P> {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl<A, P> BuildStrategy for Fallback<A, P> {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}
