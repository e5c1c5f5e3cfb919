use super::RateLimiter;
use crate::layer_future::ResponseFuture;
use crate::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

/// A rate limiter as a tower layer, with backpressure: `poll_ready` waits (without
/// polling the inner service) until a permit is free, so a caller that respects readiness
/// never sees a rejection.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
}

impl RateLimitLayer {
    /// A layer taking permits from `limiter` (clones share its budget).
    pub fn new(limiter: RateLimiter) -> Self {
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            state: State::Idle,
        }
    }
}

/// The service [`RateLimitLayer`] makes.
#[derive(Debug)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: RateLimiter,
    /// A permit is taken in `poll_ready` and spent in `call`.
    state: State,
}

#[derive(Debug)]
enum State {
    Idle,
    /// No permit: waiting until one is free (boxed, and only on this path).
    Waiting(Pin<Box<Sleep>>),
    Permitted,
}

impl<S: Clone> Clone for RateLimitService<S> {
    // Not derived: a clone starts without the original's permit.
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            state: State::Idle,
        }
    }
}

impl<S, Req> Service<Req> for RateLimitService<S>
where
    S: Service<Req>,
    S::Future: Future<Output = Result<S::Response, S::Error>>,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Permitted => return self.inner.poll_ready(cx).map_err(Error::Inner),
                State::Waiting(sleep) => {
                    std::task::ready!(sleep.as_mut().poll(cx));
                    self.state = State::Idle;
                }
                State::Idle => match self.limiter.try_acquire() {
                    Ok(()) => self.state = State::Permitted,
                    Err(wait) => self.state = State::Waiting(Box::pin(tokio::time::sleep(wait))),
                },
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if !matches!(self.state, State::Permitted) {
            // Called without readiness: take a permit now or reject, never panic.
            if let Err(retry_after) = self.limiter.try_acquire() {
                return ResponseFuture::rejected(Error::RateLimited { retry_after });
            }
        }
        self.state = State::Idle;
        ResponseFuture::new(self.inner.call(request), None)
    }
}
