//! A pipeline composed at run time: Python builds pipelines in any order, so the strategies
//! sit in a `Vec` (outer first) and each one's future is boxed. Rust pipelines nest
//! statically instead; here a box per strategy per call costs nanoseconds beside the
//! Python calls around it.

use crate::errors::Outcome;
use crate::fallback::PyFallback;
use crate::handle::{PyDelay, PyHandle};
use pyo3::prelude::*;
use std::future::Future;
use std::pin::Pin;
use stormwall::bulkhead::{Bulkhead, KeyedBulkhead};
use stormwall::circuit_breaker::{CircuitBreaker, InMemoryStore};
use stormwall::fallback::Fallback;
use stormwall::hedging::Hedging;
use stormwall::pipeline::{Attach, BuildStrategy, Strategy};
use stormwall::rate_limit::{KeyedRateLimiter, RateLimiter};
use stormwall::retry::Retry;
use stormwall::telemetry::Telemetry;
use stormwall::timeout::Timeout;
use stormwall::{ConfigError, Context};
use stormwall_redis::RedisStateStore;

/// A strategy's future, boxed.
pub(crate) type BoxFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// A circuit breaker with its state in memory or in Redis (shared with other replicas).
#[derive(Clone)]
pub(crate) enum Breaker {
    Local(CircuitBreaker<PyHandle, InMemoryStore>),
    Redis(CircuitBreaker<PyHandle, RedisStateStore>),
}

/// One strategy of a Python pipeline.
pub(crate) enum Layer {
    Retry(Retry<PyHandle, PyDelay>),
    Timeout(Timeout),
    Breaker(Breaker),
    Bulkhead(Bulkhead),
    KeyedBulkhead(KeyedBulkhead),
    RateLimit(RateLimiter),
    KeyedRateLimit(KeyedRateLimiter),
    Hedging(Hedging<PyHandle>),
    Fallback(Fallback<PyFallback, PyHandle>),
}

macro_rules! boxed {
    ($strategy:expr, $ctx:expr, $op:expr) => {
        Box::pin(Strategy::<Py<PyAny>, PyErr>::execute($strategy, $ctx, $op))
    };
}

impl Layer {
    fn execute<'a, F>(&'a self, ctx: Context, op: F) -> BoxFuture<'a>
    where
        F: Fn(Context) -> BoxFuture<'a> + Copy + Send + Sync + 'a,
    {
        match self {
            Layer::Retry(s) => boxed!(s, ctx, op),
            Layer::Timeout(s) => boxed!(s, ctx, op),
            Layer::Breaker(Breaker::Local(s)) => boxed!(s, ctx, op),
            Layer::Breaker(Breaker::Redis(s)) => boxed!(s, ctx, op),
            Layer::Bulkhead(s) => boxed!(s, ctx, op),
            Layer::KeyedBulkhead(s) => boxed!(s, ctx, op),
            Layer::RateLimit(s) => boxed!(s, ctx, op),
            Layer::KeyedRateLimit(s) => boxed!(s, ctx, op),
            Layer::Hedging(s) => boxed!(s, ctx, op),
            Layer::Fallback(s) => boxed!(s, ctx, op),
        }
    }

    fn attach(&mut self, telemetry: &Telemetry) {
        match self {
            Layer::Retry(s) => s.attach(telemetry),
            Layer::Timeout(s) => s.attach(telemetry),
            Layer::Breaker(Breaker::Local(s)) => s.attach(telemetry),
            Layer::Breaker(Breaker::Redis(s)) => s.attach(telemetry),
            Layer::Bulkhead(s) => s.attach(telemetry),
            Layer::KeyedBulkhead(s) => s.attach(telemetry),
            Layer::RateLimit(s) => s.attach(telemetry),
            Layer::KeyedRateLimit(s) => s.attach(telemetry),
            Layer::Hedging(s) => s.attach(telemetry),
            Layer::Fallback(s) => s.attach(telemetry),
        }
    }
}

/// `layers[0]` around `layers[1]` around ... around `op`.
fn run<'a>(
    layers: &'a [Layer],
    ctx: Context,
    op: &'a (dyn Fn(Context) -> BoxFuture<'a> + Sync),
) -> BoxFuture<'a> {
    match layers.split_first() {
        None => op(ctx),
        Some((first, rest)) => first.execute(ctx, move |ctx| run(rest, ctx, op)),
    }
}

/// The strategies of a Python pipeline, outer first.
pub(crate) struct Chain(pub(crate) Vec<Layer>);

impl Chain {
    /// Whether an attempt may be abandoned while it runs (a timeout or hedging): then a
    /// plain function runs on a blocking thread (see `SyncAttempt`).
    pub(crate) fn abandons_attempts(&self) -> bool {
        self.0
            .iter()
            .any(|l| matches!(l, Layer::Timeout(_) | Layer::Hedging(_)))
    }

    /// The first circuit breaker, outermost first.
    pub(crate) fn breaker(&self) -> Option<&Breaker> {
        self.0.iter().find_map(|l| match l {
            Layer::Breaker(b) => Some(b),
            _ => None,
        })
    }
}

impl Attach for Chain {
    fn attach(&mut self, telemetry: &Telemetry) {
        for layer in &mut self.0 {
            layer.attach(telemetry);
        }
    }
}

impl BuildStrategy for Chain {
    type Strategy = Self;
    fn build_strategy(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl Strategy<Py<PyAny>, PyErr> for Chain {
    fn execute<F, Fut>(&self, ctx: Context, op: F) -> impl Future<Output = Outcome> + Send
    where
        F: Fn(Context) -> Fut + Copy + Send + Sync,
        Fut: Future<Output = Outcome> + Send,
    {
        async move {
            let boxed = move |ctx: Context| -> BoxFuture<'_> { Box::pin(op(ctx)) };
            run(&self.0, ctx, &boxed).await
        }
    }
}
