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
            // relaxed load to find out when none does: `execution_span` is then a
            // disabled span, folded away).
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
        self.run_observed(ctx, op).await
    }

    /// [`run`](Self::run) with a listener: attempts and the execution timed and reported.
    /// Its own future, so that its pinned strategies' future does not change how the
    /// plain path above is laid out and compiled.
    async fn run_observed<T, E, F, Fut>(&self, ctx: Context, op: F) -> Result<T, Error<E>>
    where
        S: Strategy<T, E>,
        F: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
        T: Send,
        E: Send,
    {
        let user_op = &op;
        let telemetry = &self.telemetry;
        let observed = move |ctx: Context| {
            let (number, span) = (ctx.attempt(), trace::attempt_span(&ctx));
            observe_attempt(ObservedAttempt {
                number,
                // The first attempt started in the execution's first poll starts with it.
                started: crate::clock::take_shared_start().or_else(|| telemetry.mark()),
                inner: user_op(ctx),
                span,
                output: std::marker::PhantomData,
            })
        };
        let started = telemetry.mark();
        // The strategies share one clock reading per poll; the first is the start mark's.
        let seed = match started {
            Some(crate::clock::Mark::Tokio(at)) => Some(at),
            _ => None,
        };
        // Strategies that call the operation as they start share the start mark too.
        // Guards, not closures: the strategies' future is not moved once more on its way out.
        let (shared, offer) = (
            crate::clock::share_now(seed),
            crate::clock::offer_start(started),
        );
        // Pinned where it is made, and observed through the pin: the strategies' future
        // (hundreds of bytes for a composite) is never moved. Moving it into the observing
        // future cost two `memcpy`s per call (≈ 200 instructions for the composite).
        let inner = std::pin::pin!(self.strategy.execute(ctx, observed));
        let taken = offer.end();
        shared.end();
        ObservedExecution {
            inner,
            telemetry,
            started,
            seed,
            first_start: if taken { None } else { started },
            // A span per observed execution: events and logs inside carry the pipeline's name.
            span: trace::execution_span(telemetry),
        }
        .await
    }
}

/// The spans of an execution (`stormwall.execute`, with the pipeline's name) and of each
/// attempt inside it (`stormwall.attempt`, with its number), at `DEBUG`; with the
/// `tracing` feature off, nothing.
mod trace {
    use super::Context;
    #[cfg(feature = "tracing")]
    use std::future::Future;

    /// An execution's span (nothing without the `tracing` feature).
    #[cfg(feature = "tracing")]
    pub(super) type Span = tracing::Span;
    #[cfg(not(feature = "tracing"))]
    pub(super) type Span = ();

    /// `false` when no subscriber can want a `DEBUG` span (one relaxed load): then no span
    /// is made at all (making a disabled one cost ≈ 20 instructions a call).
    #[cfg(feature = "tracing")]
    #[inline(always)]
    pub(super) fn wanted() -> bool {
        tracing::level_enabled!(tracing::Level::DEBUG)
    }

    #[cfg(feature = "tracing")]
    #[inline]
    pub(super) fn execution_span(telemetry: &crate::telemetry::Telemetry) -> Span {
        if wanted() {
            make_execution_span(telemetry)
        } else {
            Span::none()
        }
    }

    #[cfg(feature = "tracing")]
    #[inline(never)]
    fn make_execution_span(telemetry: &crate::telemetry::Telemetry) -> Span {
        tracing::debug_span!("stormwall.execute", pipeline = telemetry.pipeline())
    }

    #[cfg(not(feature = "tracing"))]
    pub(super) fn execution_span(_: &crate::telemetry::Telemetry) -> Span {}

    /// An attempt's span.
    #[cfg(feature = "tracing")]
    #[inline]
    pub(super) fn attempt_span(ctx: &Context) -> Span {
        if wanted() {
            make_attempt_span(ctx)
        } else {
            Span::none()
        }
    }

    #[cfg(feature = "tracing")]
    #[inline(never)]
    fn make_attempt_span(ctx: &Context) -> Span {
        tracing::debug_span!("stormwall.attempt", attempt = ctx.attempt())
    }

    #[cfg(not(feature = "tracing"))]
    #[inline]
    pub(super) fn attempt_span(_: &Context) -> Span {}

    /// The operation's attempt, inside its span.
    #[cfg(feature = "tracing")]
    #[inline]
    pub(super) fn attempt<F, Fut>(op: &F, ctx: Context) -> tracing::instrument::Instrumented<Fut>
    where
        F: Fn(Context) -> Fut,
        Fut: Future,
    {
        let span = attempt_span(&ctx);
        tracing::Instrument::instrument(op(ctx), span)
    }
}

/// `attempt` behind an opaque type with a declared output. With the named type as the
/// attempt's future (or with one borrowing the telemetry: see [`OBSERVING`]) the
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

scoped_tls::scoped_thread_local! {
    /// The telemetry of the observed execution being polled on this thread: lent to its
    /// attempts for the length of each poll, so an attempt holds no reference count (an
    /// atomic increment and decrement per attempt) and no borrow (which the compiler cannot
    /// prove `Send` through the strategies' futures). Attempts are only ever polled inside
    /// their execution's poll (strategies get the operation by reference, nothing `'static`
    /// to spawn); a nested pipeline lends its own and restores the outer one after.
    static OBSERVING: Telemetry
}

pin_project_lite::pin_project! {
    /// One attempt of an observed execution: raises `AttemptCompleted` when it ends, and
    /// notes a success's end reading for the execution (`clock::success_end_in`).
    struct ObservedAttempt<Fut, T, E> {
        #[pin]
        inner: Fut,
        // Entered around each poll.
        span: trace::Span,
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
        #[cfg(feature = "tracing")]
        let entered = this.span.enter();
        let outcome = std::task::ready!(this.inner.poll(cx)).map_err(Error::Inner);
        #[cfg(feature = "tracing")]
        drop(entered);
        if OBSERVING.is_set() {
            OBSERVING.with(|telemetry| {
                let end = telemetry.now();
                if let (true, Some(end)) = (outcome.is_ok(), end) {
                    crate::clock::note_success_end(end);
                }
                let completed = AttemptCompleted {
                    attempt: *this.number,
                    duration: telemetry.between(*this.started, end),
                    success: outcome.is_ok(),
                };
                telemetry.emit(crate::telemetry::strategy::PIPELINE, || {
                    Event::AttemptCompleted(completed)
                });
            });
        }
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
        // The start mark, offered to the first attempt started in the first poll (if none
        // took it as the execution was made).
        first_start: Option<crate::clock::Mark>,
        // Entered around each poll.
        span: trace::Span,
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
        let (inner, seed, first_start) = (this.inner, this.seed.take(), this.first_start.take());
        let telemetry: &Telemetry = this.telemetry;
        #[cfg(feature = "tracing")]
        let _entered = this.span.enter();
        let offer = crate::clock::offer_start(first_start);
        let (outcome, success_end) = crate::clock::success_end_in(|| {
            crate::clock::sharing_now(seed, || OBSERVING.set(telemetry, || inner.poll(cx)))
        });
        offer.end();
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
