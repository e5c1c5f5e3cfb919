//! tower integration: a [`Pipeline`] as a `Layer`, so any `tower::Service` (a hyper or
//! reqwest client, a tonic channel, an axum handler) runs behind it.
//!
//! Each attempt clones the request and the inner service, so retries re-send the same
//! request; the inner service's readiness is awaited inside the attempt (under its
//! timeout). A one-strategy pipeline is that strategy's layer.
//!
//! ```
//! use std::time::Duration;
//! use tower_service::Service;
//! use tower_layer::Layer;
//! use stormwall::{Pipeline, Error, retry::RetryOptions};
//! use stormwall::layer::PipelineLayer;
//!
//! # #[derive(Clone)] struct Echo;
//! # impl Service<u32> for Echo {
//! #     type Response = u32; type Error = std::io::Error;
//! #     type Future = std::future::Ready<Result<u32, std::io::Error>>;
//! #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> { std::task::Poll::Ready(Ok(())) }
//! #     fn call(&mut self, req: u32) -> Self::Future { std::future::ready(Ok(req * 2)) }
//! # }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let pipeline = Pipeline::builder()
//!     .timeout(Duration::from_secs(1))
//!     .retry(RetryOptions::constant(Duration::from_millis(50)))
//!     .build()
//!     .unwrap();
//! let mut service = PipelineLayer::new(pipeline).layer(Echo);
//! assert_eq!(service.call(21).await.unwrap(), 42);
//! # }
//! ```

use crate::pipeline::{BuildStrategy, Identity, Pipeline, Stack, Strategy};
use crate::ConfigError;
use crate::Error;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Wraps services in a pipeline.
#[derive(Debug)]
pub struct PipelineLayer<S> {
    pipeline: Arc<Pipeline<S>>,
}

impl<S> Clone for PipelineLayer<S> {
    // Not derived: clones share the pipeline, so `S` need not be `Clone`.
    fn clone(&self) -> Self {
        PipelineLayer {
            pipeline: Arc::clone(&self.pipeline),
        }
    }
}

impl<S> PipelineLayer<S> {
    /// A layer running every request through `pipeline`.
    pub fn new(pipeline: Pipeline<S>) -> Self {
        Self::new_shared(Arc::new(pipeline))
    }

    /// A layer sharing a pipeline with other users (one breaker for several stacks).
    pub fn new_shared(pipeline: Arc<Pipeline<S>>) -> Self {
        PipelineLayer { pipeline }
    }
}

/// The tower layer of a single strategy, from its options or a built strategy:
/// `strategy_layer(RetryOptions::exponential(..))?`, `strategy_layer(breaker.clone())?`.
/// (The bulkhead and the rate limiter also have layers that signal readiness:
/// [`BulkheadLayer`](crate::bulkhead::BulkheadLayer),
/// [`RateLimitLayer`](crate::rate_limit::RateLimitLayer).)
pub fn strategy_layer<B: BuildStrategy>(
    strategy: B,
) -> Result<PipelineLayer<Stack<Identity, B::Strategy>>, ConfigError> {
    Ok(PipelineLayer::new(
        Pipeline::builder().strategy(strategy).build()?,
    ))
}

impl<S, Svc> Layer<Svc> for PipelineLayer<S> {
    type Service = PipelineService<S, Svc>;

    fn layer(&self, inner: Svc) -> Self::Service {
        PipelineService {
            pipeline: Arc::clone(&self.pipeline),
            inner,
        }
    }
}

/// A service behind a pipeline. Always ready: readiness of the inner service is awaited
/// per attempt, inside the pipeline's timeouts.
#[derive(Debug)]
pub struct PipelineService<S, Svc> {
    pipeline: Arc<Pipeline<S>>,
    inner: Svc,
}

impl<S, Svc: Clone> Clone for PipelineService<S, Svc> {
    fn clone(&self) -> Self {
        PipelineService {
            pipeline: Arc::clone(&self.pipeline),
            inner: self.inner.clone(),
        }
    }
}

impl<S, Svc> PipelineService<S, Svc> {
    /// The inner service.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

/// The boxed response future of [`PipelineService`]: tower needs a nameable future type.
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, Error<E>>> + Send>>;

impl<S, Svc, Req> Service<Req> for PipelineService<S, Svc>
where
    S: Strategy<Svc::Response, Svc::Error> + 'static,
    Svc: Service<Req> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
    Svc::Response: Send,
    Svc::Error: Send,
    Req: Clone + Send + Sync + 'static,
{
    type Response = Svc::Response;
    type Error = Error<Svc::Error>;
    type Future = ResponseFuture<Svc::Response, Svc::Error>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let pipeline = Arc::clone(&self.pipeline);
        let inner = self.inner.clone();
        Box::pin(async move {
            pipeline
                .execute(|_ctx| {
                    let mut service = inner.clone();
                    let request = request.clone();
                    async move {
                        poll_fn(|cx| service.poll_ready(cx)).await?;
                        service.call(request).await
                    }
                })
                .await
        })
    }
}
