//! The standard resilience handler as a tower layer: concurrency limit → total timeout →
//! retry → circuit breaker → attempt timeout, one set per authority.

use crate::body::{Replay, ReplayBody};
use crate::classify::{may_retry, Classifier, RetryAfter, Transient};
use crate::StandardOptions;
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};
use stormwall::bulkhead::Bulkhead;
use stormwall::circuit_breaker::CircuitBreaker;
use stormwall::pipeline::{Identity, Stack};
use stormwall::retry::Retry;
use stormwall::telemetry::EventListener;
use stormwall::timeout::Timeout;
use stormwall::{ConfigError, Context, Error, Pipeline};
use tower_layer::Layer;
use tower_service::Service;

/// The strategies of one authority, outer to inner. The retry is `None` in the pipeline for
/// requests that must not be retried; both pipelines share the limiter and the breaker.
type Strategies = Stack<
    Stack<
        Stack<Stack<Stack<Identity, Bulkhead>, Timeout>, Option<Retry<Transient, RetryAfter>>>,
        CircuitBreaker<Transient>,
    >,
    Timeout,
>;

/// One authority's strategies.
pub(crate) struct Authority {
    breaker: CircuitBreaker<Transient>,
    retrying: Pipeline<Strategies>,
    single: Pipeline<Strategies>,
}

/// Builds a [`StandardLayer`]: options, plus what cannot be serialised.
pub struct StandardLayerBuilder {
    options: StandardOptions,
    classifier: Option<Classifier>,
    listener: Option<Arc<dyn EventListener>>,
    name: String,
    max_authorities: usize,
}

impl StandardLayerBuilder {
    /// Replaces the standard classification of transient failures (see
    /// [`is_transient`](crate::is_transient)).
    pub fn classifier(
        mut self,
        classify: impl Fn(crate::AttemptOutcome) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.classifier = Some(Arc::new(classify));
        self
    }

    /// Sends every event to `listener`; pipelines are named `<name>/<authority>`.
    pub fn listener(mut self, listener: Arc<dyn EventListener>) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The client's name in events and metrics. Default `"http"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The most authorities kept (each with its breaker and limiter); requests to further
    /// authorities are sent through a shared overflow set. Default 1024.
    pub fn max_authorities(mut self, max: usize) -> Self {
        self.max_authorities = max.max(1);
        self
    }

    /// Validates the options and builds the layer.
    pub fn build(self) -> Result<StandardLayer, ConfigError> {
        self.options.validate()?;
        let deadline_header =
            match &self.options.deadline_header {
                None => None,
                Some(name) => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    ConfigError::new("deadline_header", name, "a valid header name")
                })?),
            };
        let recipe = Recipe {
            options: self.options,
            classifier: self.classifier,
            listener: self.listener,
            name: self.name,
        };
        // Built now, so that any invalid value fails here rather than per request; it serves
        // requests without an authority and those beyond `max_authorities`.
        let overflow = Arc::new(recipe.build("")?);
        let shared = Shared {
            recipe,
            max_authorities: self.max_authorities,
            deadline_header,
            authorities: RwLock::new(HashMap::new()),
            overflow,
        };
        Ok(StandardLayer {
            shared: Arc::new(shared),
        })
    }
}

/// The standard resilience handler for any `tower::Service<http::Request<B>>` (hyper-util's
/// client, an axum router, ...).
///
/// Per request: the authority (scheme + host + port) picks its own concurrency limiter
/// and circuit breaker, created on first use, so one bad host does not open the circuit for
/// the others. Transient failures (5xx, 408, 429, connection errors, attempt timeouts) are
/// retried with exponential backoff and jitter, honouring `Retry-After` on 429/503; POST and
/// PATCH only with an `Idempotency-Key` (or the opt-in); a body that cannot be replayed is
/// sent once. Clones of the layer, and the services it makes, share the authorities.
///
/// ```
/// use stormwall_http::{StandardLayer, StandardOptions};
/// let layer = StandardLayer::builder(StandardOptions::default()).name("payments").build().unwrap();
/// // tower::ServiceBuilder::new().layer(layer).service(client)
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct StandardLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StandardLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandardLayer")
            .field("options", &self.shared.recipe.options)
            .finish_non_exhaustive()
    }
}

/// What each authority's strategies are built from.
struct Recipe {
    options: StandardOptions,
    classifier: Option<Classifier>,
    listener: Option<Arc<dyn EventListener>>,
    name: String,
}

pub(crate) struct Shared {
    recipe: Recipe,
    max_authorities: usize,
    deadline_header: Option<HeaderName>,
    authorities: RwLock<HashMap<String, Arc<Authority>>>,
    /// The shared set for requests without an authority or beyond `max_authorities`.
    overflow: Arc<Authority>,
}

impl StandardLayer {
    /// A builder with `options`.
    pub fn builder(options: StandardOptions) -> StandardLayerBuilder {
        StandardLayerBuilder {
            options,
            classifier: None,
            listener: None,
            name: "http".into(),
            max_authorities: 1024,
        }
    }

    /// The standard handler with every default.
    pub fn new(options: StandardOptions) -> Result<Self, ConfigError> {
        Self::builder(options).build()
    }

    /// The breaker of `authority` (`scheme://host:port`), once a request has used it.
    pub fn breaker(&self, authority: &str) -> Option<CircuitBreaker<Transient>> {
        let map = self
            .shared
            .authorities
            .read()
            .unwrap_or_else(|e| e.into_inner());
        map.get(authority).map(|a| a.breaker.clone())
    }

    /// The authorities seen so far.
    pub fn authorities(&self) -> Vec<String> {
        let map = self
            .shared
            .authorities
            .read()
            .unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }
}

impl StandardLayer {
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl Authority {
    /// The pipeline for a request that may (or may not) be retried.
    pub(crate) fn pipeline(&self, retry: bool) -> &Pipeline<Strategies> {
        if retry {
            &self.retrying
        } else {
            &self.single
        }
    }
}

impl Shared {
    pub(crate) fn options(&self) -> &StandardOptions {
        &self.recipe.options
    }

    pub(crate) fn deadline_header(&self) -> Option<&HeaderName> {
        self.deadline_header.as_ref()
    }
}

impl<S> Layer<S> for StandardLayer {
    type Service = StandardService<S>;
    fn layer(&self, inner: S) -> StandardService<S> {
        StandardService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// `scheme://host:port` of a URI (the port defaulted from the scheme).
pub fn authority_key(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let Some(host) = uri.host() else {
        return String::new();
    };
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{host}:{port}")
}

impl Recipe {
    fn build(&self, authority: &str) -> Result<Authority, ConfigError> {
        let o = &self.options;
        let transient = Transient::new(self.classifier.clone());
        let limiter = Bulkhead::new(o.rate_limiter).map_err(|e| e.within("rate_limiter"))?;
        let breaker = CircuitBreaker::new(o.circuit_breaker.clone().handle(transient.clone()))?;
        let retry = Retry::new(o.retry.options.clone().handle(transient).delay_generator(
            RetryAfter {
                max: o.retry.max_retry_after,
            },
        ))?;
        let pipeline = |retry: Option<Retry<Transient, RetryAfter>>| {
            let mut builder = Pipeline::builder().name(format!("{}/{authority}", self.name));
            if let Some(listener) = &self.listener {
                builder = builder.listener(Arc::clone(listener));
            }
            builder
                .strategy(limiter.clone())
                .timeout(o.total_request_timeout)
                .strategy(retry)
                .strategy(breaker.clone())
                .timeout(o.attempt_timeout)
                .build()
        };
        Ok(Authority {
            retrying: pipeline(Some(retry))?,
            single: pipeline(None)?,
            breaker,
        })
    }
}

impl Shared {
    pub(crate) fn authority(&self, key: String) -> Arc<Authority> {
        if let Some(found) = self
            .authorities
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Arc::clone(found);
        }
        let mut map = self.authorities.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = map.get(&key) {
            return Arc::clone(found);
        }
        let room = map.len() < self.max_authorities && !key.is_empty();
        // Options were validated when the layer was built, so building cannot fail; if it
        // did, the overflow set serves.
        match self.recipe.build(&key) {
            Ok(authority) if room => Arc::clone(map.entry(key).or_insert(Arc::new(authority))),
            _ => Arc::clone(&self.overflow),
        }
    }
}

/// The service [`StandardLayer`] makes.
#[derive(Clone)]
pub struct StandardService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for StandardService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandardService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The future [`StandardService`] returns.
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, Error<E>>> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for StandardService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqB: ReplayBody + Default + Send + Sync + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<Response<ResB>, S::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        // Each attempt waits for the inner service's readiness itself (on a clone), inside
        // the timeouts; the limiter rejects at once when full.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        Box::pin(async move { send(&shared, inner, request).await })
    }
}

async fn send<S, ReqB, ResB>(
    shared: &Shared,
    inner: S,
    request: Request<ReqB>,
) -> Result<Response<ResB>, Error<S::Error>>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqB: ReplayBody + Default + Send + Sync + 'static,
    ResB: Send + 'static,
{
    let authority = shared.authority(authority_key(request.uri()));
    let replay = Replay::new(request);
    let by_method = may_retry(
        &replay.parts.method,
        &replay.parts.headers,
        shared.recipe.options.retry.retry_unsafe_methods,
    );
    if by_method && !replay.replayable() {
        tracing::debug!(uri = %replay.parts.uri, "stormwall-http: the body cannot be replayed; sent once, not retried");
    }
    let pipeline = authority.pipeline(by_method && replay.replayable());
    let (replay, deadline_header) = (&replay, shared.deadline_header.as_ref());
    pipeline
        .execute(|ctx: Context| {
            let mut attempt = replay.next(replay.parts.uri.clone());
            if let (Some(name), Some(remaining)) = (deadline_header, ctx.remaining()) {
                attempt.headers_mut().insert(
                    name.clone(),
                    HeaderValue::from(remaining.as_millis() as u64),
                );
            }
            let mut service = inner.clone();
            async move {
                std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(attempt).await
            }
        })
        .await
}
