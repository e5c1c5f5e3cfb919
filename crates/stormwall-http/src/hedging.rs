//! The standard hedging handler: total timeout → hedging → (per endpoint) circuit breaker →
//! attempt timeout.

use crate::body::{Replay, ReplayBody};
use crate::classify::{is_transient, AttemptOutcome, Classifier, HttpResponse, Transient};
use http::uri::{Parts as UriParts, Uri};
use http::{Request, Response};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall::hedging::{Hedging, HedgingOptions as CoreHedging};
use stormwall::pipeline::{Identity, Predicate, Stack};
use stormwall::timeout::Timeout;
use stormwall::{ConfigError, Context, Error, Pipeline};
use tower_layer::Layer;
use tower_service::Service;

/// Options of the [hedging handler](HedgingLayer); defaults are .NET's
/// `AddStandardHedgingHandler()`'s. The hedging keys (`delay`, `max_hedged_attempts`) are the
/// core's [`HedgingOptions`](CoreHedging), the endpoints' breaker is the core's
/// [`CircuitBreakerOptions`] (`[circuit_breaker]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HedgingOptions {
    /// Bounds the whole request, hedges included. Default 30 s. Valid: > 0.
    #[serde(with = "humantime_serde")]
    pub total_request_timeout: Duration,
    /// When hedges start and how many: `delay` (default 2 s; a duration, `"parallel"` or
    /// `"fallback"`) and `max_hedged_attempts` (default 1, valid 1–10).
    #[serde(flatten)]
    pub hedging: CoreHedging,
    /// Bounds each attempt. Default 10 s. Valid: > 0 and ≤ the total.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Endpoints (`scheme://host:port`) for attempt 0, 1, 2, ... in turn. Default: none —
    /// every attempt goes to the request's own authority.
    pub endpoints: Vec<String>,
    /// Each endpoint's breaker. Default: the core's (ratio 0.1, minimum throughput 100,
    /// sampling 30 s, break 5 s).
    pub circuit_breaker: CircuitBreakerOptions,
}

impl Default for HedgingOptions {
    fn default() -> Self {
        HedgingOptions {
            total_request_timeout: Duration::from_secs(30),
            hedging: CoreHedging::default(),
            attempt_timeout: Duration::from_secs(10),
            endpoints: Vec::new(),
            circuit_breaker: CircuitBreakerOptions::default(),
        }
    }
}

/// Which outcomes are not acceptable, so a hedge may still win: transient failures, and an
/// endpoint whose breaker is open.
#[derive(Clone, Default)]
struct HedgeOn {
    classifier: Option<Classifier>,
}

impl<R: HttpResponse, E> Predicate<R, Error<E>> for HedgeOn {
    fn test(&self, outcome: &Result<R, Error<Error<E>>>) -> bool {
        let attempt = match outcome {
            Ok(response) => AttemptOutcome::Status(response.status_code()),
            Err(Error::Inner(Error::Inner(_))) => AttemptOutcome::ConnectionError,
            Err(Error::Inner(Error::Timeout(_))) => AttemptOutcome::Timeout,
            // The endpoint refused (open circuit): another may answer.
            Err(Error::Inner(_)) => return true,
            Err(_) => return false,
        };
        match &self.classifier {
            Some(classify) => classify(attempt),
            None => is_transient(attempt),
        }
    }
}

type EndpointStrategies = Stack<Stack<Identity, CircuitBreaker<Transient>>, Timeout>;
type HedgedStrategies = Stack<Stack<Identity, Timeout>, Option<Hedging<HedgeOn>>>;

struct Endpoint {
    /// `None`: the request's own scheme and authority.
    base: Option<Uri>,
    pipeline: Pipeline<EndpointStrategies>,
    breaker: CircuitBreaker<Transient>,
}

struct Shared {
    endpoints: Vec<Endpoint>,
    hedged: Pipeline<HedgedStrategies>,
    single: Pipeline<HedgedStrategies>,
}

/// The standard hedging handler as a tower layer: when an answer takes longer than the
/// delay (or fails transiently), a hedge goes out — to the next endpoint if configured —
/// and the first acceptable response wins; the others are cancelled.
///
/// ```
/// use stormwall_http::{HedgingLayer, HedgingOptions};
/// let layer = HedgingLayer::new(HedgingOptions {
///     endpoints: vec!["http://10.0.0.1:8080".into(), "http://10.0.0.2:8080".into()],
///     ..Default::default()
/// }).unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct HedgingLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HedgingLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgingLayer")
            .field("endpoints", &self.shared.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl HedgingLayer {
    /// Validates `options` and builds the layer.
    pub fn new(options: HedgingOptions) -> Result<Self, ConfigError> {
        Self::with_classifier(options, None)
    }

    /// Like [`new`](Self::new), with a classifier replacing [`is_transient`].
    pub fn with_classifier(
        options: HedgingOptions,
        classifier: Option<Classifier>,
    ) -> Result<Self, ConfigError> {
        if options.attempt_timeout > options.total_request_timeout {
            return Err(ConfigError::new(
                "attempt_timeout",
                options.attempt_timeout,
                format!(
                    "≤ total_request_timeout ({:?})",
                    options.total_request_timeout
                ),
            ));
        }
        let bases: Vec<Option<Uri>> = if options.endpoints.is_empty() {
            vec![None]
        } else {
            options
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let uri: Uri = e.parse().map_err(|_| {
                        ConfigError::new(format!("endpoints[{i}]"), e, "scheme://host:port")
                    })?;
                    if uri.scheme().is_none() || uri.authority().is_none() {
                        return Err(ConfigError::new(
                            format!("endpoints[{i}]"),
                            e,
                            "scheme://host:port",
                        ));
                    }
                    Ok(Some(uri))
                })
                .collect::<Result<_, _>>()?
        };
        let mut endpoints = Vec::with_capacity(bases.len());
        for base in bases {
            let breaker = CircuitBreaker::new(
                options
                    .circuit_breaker
                    .clone()
                    .handle(Transient::new(classifier.clone())),
            )?;
            let pipeline = Pipeline::builder()
                .strategy(breaker.clone())
                .timeout(options.attempt_timeout)
                .build()?;
            endpoints.push(Endpoint {
                base,
                pipeline,
                breaker,
            });
        }
        let hedging = Hedging::new(options.hedging.clone().handle(HedgeOn { classifier }))
            .map_err(|e| e.within("hedging"))?;
        let outer = |hedging: Option<Hedging<HedgeOn>>| {
            Pipeline::builder()
                .timeout(options.total_request_timeout)
                .strategy(hedging)
                .build()
        };
        Ok(HedgingLayer {
            shared: Arc::new(Shared {
                endpoints,
                hedged: outer(Some(hedging))?,
                single: outer(None)?,
            }),
        })
    }

    /// The breaker of endpoint `index` (in `endpoints` order; 0 without endpoints).
    pub fn breaker(&self, index: usize) -> Option<CircuitBreaker<Transient>> {
        self.shared.endpoints.get(index).map(|e| e.breaker.clone())
    }
}

impl<S> Layer<S> for HedgingLayer {
    type Service = HedgingService<S>;
    fn layer(&self, inner: S) -> HedgingService<S> {
        HedgingService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`HedgingLayer`] makes.
#[derive(Clone)]
pub struct HedgingService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// `uri` sent to `base`'s scheme and authority instead of its own.
fn rebase(uri: &Uri, base: Option<&Uri>) -> Uri {
    let Some(base) = base else {
        return uri.clone();
    };
    let mut parts = UriParts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = uri.path_and_query().cloned();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for HedgingService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqB: ReplayBody + Default + Send + Sync + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = Error<S::Error>;
    type Future = crate::ResponseFuture<Response<ResB>, S::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        Box::pin(async move {
            let replay = Replay::new(request);
            let pipeline = if replay.replayable() {
                &shared.hedged
            } else {
                tracing::debug!(uri = %replay.parts.uri, "stormwall-http: the body cannot be replayed; not hedged");
                &shared.single
            };
            let (endpoints, replay, inner) = (&shared.endpoints, &replay, &inner);
            pipeline
                .execute(|ctx: Context| {
                    let endpoint = &endpoints[ctx.attempt() as usize % endpoints.len()];
                    let attempt = replay.next(rebase(&replay.parts.uri, endpoint.base.as_ref()));
                    let attempt = Mutex::new(Some(attempt));
                    let service = inner.clone();
                    async move {
                        endpoint
                            .pipeline
                            .execute(|_| {
                                let request =
                                    attempt.lock().unwrap_or_else(|e| e.into_inner()).take();
                                let mut service = service.clone();
                                async move {
                                    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                                    // The endpoint pipeline makes one attempt: the request is there.
                                    service.call(request.unwrap_or_default()).await
                                }
                            })
                            .await
                    }
                })
                .await
                .map_err(Error::flatten)
        })
    }
}
