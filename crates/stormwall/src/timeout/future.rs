use super::TimedOut;
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use pin_project_lite::pin_project;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

thread_local! {
    /// While a timeout polls its operation: the earliest deadline at which an armed timer of
    /// a timeout inside it will wake the task ([`ticks`], 0 = none). A timeout whose
    /// deadline is later needs no timer of its own yet — the inner one wakes the task first,
    /// and the outer one looks again then. Nested timeouts thus register one timer, not two
    /// (a second registration earlier than the first wakes tokio's parked timer driver:
    /// microseconds per request). A plain `u64` keeps the ready path to two cheap accesses.
    static COVERED: Cell<u64> = const { Cell::new(0) };
}

/// `at` as nanoseconds (+1, so that 0 means "none") since a process-wide origin.
fn ticks(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| Instant::now() - Duration::from_secs(1 << 20));
    u64::try_from(at.saturating_duration_since(origin).as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// The earlier of two deadlines in [`ticks`] (0 = none).
fn earliest(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
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
        // The reading the deadline was computed from: the shared reading of the first poll
        // (taken by it; later polls read afresh).
        started: Option<Instant>,
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
        started: Instant,
        deadline: Instant,
        armed: bool,
        timeout: Duration,
        telemetry: &'a Telemetry,
    ) -> Self {
        TimeoutFuture {
            inner,
            sleep: None,
            deadline,
            started: Some(started),
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
        // What the timeouts around this one saw so far in this poll; restored with what
        // this one adds.
        let around = COVERED.take();
        // The operation first: a result that is ready wins over a deadline that passed.
        // Strategies inside share one clock reading per poll.
        let polled =
            crate::clock::sharing_now(this.started.take(), || this.inner.as_mut().poll(cx));
        if let Poll::Ready(outcome) = polled {
            COVERED.set(around);
            return Poll::Ready(outcome);
        }
        let (result, covered) = poll_deadline(&mut this, cx, COVERED.get());
        COVERED.set(earliest(around, covered));
        result
    }
}

/// The operation is pending: has the deadline passed? Returns the result and the deadline
/// this timeout (or one inside it) covers with an armed timer.
#[inline(never)]
fn poll_deadline<T, E, F>(
    this: &mut TimeoutFutureProjection<'_, '_, F>,
    cx: &mut Context<'_>,
    inside: u64,
) -> (Poll<Result<T, Error<E>>>, u64) {
    if !*this.armed {
        return (Poll::Pending, inside);
    }
    let deadline = ticks(*this.deadline);
    if this.sleep.is_none() {
        if inside != 0 && inside <= deadline {
            // A timer inside fires no later than this deadline: no timer needed yet.
            return (Poll::Pending, inside);
        }
        this.sleep
            .set(Some(tokio::time::sleep_until(*this.deadline)));
    }
    let covered = earliest(inside, deadline);
    if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
        if sleep.poll(cx).is_pending() {
            return (Poll::Pending, covered);
        }
    }
    let timeout = *this.timeout;
    this.telemetry
        .emit(crate::telemetry::strategy::TIMEOUT, || {
            Event::Timeout(TimedOut { timeout })
        });
    (Poll::Ready(Err(Error::Timeout(timeout))), 0)
}
