//! A route's strategies, built from its configuration: every strategy is optional, so one
//! static type serves every route (`Option<S>` is a strategy that is `S` or nothing).

use crate::config::RouteConfig;
use std::sync::Arc;
use std::time::Duration;
use stormwall::bulkhead::Bulkhead;
use stormwall::circuit_breaker::{
    Acquired, CallOutcome, CircuitBreaker, CircuitState, CircuitTransition, Command, InMemoryStore,
    StateStore, Ticket, TransitionSink,
};
use stormwall::hedging::Hedging;
use stormwall::pipeline::{Identity, Stack};
use stormwall::rate_limit::KeyedRateLimiter;
use stormwall::registry::{
    keep_or_build, AnyStrategy, SlotStrategies, StrategyChanges, StrategyKind, StrategySpec,
};
use stormwall::retry::Retry;
use stormwall::telemetry::EventListener;
use stormwall::timeout::Timeout;
use stormwall::{ConfigError, Pipeline};
use stormwall_http::{RetryAfter, Transient};
use stormwall_redis::{RedisStateStore, RedisStoreOptions};

/// `$kinds` (`AnyStrategy` or `SlotStrategies`) with the sidecar's type for each kind: the
/// core's kinds with the sidecar's HTTP predicates, a per-client limiter and a breaker store
/// that may be Redis.
macro_rules! route_kinds {
    ($kinds:ident) => {
        $kinds<
            KeyedRateLimiter,
            Bulkhead,
            Timeout,
            Hedging<Transient>,
            Retry<Transient, RetryAfter>,
            CircuitBreaker<Transient, BreakerStore>,
        >
    };
}

/// One strategy of a route, built.
pub(crate) type RouteStrategy = route_kinds!(AnyStrategy);

/// A route's strategies in its order: static and unboxed in the fixed order (per-client rate
/// limit → bulkhead → total timeout → hedging → retry → breaker → attempt timeout, as every
/// route written with its own keys is), boxed between strategies in another order a
/// pipeline gives (see `stormwall::registry::SlotStrategies`).
pub(crate) type Strategies = Stack<Identity, route_kinds!(SlotStrategies)>;

/// What decides whether a reload keeps a built strategy: its spec, and for a Redis breaker
/// the Redis URL and the probe lease.
type Kept = (StrategySpec, Option<(String, Duration)>);

/// Where a route's breaker keeps its state: in this process, or in Redis, shared by every
/// replica of the sidecar (`circuit_breaker.redis`).
// One per route, behind the breaker's Arc: its size does not matter, an extra indirection
// on the local breaker's hot path would.
#[allow(clippy::large_enum_variant)]
pub enum BreakerStore {
    /// This process only.
    Local(InMemoryStore),
    /// Shared through Redis (the local breaker decides while Redis is down).
    Redis(RedisStateStore),
}

impl std::fmt::Debug for BreakerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BreakerStore::Local(_) => "BreakerStore::Local",
            BreakerStore::Redis(_) => "BreakerStore::Redis",
        })
    }
}

/// Calls the same method on whichever store it is.
macro_rules! on_store {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            BreakerStore::Local($s) => $call,
            BreakerStore::Redis($s) => $call,
        }
    };
}

impl BreakerStore {
    /// True when the state is shared now (a Redis store that Redis answers).
    pub fn is_shared(&self) -> bool {
        matches!(self, BreakerStore::Redis(s) if s.is_connected())
    }
}

impl StateStore for BreakerStore {
    fn try_acquire(&self) -> Acquired {
        on_store!(self, s => s.try_acquire())
    }
    fn record(&self, ticket: Ticket, outcome: CallOutcome) -> Option<CircuitTransition> {
        on_store!(self, s => s.record(ticket, outcome))
    }
    fn release(&self, ticket: Ticket) {
        on_store!(self, s => s.release(ticket))
    }
    fn command(&self, command: Command) -> Option<CircuitTransition> {
        on_store!(self, s => s.command(command))
    }
    fn state(&self) -> CircuitState {
        on_store!(self, s => s.state())
    }
    fn set_transition_sink(&self, sink: TransitionSink) {
        on_store!(self, s => s.set_transition_sink(sink))
    }
}

/// Where a route's per-client key comes from (`client_key`), resolved when it is built.
#[derive(Debug, Clone)]
pub(crate) enum ClientKey {
    /// No per-client key.
    None,
    /// The client's IP address (`client_key = "ip"`).
    Ip,
    /// A request header.
    Header(http::HeaderName),
}

/// One configured route, ready to serve.
pub struct Route {
    pub(crate) config: RouteConfig,
    /// `host:port` of the upstream, parsed.
    pub(crate) upstream: http::uri::Authority,
    /// The upstream's path prefix (no trailing `/`), put before every request's path.
    pub(crate) upstream_prefix: String,
    pub(crate) client_key: ClientKey,
    /// The fallback's status, body and content type, made once.
    fallback: Option<(http::StatusCode, bytes::Bytes, http::HeaderValue)>,
    /// The answer's status when a request is deferred.
    pub(crate) defer_status: http::StatusCode,
    pub(crate) breaker: Option<CircuitBreaker<Transient, BreakerStore>>,
    /// Its strategies, built, each with what decides whether a reload keeps it.
    strategies: Vec<(Kept, RouteStrategy)>,
    /// For requests that may be retried (idempotent, or with an `Idempotency-Key`).
    pub(crate) retrying: Pipeline<Strategies>,
    /// For the others: the same limiter, bulkhead and breaker, no retry.
    pub(crate) single: Pipeline<Strategies>,
    /// For idempotent methods when the route hedges: `retrying` with hedging.
    pub(crate) hedged: Option<Pipeline<Strategies>>,
    /// The active check's last finding: `None` healthy (or not checked), `Some(why)` not.
    pub(crate) upstream_problem: std::sync::Mutex<Option<String>>,
    /// `stormwall_requests_total{route, class}` for 1xx..5xx, registered once (a lookup per
    /// request would hash and lock in the recorder).
    pub(crate) requests: [metrics::Counter; 5],
    /// `stormwall_request_duration_seconds{route}`.
    pub(crate) duration: metrics::Histogram,
    /// The store-and-forward queue, when the route has `defer` (opened when it starts).
    pub(crate) deferred: std::sync::OnceLock<stormwall_durable::DurableQueue>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.config.name)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Builds the route; strategy errors name the key (`route[payment].retry.delay`,
    /// `pipelines.payment.strategies[2].retry.delay`).
    pub fn build(
        config: &RouteConfig,
        listener: Option<Arc<dyn EventListener>>,
    ) -> Result<Route, ConfigError> {
        Self::rebuild(config, listener, None).map(|(route, _)| route)
    }

    /// Builds the route, keeping each strategy of `previous` whose options did not change
    /// (its state included: an open breaker stays open); says which were kept.
    pub fn rebuild(
        config: &RouteConfig,
        listener: Option<Arc<dyn EventListener>>,
        previous: Option<&Route>,
    ) -> Result<(Route, StrategyChanges), ConfigError> {
        let prefix = format!("route[{}]", config.name);
        let upstream = crate::config::Upstream::parse(&config.upstream)
            .map_err(|why| ConfigError::new(format!("{prefix}.upstream"), &config.upstream, why))?;
        let client_key = match config.client_key.as_deref() {
            None => ClientKey::None,
            Some("ip") => ClientKey::Ip,
            Some(name) => {
                ClientKey::Header(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    ConfigError::new(format!("{prefix}.client_key"), name, "ip or a header name")
                })?)
            }
        };
        let fallback = match &config.fallback {
            None => None,
            Some(f) => Some((
                http::StatusCode::from_u16(f.status).map_err(|_| {
                    ConfigError::new(
                        format!("{prefix}.fallback.status"),
                        f.status,
                        "an HTTP status (100-999)",
                    )
                })?,
                bytes::Bytes::from(f.body.clone()),
                http::HeaderValue::from_str(&f.content_type).map_err(|_| {
                    ConfigError::new(
                        format!("{prefix}.fallback.content_type"),
                        &f.content_type,
                        "a valid header value",
                    )
                })?,
            )),
        };
        let defer_status = match &config.defer {
            None => http::StatusCode::ACCEPTED,
            Some(d) => http::StatusCode::from_u16(d.status).map_err(|_| {
                ConfigError::new(
                    format!("{prefix}.defer.status"),
                    d.status,
                    "an HTTP status (100-999)",
                )
            })?,
        };
        // A Redis breaker's probe lease lives as long as a probe may run: the innermost
        // timeout's.
        let probe_lease = config
            .strategies
            .iter()
            .rev()
            .find_map(|s| match &s.spec {
                StrategySpec::Timeout(t) if t.timeout >= Duration::from_millis(1) => {
                    Some(t.timeout)
                }
                _ => None,
            })
            .unwrap_or(RedisStoreOptions::default().probe_lease);
        let kept: Vec<Kept> = config
            .strategies
            .iter()
            .map(|s| {
                let redis = s.redis.clone().map(|url| (url, probe_lease));
                (s.spec.clone(), redis)
            })
            .collect();
        let old = previous.map_or(&[][..], |p| &p.strategies[..]);
        let (built, changes) = keep_or_build(
            &kept,
            old,
            |(spec, _)| spec.kind(),
            |i, (spec, redis)| {
                let at = &config.strategies[i].key;
                build_strategy(spec, redis.as_ref(), &config.name).map_err(|mut e| {
                    // `retry.delay` → `route[pay].retry.delay`; a timeout is its own key.
                    e.field = match spec.kind() {
                        StrategyKind::Timeout => at.clone(),
                        kind => match e.field.strip_prefix(kind.name()) {
                            Some(rest) => format!("{at}{rest}"),
                            None => format!("{at}.{}", e.field),
                        },
                    };
                    e
                })
            },
        )?;
        let pipeline = |without: &[StrategyKind]| {
            let mut builder = Pipeline::builder().name(config.name.clone());
            if let Some(listener) = &listener {
                builder = builder.listener(Arc::clone(listener));
            }
            let chosen = built
                .iter()
                .filter(|s| !without.contains(&s.kind()))
                .cloned()
                .collect();
            builder
                .strategy(SlotStrategies::new(chosen))
                .build()
                .map_err(|e| e.within(&prefix))
        };
        let hedges = built.iter().any(|s| s.kind() == StrategyKind::Hedging);
        let breaker = built.iter().find_map(|s| match s {
            AnyStrategy::CircuitBreaker(b) => Some(b.clone()),
            _ => None,
        });
        let name = config.name.clone();
        let route = Route {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                metrics::counter!("stormwall_requests_total", "route" => name.clone(), "class" => class)
            }),
            duration: metrics::histogram!("stormwall_request_duration_seconds", "route" => name.clone()),
            upstream_problem: std::sync::Mutex::new(None),
            deferred: std::sync::OnceLock::new(),
            hedged: if hedges { Some(pipeline(&[])?) } else { None },
            retrying: pipeline(&[StrategyKind::Hedging])?,
            single: pipeline(&[StrategyKind::Hedging, StrategyKind::Retry])?,
            config: config.clone(),
            upstream: upstream.authority,
            upstream_prefix: upstream.prefix,
            client_key,
            fallback,
            defer_status,
            breaker,
            strategies: kept.into_iter().zip(built).collect(),
        };
        Ok((route, changes))
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its breaker's state (`None`: the route has no breaker).
    pub fn circuit_state(&self) -> Option<CircuitState> {
        self.breaker.as_ref().map(|b| b.state())
    }

    /// Whether its breaker's state is shared with other replicas right now (configured
    /// with `circuit_breaker.redis`, and Redis answers).
    pub fn circuit_shared(&self) -> bool {
        self.breaker.as_ref().is_some_and(|b| b.store().is_shared())
    }

    /// The upstream's URI for a request's path and query: the upstream's prefix, then the
    /// request's path.
    pub(crate) fn upstream_uri(
        &self,
        path_and_query: &http::uri::PathAndQuery,
    ) -> Result<http::Uri, http::Error> {
        let path_and_query = if self.upstream_prefix.is_empty() {
            path_and_query.clone()
        } else {
            http::uri::PathAndQuery::try_from(format!(
                "{}{}",
                self.upstream_prefix, path_and_query
            ))?
        };
        // From parts: no formatting, no re-parsing.
        let mut target = http::uri::Parts::default();
        target.scheme = Some(http::uri::Scheme::HTTP);
        target.authority = Some(self.upstream.clone());
        target.path_and_query = Some(path_and_query);
        Ok(http::Uri::from_parts(target)?)
    }

    /// The route's fallback answer, saying why in `x-stormwall-fallback`.
    pub(crate) fn fallback_response(
        &self,
        why: &str,
    ) -> Option<http::Response<crate::server::ProxyBody>> {
        use http_body_util::BodyExt as _;
        let (status, body, content_type) = self.fallback.as_ref()?;
        let mut response = http::Response::new(
            http_body_util::Full::new(body.clone())
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = *status;
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, content_type.clone());
        if let Ok(why) = http::HeaderValue::from_str(why) {
            headers.insert(http::HeaderName::from_static("x-stormwall-fallback"), why);
        }
        Some(response)
    }

    /// Whether the route serves a request for `path` and the host `host` gives (asked
    /// only when the route matches on the host).
    pub(crate) fn matches<'a>(&self, host: impl FnOnce() -> Option<&'a str>, path: &str) -> bool {
        path.starts_with(&self.config.matches.path_prefix)
            && match &self.config.matches.host {
                None => true,
                Some(want) => host().is_some_and(|got| want.eq_ignore_ascii_case(got)),
            }
    }
}

impl Route {
    /// Runs the route's active upstream check until the route is dropped (replaced by a
    /// reload): a task holding only a weak reference.
    pub(crate) fn start_health_check(self: &Arc<Self>, client: crate::upstream::UpstreamClient) {
        let Some(check) = self.config.health_check.clone() else {
            return;
        };
        let Ok(path) = http::uri::PathAndQuery::try_from(check.path.as_str()) else {
            return;
        };
        let Ok(uri) = self.upstream_uri(&path) else {
            return;
        };
        let route = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let request =
                    http::Request::get(uri.clone()).body(crate::body::UpstreamBody::empty());
                let finding = match request {
                    Err(e) => Some(e.to_string()),
                    Ok(request) => {
                        match tokio::time::timeout(check.timeout, client.request(request)).await {
                            Ok(Ok(response)) if response.status().is_success() => None,
                            Ok(Ok(response)) => {
                                Some(format!("health check answered {}", response.status()))
                            }
                            Ok(Err(e)) => Some(format!("health check failed: {e}")),
                            Err(_) => {
                                Some(format!("health check timed out after {:?}", check.timeout))
                            }
                        }
                    }
                };
                let Some(route) = route.upgrade() else {
                    return;
                };
                *route
                    .upstream_problem
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = finding;
                drop(route);
                tokio::time::sleep(check.interval).await;
            }
        });
    }
}

/// One strategy of a route, new; errors name the key under the strategy's name
/// (`retry.delay`; a breaker's Redis URL `circuit_breaker.redis`).
fn build_strategy(
    spec: &StrategySpec,
    redis: Option<&(String, Duration)>,
    route: &str,
) -> Result<RouteStrategy, ConfigError> {
    let transient = Transient::default();
    Ok(match spec {
        StrategySpec::RateLimit(o) => AnyStrategy::RateLimit(KeyedRateLimiter::new(*o, 100_000)?),
        StrategySpec::Bulkhead(o) => AnyStrategy::Bulkhead(Bulkhead::new(*o)?),
        StrategySpec::Timeout(o) => AnyStrategy::Timeout(Timeout::new(*o)?),
        StrategySpec::Hedging(o) => {
            AnyStrategy::Hedging(Hedging::new(o.clone().handle(transient))?)
        }
        StrategySpec::Retry(o) => AnyStrategy::Retry(Retry::new(
            o.clone().handle(transient).delay_generator(RetryAfter {
                max: Duration::from_secs(60),
            }),
        )?),
        StrategySpec::CircuitBreaker(o) => {
            let options = o.clone().handle(transient);
            options
                .validate()
                .map_err(|e| e.within("circuit_breaker"))?;
            let store = match redis {
                None => BreakerStore::Local(InMemoryStore::new(&options)),
                Some((url, probe_lease)) => BreakerStore::Redis(
                    RedisStateStore::spawn(
                        url,
                        route,
                        &options,
                        RedisStoreOptions {
                            probe_lease: *probe_lease,
                            ..RedisStoreOptions::default()
                        },
                    )
                    .map_err(|e| {
                        ConfigError::new(
                            "circuit_breaker.redis",
                            url,
                            format!("a reachable redis:// URL ({e})"),
                        )
                    })?,
                ),
            };
            AnyStrategy::CircuitBreaker(CircuitBreaker::with_store(options, store)?)
        }
    })
}
