use super::{ChaosControl, ChaosInjected, ChaosOptions};
use crate::pipeline::{Context, Strategy};
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use std::future::Future;
use std::time::Duration;

/// What an injection does to the call it hits.
pub trait Injection<T, E>: Send + Sync {
    /// A short name for events: `fault`, `latency`, `outcome`, `behavior`.
    fn kind(&self) -> &'static str;
    /// Runs the injection. `Some(outcome)` replaces the call; `None` lets it run (after the
    /// injection's delay or side effect).
    fn inject(&self, ctx: &Context) -> impl Future<Output = Option<Result<T, Error<E>>>> + Send;
}

/// Fails the call with the error `make` returns, without running it (Polly's fault).
#[derive(Debug, Clone)]
pub struct Fault<F>(pub F);

impl<T, E, F> Injection<T, E> for Fault<F>
where
    F: Fn(&Context) -> Error<E> + Send + Sync,
    T: Send,
    E: Send,
{
    fn kind(&self) -> &'static str {
        "fault"
    }
    fn inject(&self, ctx: &Context) -> impl Future<Output = Option<Result<T, Error<E>>>> + Send {
        std::future::ready(Some(Err((self.0)(ctx))))
    }
}

/// Delays the call by a fixed latency, then runs it (Polly's latency).
#[derive(Debug, Clone, Copy)]
pub struct Latency(pub Duration);

impl<T: Send, E: Send> Injection<T, E> for Latency {
    fn kind(&self) -> &'static str {
        "latency"
    }
    fn inject(&self, _: &Context) -> impl Future<Output = Option<Result<T, Error<E>>>> + Send {
        let delay = self.0;
        async move {
            tokio::time::sleep(delay).await;
            None
        }
    }
}

/// Answers with the outcome `make` returns, without running the call (Polly's outcome).
#[derive(Debug, Clone)]
pub struct Outcome<F>(pub F);

impl<T, E, F> Injection<T, E> for Outcome<F>
where
    F: Fn(&Context) -> Result<T, Error<E>> + Send + Sync,
    T: Send,
    E: Send,
{
    fn kind(&self) -> &'static str {
        "outcome"
    }
    fn inject(&self, ctx: &Context) -> impl Future<Output = Option<Result<T, Error<E>>>> + Send {
        std::future::ready(Some((self.0)(ctx)))
    }
}

/// Runs a side effect (an async closure), then the call (Polly's behavior).
#[derive(Debug, Clone)]
pub struct Behavior<F>(pub F);

impl<T, E, F, Fut> Injection<T, E> for Behavior<F>
where
    F: Fn(&Context) -> Fut + Send + Sync,
    Fut: Future<Output = ()> + Send,
    T: Send,
    E: Send,
{
    fn kind(&self) -> &'static str {
        "behavior"
    }
    fn inject(&self, ctx: &Context) -> impl Future<Output = Option<Result<T, Error<E>>>> + Send {
        let effect = (self.0)(ctx);
        async move {
            effect.await;
            None
        }
    }
}

/// Injects `I` into a share of the calls (Polly's simmy strategies): to prove, before
/// production does, that the rest of the pipeline copes.
#[derive(Debug, Clone)]
pub struct Chaos<I> {
    injection: I,
    control: ChaosControl,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl<I> Chaos<I> {
    /// A chaos strategy injecting `injection` with `options`, validated.
    pub fn new(options: ChaosOptions, injection: I) -> Result<Self, crate::ConfigError> {
        options.validate().map_err(|e| e.within("chaos"))?;
        Ok(Chaos {
            injection,
            control: ChaosControl::new(&options),
            telemetry: Telemetry::default(),
        })
    }

    /// The handle that switches this strategy on and off at runtime.
    pub fn control(&self) -> ChaosControl {
        self.control.clone()
    }
}

crate::pipeline::attach_telemetry!([I] Chaos<I>);

impl<T, E, I> Strategy<T, E> for Chaos<I>
where
    I: Injection<T, E>,
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
            if self.control.should_inject() {
                let kind = Injection::<T, E>::kind(&self.injection);
                self.telemetry.emit(crate::telemetry::strategy::CHAOS, || {
                    Event::ChaosInjected(ChaosInjected { kind })
                });
                if let Some(outcome) = self.injection.inject(&ctx).await {
                    return outcome;
                }
            }
            op(ctx).await
        }
    }
}
