//! The strategies of a pipeline read from a file, in the file's order, as one type.

use super::spec::StrategyKind;
use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;
use crate::hedging::Hedging;
use crate::pipeline::{Attach, BuildStrategy, Context, Either, Identity, Stack, Strategy};
use crate::rate_limit::RateLimiter;
use crate::retry::Retry;
use crate::telemetry::Telemetry;
use crate::timeout::Timeout;
use crate::{ConfigError, Error};
use std::future::Future;
use std::pin::Pin;

/// Implements `Attach`, `BuildStrategy` (a built value builds as itself) and `Strategy` for
/// a type generic over the six kinds, each kind bound by the trait implemented: the two
/// types below differ only in how `attach` and `execute` reach their strategies.
macro_rules! strategy_over_kinds {
    (
        $ty:ident;
        fn attach(&mut $attach_self:ident, $telemetry:ident) $attach:block
        fn execute(&$execute_self:ident, $ctx:ident, $op:ident) $execute:block
    ) => {
        impl<L, B, T, H, R, C> Attach for $ty<L, B, T, H, R, C>
        where
            L: Attach,
            B: Attach,
            T: Attach,
            H: Attach,
            R: Attach,
            C: Attach,
        {
            fn attach(&mut $attach_self, $telemetry: &Telemetry) $attach
        }

        impl<L, B, T, H, R, C> BuildStrategy for $ty<L, B, T, H, R, C>
        where
            Self: Attach,
        {
            type Strategy = Self;
            fn build_strategy(self) -> Result<Self, ConfigError> {
                Ok(self)
            }
        }

        impl<Out, Err, L, B, T, H, R, C> Strategy<Out, Err> for $ty<L, B, T, H, R, C>
        where
            L: Strategy<Out, Err>,
            B: Strategy<Out, Err>,
            T: Strategy<Out, Err>,
            H: Strategy<Out, Err>,
            R: Strategy<Out, Err>,
            C: Strategy<Out, Err>,
        {
            #[inline]
            fn execute<F, Fut>(
                &$execute_self,
                $ctx: Context,
                $op: F,
            ) -> impl Future<Output = Result<Out, Error<Err>>> + Send
            where
                F: Fn(Context) -> Fut + Copy + Send + Sync,
                Fut: Future<Output = Result<Out, Error<Err>>> + Send,
                Out: Send,
                Err: Send,
            $execute
        }
    };
}

/// One built strategy of any kind: the registry's with the defaults, the sidecar's with its
/// HTTP predicates and keyed limiter. Cloning shares the strategy's state.
#[derive(Debug, Clone)]
pub enum AnyStrategy<
    L = RateLimiter,
    B = Bulkhead,
    T = Timeout,
    H = Hedging,
    R = Retry,
    C = CircuitBreaker,
> {
    /// A rate limiter.
    RateLimit(L),
    /// A bulkhead.
    Bulkhead(B),
    /// A timeout.
    Timeout(T),
    /// Hedging.
    Hedging(H),
    /// A retry.
    Retry(R),
    /// A circuit breaker.
    CircuitBreaker(C),
}

impl<L, B, T, H, R, C> AnyStrategy<L, B, T, H, R, C> {
    /// Which strategy it is.
    pub fn kind(&self) -> StrategyKind {
        match self {
            AnyStrategy::RateLimit(_) => StrategyKind::RateLimit,
            AnyStrategy::Bulkhead(_) => StrategyKind::Bulkhead,
            AnyStrategy::Timeout(_) => StrategyKind::Timeout,
            AnyStrategy::Hedging(_) => StrategyKind::Hedging,
            AnyStrategy::Retry(_) => StrategyKind::Retry,
            AnyStrategy::CircuitBreaker(_) => StrategyKind::CircuitBreaker,
        }
    }
}

/// Calls the same expression on whichever strategy it is.
macro_rules! on_any {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            AnyStrategy::RateLimit($s) => $call,
            AnyStrategy::Bulkhead($s) => $call,
            AnyStrategy::Timeout($s) => $call,
            AnyStrategy::Hedging($s) => $call,
            AnyStrategy::Retry($s) => $call,
            AnyStrategy::CircuitBreaker($s) => $call,
        }
    };
}

strategy_over_kinds! {
    AnyStrategy;
    fn attach(&mut self, telemetry) {
        on_any!(self, s => s.attach(telemetry))
    }
    fn execute(&self, ctx, op) {
        async move { on_any!(self, s => s.execute(ctx, op).await) }
    }
}

/// The strategies of a pipeline read from a file, in the file's order.
///
/// When the order is one of the fixed order's (rate limit → bulkhead → timeout → hedging →
/// retry → circuit breaker → timeout, each optional: every example is), the strategies sit in
/// a static stack of `Option`s, as a pipeline written in code: no boxing, no allocation per
/// call. Any other order boxes at the edge between strategies (one allocation per strategy
/// and attempt): a static type for every order would not compile in reasonable memory (an
/// enum of the six kinds per slot, eight slots deep, took rustc past 23 GB).
#[derive(Debug, Clone)]
pub enum SlotStrategies<
    L = RateLimiter,
    B = Bulkhead,
    T = Timeout,
    H = Hedging,
    R = Retry,
    C = CircuitBreaker,
> {
    /// In the fixed order: static, unboxed.
    Fixed(FixedStrategies<L, B, T, H, R, C>),
    /// Any other order: boxed between strategies.
    Dynamic(DynamicStrategies<AnyStrategy<L, B, T, H, R, C>>),
}

/// The fixed order, outer to inner, each strategy optional.
pub type FixedStrategies<L, B, T, H, R, C> = Stack<
    Stack<
        Stack<
            Stack<Stack<Stack<Stack<Identity, Option<L>>, Option<B>>, Option<T>>, Option<H>>,
            Option<R>,
        >,
        Option<C>,
    >,
    Option<T>,
>;

/// The kinds of the fixed order: every kind in [`StrategyKind::ALL`]'s order, then the
/// attempt's timeout (inside the retry and the breaker).
pub const FIXED_ORDER: [StrategyKind; 7] = {
    let [rate_limit, bulkhead, timeout, hedging, retry, circuit_breaker] = StrategyKind::ALL;
    [
        rate_limit,
        bulkhead,
        timeout,
        hedging,
        retry,
        circuit_breaker,
        timeout,
    ]
};

/// Each kind's place in [`FIXED_ORDER`] when `kinds` (in order) is a subsequence of it.
pub fn fixed_places(kinds: impl IntoIterator<Item = StrategyKind>) -> Option<Vec<usize>> {
    let mut next = 0;
    kinds
        .into_iter()
        .map(|kind| {
            let place = next + FIXED_ORDER[next..].iter().position(|k| *k == kind)?;
            next = place + 1;
            Some(place)
        })
        .collect()
}

impl<L, B, T, H, R, C> SlotStrategies<L, B, T, H, R, C> {
    /// `strategies` in their order, outermost first: fixed when the order allows it.
    pub fn new(strategies: Vec<AnyStrategy<L, B, T, H, R, C>>) -> Self {
        let Some(places) = fixed_places(strategies.iter().map(AnyStrategy::kind)) else {
            return SlotStrategies::Dynamic(DynamicStrategies(strategies));
        };
        let (mut l, mut b, mut total, mut h, mut r, mut c, mut attempt) =
            (None, None, None, None, None, None, None);
        for (strategy, place) in strategies.into_iter().zip(places) {
            match (strategy, place) {
                (AnyStrategy::RateLimit(s), _) => l = Some(s),
                (AnyStrategy::Bulkhead(s), _) => b = Some(s),
                (AnyStrategy::Timeout(s), 2) => total = Some(s),
                (AnyStrategy::Timeout(s), _) => attempt = Some(s),
                (AnyStrategy::Hedging(s), _) => h = Some(s),
                (AnyStrategy::Retry(s), _) => r = Some(s),
                (AnyStrategy::CircuitBreaker(s), _) => c = Some(s),
            }
        }
        let fixed = Stack::new(Identity, l);
        let fixed = Stack::new(Stack::new(Stack::new(fixed, b), total), h);
        let fixed = Stack::new(Stack::new(Stack::new(fixed, r), c), attempt);
        SlotStrategies::Fixed(fixed)
    }

    /// Whether the strategies sit in the fixed order (static, unboxed).
    pub fn is_fixed(&self) -> bool {
        matches!(self, SlotStrategies::Fixed(_))
    }
}

strategy_over_kinds! {
    SlotStrategies;
    fn attach(&mut self, telemetry) {
        match self {
            SlotStrategies::Fixed(s) => s.attach(telemetry),
            SlotStrategies::Dynamic(s) => s.attach(telemetry),
        }
    }
    fn execute(&self, ctx, op) {
        match self {
            SlotStrategies::Fixed(s) => Either::Left {
                future: s.execute(ctx, op),
            },
            SlotStrategies::Dynamic(s) => Either::Right {
                future: s.execute(ctx, op),
            },
        }
    }
}

/// Strategies in any order, outer to inner, each future boxed (see [`SlotStrategies`]).
#[derive(Debug, Clone)]
pub struct DynamicStrategies<S>(Vec<S>);

impl<S: Attach> Attach for DynamicStrategies<S> {
    fn attach(&mut self, telemetry: &Telemetry) {
        for strategy in &mut self.0 {
            strategy.attach(telemetry);
        }
    }
}

type BoxFuture<'a, O> = Pin<Box<dyn Future<Output = O> + Send + 'a>>;

impl<Out, Err, S: Strategy<Out, Err>> Strategy<Out, Err> for DynamicStrategies<S> {
    fn execute<F, Fut>(
        &self,
        ctx: Context,
        op: F,
    ) -> impl Future<Output = Result<Out, Error<Err>>> + Send
    where
        F: Fn(Context) -> Fut + Copy + Send + Sync,
        Fut: Future<Output = Result<Out, Error<Err>>> + Send,
        Out: Send,
        Err: Send,
    {
        async move {
            let boxed =
                move |ctx: Context| -> BoxFuture<'_, Result<Out, Error<Err>>> { Box::pin(op(ctx)) };
            run(&self.0, ctx, &boxed).await
        }
    }
}

/// `strategies[0]` around the rest, around `op`: one type whatever the depth.
fn run<'a, Out, Err, S: Strategy<Out, Err>>(
    strategies: &'a [S],
    ctx: Context,
    op: &'a (dyn Fn(Context) -> BoxFuture<'a, Result<Out, Error<Err>>> + Send + Sync),
) -> BoxFuture<'a, Result<Out, Error<Err>>>
where
    Out: Send + 'a,
    Err: Send + 'a,
{
    match strategies.split_first() {
        None => op(ctx),
        Some((first, rest)) => Box::pin(first.execute(ctx, move |ctx| run(rest, ctx, op))),
    }
}
