#![cfg_attr(docsrs, feature(doc_cfg))]
//! The standard resilience handler for HTTP clients — what .NET services get from
//! `AddStandardResilienceHandler()` — for any tower `Service<http::Request<B>>` and as a
//! `reqwest_middleware::Middleware`.
//!
//! Order and defaults (every value in [`StandardOptions`], from code or serde):
//! concurrency limit (1000, no queue) → total timeout 30 s → retry (3, exponential 2 s with
//! jitter, `Retry-After` honoured) → circuit breaker (ratio 0.1, minimum throughput 100,
//! sampling 30 s, break 5 s) → attempt timeout 10 s; one limiter and breaker per authority.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use stormwall_http::{StandardLayer, StandardOptions};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! let layer = StandardLayer::new(StandardOptions::default())?;
//! let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
//!     .build_http::<http_body_util::Full<bytes::Bytes>>();
//! let mut client = ServiceBuilder::new().layer(layer).service(client);
//! let request = http::Request::get("http://127.0.0.1:8080/orders/7")
//!     .body(http_body_util::Full::default())?;
//! let response = client.ready().await?.call(request).await?;
//! # let _ = response; Ok(()) }
//! ```

mod body;
mod classify;
mod hedging;
mod options;
mod reqwest_middleware_impl;
mod standard;

pub use body::ReplayBody;
pub use classify::{
    is_transient, may_retry, parse_retry_after, AttemptOutcome, Classifier, HttpResponse,
    RetryAfter, Transient, IDEMPOTENCY_KEY,
};
pub use hedging::{HedgingLayer, HedgingOptions, HedgingService};
pub use options::{HttpRetryOptions, StandardOptions};
pub use reqwest_middleware_impl::StandardMiddleware;
pub use standard::{
    authority_key, ResponseFuture, StandardLayer, StandardLayerBuilder, StandardService,
};
