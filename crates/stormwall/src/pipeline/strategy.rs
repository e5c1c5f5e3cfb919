use super::Context;
use crate::telemetry::Telemetry;
use crate::Error;
use std::future::Future;

/// One resilience strategy: it runs `op` (the rest of the pipeline, inner strategies and the
/// operation) zero, one or several times and decides the outcome.
///
/// Strategies nest statically: [`Stack<Outer, Inner>`](Stack) runs `Inner` inside `Outer`,
/// so a whole pipeline is one concrete type, and the compiler inlines it into one state
/// machine with no boxing and no allocation.
///
/// `op` takes the [`Context`] by value: each strategy hands the next one the context it
/// should see (the attempt number, a tightened deadline).
pub trait Strategy<T, E>: Attach + Send + Sync {
    /// Runs `op` under this strategy.
    fn execute<F, Fut>(
        &self,
        ctx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send
    where
        F: Fn(Context) -> Fut + Copy + Send + Sync,
        Fut: Future<Output = Result<T, Error<E>>> + Send,
        T: Send,
        E: Send;
}

/// The part of a strategy that does not depend on the outcome type: it receives the
/// pipeline's telemetry once, when the pipeline is built.
pub trait Attach {
    /// Called by [`PipelineBuilder::build`](super::PipelineBuilder::build).
    fn attach(&mut self, telemetry: &Telemetry);
}

/// Implements [`Attach`] for strategies that keep the telemetry in a `telemetry` field:
/// `attach_telemetry!([P, G] Retry<P, G>)`.
macro_rules! attach_telemetry {
    ([$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*> $crate::pipeline::Attach for $ty {
            fn attach(&mut self, telemetry: &$crate::telemetry::Telemetry) {
                self.telemetry = telemetry.clone();
            }
        }
    };
}
pub(crate) use attach_telemetry;

/// The empty strategy: runs the operation once, as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl Attach for Identity {
    fn attach(&mut self, _: &Telemetry) {}
}

impl<T, E> Strategy<T, E> for Identity {
    #[inline]
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
        op(ctx)
    }
}

/// Two strategies, `outer` wrapping `inner`.
#[derive(Debug, Clone)]
pub struct Stack<Outer, Inner> {
    outer: Outer,
    inner: Inner,
}

impl<Outer, Inner> Stack<Outer, Inner> {
    /// `inner` placed inside `outer`.
    pub fn new(outer: Outer, inner: Inner) -> Self {
        Stack { outer, inner }
    }

    /// The outer strategy.
    pub fn outer(&self) -> &Outer {
        &self.outer
    }

    /// The inner strategy.
    pub fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl<Outer: Attach, Inner: Attach> Attach for Stack<Outer, Inner> {
    fn attach(&mut self, telemetry: &Telemetry) {
        self.outer.attach(telemetry);
        self.inner.attach(telemetry);
    }
}

impl<T, E, Outer, Inner> Strategy<T, E> for Stack<Outer, Inner>
where
    Outer: Strategy<T, E>,
    Inner: Strategy<T, E>,
{
    #[inline]
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
        let inner = &self.inner;
        // The closure holds two references, so it is `Copy`: the outer strategy owns its
        // own copy and no future has to borrow from another.
        self.outer.execute(ctx, move |ctx| inner.execute(ctx, op))
    }
}
