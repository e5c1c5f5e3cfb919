//! The pipeline: strategies composed outer to inner, run around an async operation.

mod builder;
mod context;
mod optional;
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
            // Without a listener: the operation as it is, nothing timed, nothing held.
            let plain = move |ctx| {
                let attempt = user_op(ctx);
                async move { attempt.await.map_err(Error::Inner) }
            };
            return self.strategy.execute(ctx, plain).await;
        }
        let telemetry = &self.telemetry;
        let observed = move |ctx: Context| {
            // The telemetry is cloned rather than borrowed: a borrow inside the attempt's
            // future trips the compiler's higher-ranked `Send` check when the execution is
            // spawned.
            let (number, started, telemetry) = (ctx.attempt(), telemetry.mark(), telemetry.clone());
            let attempt = user_op(ctx);
            async move {
                let outcome = attempt.await.map_err(Error::Inner);
                let completed = AttemptCompleted {
                    attempt: number,
                    duration: telemetry.elapsed(started),
                    success: outcome.is_ok(),
                };
                telemetry.emit("pipeline", || Event::AttemptCompleted(completed));
                outcome
            }
        };
        let started = telemetry.mark();
        // A span per observed execution: events and logs inside carry the pipeline's name.
        let span = tracing::debug_span!("stormwall.execute", pipeline = telemetry.pipeline());
        // The strategies share one clock reading per poll; the first is the start mark's.
        let seed = match started {
            Some(crate::clock::Mark::Tokio(at)) => Some(at),
            _ => None,
        };
        let outcome = tracing::Instrument::instrument(
            crate::clock::SharingNow::new(self.strategy.execute(ctx, observed), seed),
            span,
        )
        .await;
        let completed = ExecutionCompleted {
            duration: telemetry.elapsed(started),
            success: outcome.is_ok(),
        };
        self.telemetry
            .emit("pipeline", || Event::ExecutionCompleted(completed));
        outcome
    }
}
