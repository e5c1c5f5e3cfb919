use super::TimedOut;
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use pin_project_lite::pin_project;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

thread_local! {
    /// While a timeout polls its operation: the earliest deadline at which an armed timer of
    /// a timeout inside it will wake the task. A timeout whose deadline is later needs no
    /// timer of its own yet — the inner one wakes the task first, and the outer one looks
    /// again then. Nested timeouts thus register one timer, not two (a second registration
    /// earlier than the first wakes tokio's parked timer driver: microseconds per request).
    static COVERED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pin_project! {
    /// The operation, raced against a deadline.
    ///
    /// The timer is created only when the operation first returns `Pending`: an operation
    /// that completes on its first poll never touches the timer wheel.
    #[project = TimeoutFutureProjection]
    pub struct TimeoutFuture<'a, F> {
        #[pin]
        inner: F,
        // `None` until the inner future first returns `Pending` (and stays `None` when
        // `armed` is false).
        #[pin]
        sleep: Option<Sleep>,
        deadline: Instant,
        // False when an enclosing timeout's deadline is earlier: that one will fire first,
        // so this one needs no timer at all.
        armed: bool,
        timeout: Duration,
        telemetry: &'a Telemetry,
    }
}

impl<'a, F> TimeoutFuture<'a, F> {
    pub(crate) fn new(
        inner: F,
        deadline: Instant,
        armed: bool,
        timeout: Duration,
        telemetry: &'a Telemetry,
    ) -> Self {
        TimeoutFuture {
            inner,
            sleep: None,
            deadline,
            armed,
            timeout,
            telemetry,
        }
    }
}

impl<T, E, F> Future for TimeoutFuture<'_, F>
where
    F: Future<Output = Result<T, Error<E>>>,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // What the timeouts around this one saw so far in this poll; restored below with
        // what this one adds.
        let around = COVERED.take();
        // The operation first: a result that is ready wins over a deadline that passed.
        let polled = this.inner.as_mut().poll(cx);
        let inside = COVERED.get();
        let (result, covered) = match polled {
            Poll::Ready(outcome) => (Poll::Ready(outcome), None),
            Poll::Pending => poll_deadline(&mut this, cx, inside),
        };
        COVERED.set(earliest(around, covered));
        result
    }
}

/// The operation is pending: has the deadline passed? Returns the result and the deadline
/// this timeout (or one inside it) covers with an armed timer.
fn poll_deadline<T, E, F>(
    this: &mut TimeoutFutureProjection<'_, '_, F>,
    cx: &mut Context<'_>,
    inside: Option<Instant>,
) -> (Poll<Result<T, Error<E>>>, Option<Instant>) {
    if !*this.armed {
        return (Poll::Pending, inside);
    }
    if this.sleep.is_none() {
        if inside.is_some_and(|at| at <= *this.deadline) {
            // A timer inside fires no later than this deadline: no timer needed yet.
            return (Poll::Pending, inside);
        }
        this.sleep
            .set(Some(tokio::time::sleep_until(*this.deadline)));
    }
    let covered = earliest(inside, Some(*this.deadline));
    if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
        if sleep.poll(cx).is_pending() {
            return (Poll::Pending, covered);
        }
    }
    let timeout = *this.timeout;
    this.telemetry
        .emit("timeout", || Event::Timeout(TimedOut { timeout }));
    (Poll::Ready(Err(Error::Timeout(timeout))), None)
}
