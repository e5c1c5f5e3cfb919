use super::TimedOut;
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// The operation, raced against a deadline.
    ///
    /// The timer is created only when the operation first returns `Pending`: an operation
    /// that completes on its first poll never touches the timer wheel.
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
        // The operation first: a result that is ready wins over a deadline that passed.
        if let Poll::Ready(outcome) = this.inner.poll(cx) {
            return Poll::Ready(outcome);
        }
        if !*this.armed {
            return Poll::Pending;
        }
        if this.sleep.is_none() {
            this.sleep
                .set(Some(tokio::time::sleep_until(*this.deadline)));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
        }
        let timeout = *this.timeout;
        this.telemetry
            .emit("timeout", || Event::Timeout(TimedOut { timeout }));
        Poll::Ready(Err(Error::Timeout(timeout)))
    }
}
