//! The pipeline: strategies composed outer to inner, run around an async operation.

mod builder;
mod context;
mod optional;
pub(crate) use optional::Either;
mod outcome;
mod strategy;

pub use builder::{BuildStrategy, PipelineBuilder};
pub use context::{Context, Properties};
pub use outcome::{OnError, OnTransientError, Predicate};
pub(crate) use strategy::attach_telemetry;
pub use strategy::{Attach, Identity, Stack, Strategy};

use crate::telemetry::{AttemptCompleted, Event, ExecutionCompleted, Telemetry};
use crate::Error;
use std::future::Future;

/// Strategies composed outer to inner, ready to run operations.
///
/// Build one with [`Pipeline::builder`]; keep it (it is `Send + Sync`, share it by
/// reference or in an `Arc`) and call [`execute`](Self::execute) for each operation.
/// `S` is the static nesting of the strategies; you rarely need to name it.
#[derive(Debug, Clone)]
pub struct Pipeline<S> {
    strategy: S,
    telemetry: Telemetry,
}

impl Pipeline<Identity> {
    /// An empty builder. Each strategy added wraps inside the ones added before it.
    pub fn builder() -> PipelineBuilder<Identity> {
        PipelineBuilder::new()
    }
}

impl<S> Pipeline<S> {
    pub(crate) fn from_parts(strategy: S, telemetry: Telemetry) -> Self {
        Pipeline {
            strategy,
            telemetry,
        }
    }

    /// The composed strategies.
    pub fn strategy(&self) -> &S {
        &self.strategy
    }

    /// The pipeline's telemetry (name and listener).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Runs `op` through every strategy, with a fresh [`Context`].
    ///
    /// `op` is called once per attempt with that attempt's context, and returns the
    /// attempt's future. Its error `E` comes back as [`Error::Inner`].
    pub fn execute<T, E, F, Fut>(
        &self,
        op: F,
    ) -> impl Future<Output = Result<T, Error<E>>> + use<'_, S, T, E, F, Fut>
    where
        S: Strategy<T, E>,
        F: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
        T: Send,
        E: Send,
    {
        self.execute_with(Context::new(), op)
    }

    /// Like [`execute`](Self::execute), with a context the caller prepared (a key,
    /// properties).
    pub fn execute_with<T, E, F, Fut>(
        &self,
        ctx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, Error<E>>> + use<'_, S, T, E, F, Fut>
    where
        S: Strategy<T, E>,
        F: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
        T: Send,
        E: Send,
    {
        self.run(ctx, op)
    }

    async fn run<T, E, F, Fut>(&self, ctx: Context, op: F) -> Result<T, Error<E>>
    where
        S: Strategy<T, E>,
        F: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
        T: Send,
        E: Send,
    {
        let user_op = &op;
        if !self.telemetry.is_enabled() {
            // A span per execution and per attempt whenever a subscriber wants them (one
            // relaxed load to find out when none does).
            #[cfg(feature = "tracing")]
            {
                let span = trace::execution_span(&self.telemetry);
                if !span.is_disabled() {
                    let traced = move |ctx: Context| {
                        let attempt = trace::attempt(user_op, ctx);
                        async move { attempt.await.map_err(Error::Inner) }
                    };
                    let execution = self.strategy.execute(ctx, traced);
                    return tracing::Instrument::instrument(execution, span).await;
                }
            }
            // Without a listener: the operation as it is, nothing timed, nothing held.
            let plain = move |ctx| {
                let attempt = user_op(ctx);
                async move { attempt.await.map_err(Error::Inner) }
            };
            return self.strategy.execute(ctx, plain).await;
        }
        let telemetry = &self.telemetry;
        let observed = move |ctx: Context| {
            observe_attempt(ObservedAttempt {
                number: ctx.attempt(),
                started: telemetry.mark(),
                telemetry: telemetry.clone(),
                inner: trace::attempt(user_op, ctx),
                output: std::marker::PhantomData,
            })
        };
        let started = telemetry.mark();
        // A span per observed execution: events and logs inside carry the pipeline's name.
        #[cfg(feature = "tracing")]
        let span = trace::execution_span(telemetry);
        // The strategies share one clock reading per poll; the first is the start mark's.
        let seed = match started {
            Some(crate::clock::Mark::Tokio(at)) => Some(at),
            _ => None,
        };
        let execution = ObservedExecution {
            // Strategies that call the operation as they start share the start mark too.
            inner: crate::clock::sharing_now(seed, || self.strategy.execute(ctx, observed)),
            telemetry,
            started,
            seed,
        };
        #[cfg(feature = "tracing")]
        return tracing::Instrument::instrument(execution, span).await;
        #[cfg(not(feature = "tracing"))]
        return execution.await;
    }
}

/// The spans of an execution (`stormwall.execute`, with the pipeline's name) and of each
/// attempt inside it (`stormwall.attempt`, with its number), at `DEBUG`; with the
/// `tracing` feature off, nothing.
mod trace {
    use super::Context;
    use std::future::Future;

    #[cfg(feature = "tracing")]
    pub(super) fn execution_span(telemetry: &crate::telemetry::Telemetry) -> tracing::Span {
        tracing::debug_span!("stormwall.execute", pipeline = telemetry.pipeline())
    }

    /// The operation's attempt, inside its span.
    #[cfg(feature = "tracing")]
    #[inline]
    pub(super) fn attempt<F, Fut>(op: &F, ctx: Context) -> tracing::instrument::Instrumented<Fut>
    where
        F: Fn(Context) -> Fut,
        Fut: Future,
    {
        let span = tracing::debug_span!("stormwall.attempt", attempt = ctx.attempt());
        tracing::Instrument::instrument(op(ctx), span)
    }

    #[cfg(not(feature = "tracing"))]
    #[inline]
    pub(super) fn attempt<F, Fut>(op: &F, ctx: Context) -> Fut
    where
        F: Fn(Context) -> Fut,
        Fut: Future,
    {
        op(ctx)
    }
}

/// `attempt` behind an opaque type with a declared output. With the named type as the
/// attempt's future (or with one borrowing the telemetry rather than holding a clone) the
/// compiler cannot prove a spawned execution `Send` ("one type is more general than the
/// other").
#[inline(always)]
fn observe_attempt<T, E, Fut>(
    attempt: ObservedAttempt<Fut, T, E>,
) -> impl Future<Output = Result<T, Error<E>>> + Send
where
    Fut: Future<Output = Result<T, E>> + Send,
{
    attempt
}

pin_project_lite::pin_project! {
    /// One attempt of an observed execution: raises `AttemptCompleted` when it ends, and
    /// notes a success's end reading for the execution (`clock::success_end_in`).
    struct ObservedAttempt<Fut, T, E> {
        #[pin]
        inner: Fut,
        telemetry: Telemetry,
        number: u32,
        started: Option<crate::clock::Mark>,
        output: std::marker::PhantomData<fn() -> Result<T, E>>,
    }
}

impl<T, E, Fut> Future for ObservedAttempt<Fut, T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    type Output = Result<T, Error<E>>;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.inner.poll(cx)).map_err(Error::Inner);
        let end = this.telemetry.now();
        if let (true, Some(end)) = (outcome.is_ok(), end) {
            crate::clock::note_success_end(end);
        }
        let completed = AttemptCompleted {
            attempt: *this.number,
            duration: this.telemetry.between(*this.started, end),
            success: outcome.is_ok(),
        };
        this.telemetry
            .emit(crate::telemetry::strategy::PIPELINE, || {
                Event::AttemptCompleted(completed)
            });
        std::task::Poll::Ready(outcome)
    }
}

pin_project_lite::pin_project! {
    /// An observed execution: its strategies share a clock reading per poll (the first
    /// poll's is the start mark's), and it raises `ExecutionCompleted` when it ends.
    struct ObservedExecution<'a, Fut> {
        #[pin]
        inner: Fut,
        telemetry: &'a Telemetry,
        started: Option<crate::clock::Mark>,
        seed: Option<tokio::time::Instant>,
    }
}

impl<T, E, Fut> Future for ObservedExecution<'_, Fut>
where
    Fut: Future<Output = Result<T, Error<E>>>,
{
    type Output = Result<T, Error<E>>;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let (inner, seed) = (this.inner, this.seed.take());
        let (outcome, success_end) =
            crate::clock::success_end_in(|| crate::clock::sharing_now(seed, || inner.poll(cx)));
        let std::task::Poll::Ready(outcome) = outcome else {
            return std::task::Poll::Pending;
        };
        // Succeeded in the poll its last attempt succeeded in: that attempt's end is the
        // execution's (see `clock::success_end_in`).
        let end = match (outcome.is_ok(), success_end) {
            (true, Some(end)) => Some(end),
            _ => this.telemetry.now(),
        };
        let completed = ExecutionCompleted {
            duration: this.telemetry.between(*this.started, end),
            success: outcome.is_ok(),
        };
        this.telemetry
            .emit(crate::telemetry::strategy::PIPELINE, || {
                Event::ExecutionCompleted(completed)
            });
        std::task::Poll::Ready(outcome)
    }
}
