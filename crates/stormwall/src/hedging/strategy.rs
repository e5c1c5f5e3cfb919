use super::{HedgeStarted, HedgingMode, HedgingOptions};
use crate::pipeline::{Context, OnError, Predicate, Strategy};
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use tokio::time::{Instant, Sleep};

/// Runs further attempts of a slow or failing call alongside the first; the first
/// acceptable outcome wins, and the attempts still running are cancelled (dropped).
///
/// The operation sees which attempt it runs as in [`Context::attempt`] (0 for the primary):
/// that is how it picks an alternate endpoint for a hedge. When no attempt is acceptable,
/// the last outcome to arrive is returned.
///
/// The primary attempt lives inline in the execution's future; only hedges are boxed, so an
/// execution that needs no hedge allocates nothing.
#[derive(Debug, Clone)]
pub struct Hedging<P = OnError> {
    options: HedgingOptions<P>,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl<P> Hedging<P> {
    /// A hedging strategy with `options`, validated.
    pub fn new(options: HedgingOptions<P>) -> Result<Self, crate::ConfigError> {
        options.validate().map_err(|e| e.within("hedging"))?;
        Ok(Hedging {
            options,
            telemetry: Telemetry::default(),
        })
    }
}

crate::pipeline::attach_telemetry!([P] Hedging<P>);

impl<T, E, P> Strategy<T, E> for Hedging<P>
where
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
            let total = 1 + self.options.max_hedged_attempts;
            let mut primary = pin!(Some(op(ctx.for_attempt(0))));
            // Hedges, boxed; `None` once finished.
            let mut hedges: Vec<Option<Pin<Box<Fut>>>> = Vec::new();
            let mut started = 1u32;
            let mut last: Option<Result<T, Error<E>>> = None;
            // Latency mode's timer: created the first time every attempt is pending.
            let mut timer: Pin<&mut Option<Sleep>> = pin!(None);
            let delay = match self.options.mode {
                HedgingMode::Latency(delay) => Some(delay),
                _ => None,
            };
            let start_next = |hedges: &mut Vec<Option<Pin<Box<Fut>>>>, started: &mut u32| {
                let attempt = *started;
                *started += 1;
                self.telemetry
                    .emit(crate::telemetry::strategy::HEDGING, || {
                        Event::HedgeStarted(HedgeStarted { attempt })
                    });
                hedges.push(Some(Box::pin(op(ctx.for_attempt(attempt)))));
            };
            if self.options.mode == HedgingMode::Parallel {
                while started < total {
                    start_next(&mut hedges, &mut started);
                }
            }
            poll_fn(|cx| loop {
                let mut progressed = false;
                // The primary first, then the hedges in the order they started.
                if let Some(fut) = primary.as_mut().as_pin_mut() {
                    if let Poll::Ready(outcome) = fut.poll(cx) {
                        primary.set(None);
                        if !self.options.should_handle.test(&outcome) {
                            return Poll::Ready(outcome);
                        }
                        last = Some(outcome);
                        progressed = true;
                    }
                }
                for slot in hedges.iter_mut() {
                    if let Some(fut) = slot {
                        if let Poll::Ready(outcome) = fut.as_mut().poll(cx) {
                            *slot = None;
                            if !self.options.should_handle.test(&outcome) {
                                return Poll::Ready(outcome);
                            }
                            last = Some(outcome);
                            progressed = true;
                        }
                    }
                }
                let running =
                    usize::from(primary.is_some()) + hedges.iter().filter(|h| h.is_some()).count();
                if progressed && started < total {
                    // A failure: the next attempt starts at once, in every mode.
                    start_next(&mut hedges, &mut started);
                    timer.set(None);
                    continue;
                }
                if running == 0 {
                    if let Some(outcome) = last.take() {
                        return Poll::Ready(outcome);
                    }
                }
                if let (Some(delay), true) = (delay, started < total) {
                    if timer.is_none() {
                        timer.set(Some(tokio::time::sleep_until(
                            crate::clock::deadline_after(Instant::now(), delay),
                        )));
                    }
                    if let Some(sleep) = timer.as_mut().as_pin_mut() {
                        if sleep.poll(cx).is_ready() {
                            timer.set(None);
                            start_next(&mut hedges, &mut started);
                            continue;
                        }
                    }
                }
                return Poll::Pending;
            })
            .await
        }
    }
}
