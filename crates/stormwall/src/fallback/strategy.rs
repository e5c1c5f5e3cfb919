use super::{FallbackOptions, FallbackUsed};
use crate::pipeline::{Context, Predicate, Strategy};
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use std::future::Future;

/// Produces the outcome a fallback answers with.
pub trait FallbackAction<T, E> {
    /// The replacement for `outcome`.
    fn fallback(
        &self,
        outcome: Result<T, Error<E>>,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send;

    /// True for an action that reads the call's context in
    /// [`fallback_in`](Self::fallback_in); only then does the strategy keep a copy of it.
    const USES_CONTEXT: bool = false;

    /// The replacement for `outcome` of the call whose context is `ctx` (its key and
    /// properties). By default [`fallback`](Self::fallback); an action that needs the call's
    /// data (stormwall-durable's "queue for later" reads what to queue from a property)
    /// overrides this and sets [`USES_CONTEXT`](Self::USES_CONTEXT).
    fn fallback_in(
        &self,
        ctx: &Context,
        outcome: Result<T, Error<E>>,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send {
        let _ = ctx;
        self.fallback(outcome)
    }
}

/// A fixed value (cloned for each use).
#[derive(Debug, Clone)]
pub struct FallbackValue<T>(pub T);

impl<T: Clone + Send, E: Send> FallbackAction<T, E> for FallbackValue<T> {
    fn fallback(&self, _: Result<T, Error<E>>) -> impl Future<Output = Result<T, Error<E>>> + Send {
        std::future::ready(Ok(self.0.clone()))
    }
}

/// An async function of the replaced outcome.
#[derive(Debug, Clone)]
pub struct FallbackFn<F>(pub F);

impl<T, E, F, Fut> FallbackAction<T, E> for FallbackFn<F>
where
    F: Fn(Result<T, Error<E>>) -> Fut,
    Fut: Future<Output = Result<T, Error<E>>> + Send,
{
    fn fallback(
        &self,
        outcome: Result<T, Error<E>>,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send {
        (self.0)(outcome)
    }
}

/// Replaces a handled outcome (by default any `Err`) with the action's answer.
///
/// Put it outermost: it then also covers timeouts, open circuits and exhausted retries.
#[derive(Debug, Clone)]
pub struct Fallback<A, P> {
    options: FallbackOptions<A, P>,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl<A, P> Fallback<A, P> {
    /// A fallback strategy with `options`.
    pub fn new(options: FallbackOptions<A, P>) -> Self {
        Fallback {
            options,
            telemetry: Telemetry::default(),
        }
    }
}

crate::pipeline::attach_telemetry!([A, P] Fallback<A, P>);

impl<T, E, A, P> Strategy<T, E> for Fallback<A, P>
where
    A: FallbackAction<T, E> + Send + Sync,
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
            // Kept only for an action that reads it (a copy with a key costs an atomic
            // increment); others get an empty context.
            let kept = if A::USES_CONTEXT {
                ctx.clone()
            } else {
                Context::new()
            };
            let outcome = op(ctx).await;
            if !self.options.should_handle.test(&outcome) {
                return outcome;
            }
            let replaced = match &outcome {
                Ok(_) => "ok",
                Err(e) => e.kind(),
            };
            self.telemetry
                .emit(crate::telemetry::strategy::FALLBACK, || {
                    Event::Fallback(FallbackUsed { outcome: replaced })
                });
            self.options.action.fallback_in(&kept, outcome).await
        }
    }
}
