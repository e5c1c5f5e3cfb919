//! Optional strategies: `Option<S>` is a strategy that is `S` when `Some` and nothing when
//! `None` — a pipeline built from configuration keeps static composition (no boxing) while
//! each strategy may or may not be configured.

use super::{Attach, BuildStrategy, Context, Strategy};
use crate::telemetry::Telemetry;
use crate::{ConfigError, Error};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

impl<S: Attach> Attach for Option<S> {
    fn attach(&mut self, telemetry: &Telemetry) {
        if let Some(strategy) = self {
            strategy.attach(telemetry);
        }
    }
}

impl<T, E, S> Strategy<T, E> for Option<S>
where
    S: Strategy<T, E>,
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
        match self {
            Some(strategy) => Either::Left {
                future: strategy.execute(ctx, op),
            },
            None => Either::Right { future: op(ctx) },
        }
    }
}

impl<B: BuildStrategy> BuildStrategy for Option<B> {
    type Strategy = Option<B::Strategy>;
    fn build_strategy(self) -> Result<Self::Strategy, ConfigError> {
        self.map(BuildStrategy::build_strategy).transpose()
    }
}

pin_project! {
    /// One of two futures with the same output.
    #[project = EitherProjection]
    pub(crate) enum Either<L, R> {
        Left { #[pin] future: L },
        Right { #[pin] future: R },
    }
}

impl<O, L, R> Future for Either<L, R>
where
    L: Future<Output = O>,
    R: Future<Output = O>,
{
    type Output = O;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<O> {
        match self.project() {
            EitherProjection::Left { future } => future.poll(cx),
            EitherProjection::Right { future } => future.poll(cx),
        }
    }
}
