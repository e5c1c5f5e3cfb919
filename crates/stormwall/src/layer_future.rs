//! The response future shared by the per-strategy tower services: the inner service's
//! future with its error mapped into [`Error::Inner`], or a rejection decided in
//! `poll_ready`/`call`.

use crate::Error;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// A response of a per-strategy tower service.
    pub struct ResponseFuture<F, E, G = ()> {
        // `None` when the call was rejected.
        #[pin]
        inner: Option<F>,
        // `Some` only without `inner`: the rejection.
        rejection: Option<Error<E>>,
        // Held until the response is ready (a bulkhead slot), then dropped.
        guard: Option<G>,
    }
}

impl<F, E, G> ResponseFuture<F, E, G> {
    pub(crate) fn new(inner: F, guard: Option<G>) -> Self {
        ResponseFuture {
            inner: Some(inner),
            rejection: None,
            guard,
        }
    }

    pub(crate) fn rejected(rejection: Error<E>) -> Self {
        ResponseFuture {
            inner: None,
            rejection: Some(rejection),
            guard: None,
        }
    }
}

impl<T, E, F, G> Future for ResponseFuture<F, E, G>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => {
                let outcome = std::task::ready!(inner.poll(cx)).map_err(Error::Inner);
                this.guard.take();
                Poll::Ready(outcome)
            }
            None => Poll::Ready(Err(this.rejection.take().unwrap_or(Error::BulkheadFull))),
        }
    }
}
