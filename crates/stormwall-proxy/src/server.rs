//! The reverse proxy: routes a request, runs it through its route's pipeline to the
//! upstream, answers the fallback (or a status that says why) when the pipeline gives up.

use crate::config::Config;
use crate::route::Route;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use stormwall::telemetry::{EventListener, MetricsListener};
use stormwall::{ConfigError, Context, Error};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The body of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The proxy's live state: routes (swapped whole on reload), the upstream client, limits.
pub struct Proxy {
    /// Every route's events, live (served at the admin listener's `/dashboard`).
    pub(crate) dashboard: Arc<crate::dashboard::Dashboard>,
    pub(crate) config: RwLock<Arc<Config>>,
    pub(crate) routes: RwLock<Arc<Vec<Arc<Route>>>>,
    client: Client<HttpConnector, Full<Bytes>>,
    in_flight: Semaphore,
    pub(crate) draining: AtomicBool,
    pub(crate) listener: Arc<dyn EventListener>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

/// Sends every event to each listener in turn.
struct Fanout(Vec<Arc<dyn EventListener>>);

impl EventListener for Fanout {
    fn on_event(
        &self,
        source: &stormwall::telemetry::EventSource<'_>,
        event: &stormwall::telemetry::Event,
    ) {
        for listener in &self.0 {
            listener.on_event(source, event);
        }
    }
}

/// Headers that describe one hop, not the message: never forwarded (RFC 9110 §7.6.1).
/// Names, not strings: a `&str` key is parsed and validated on every lookup.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
/// The client at the other end of a connection, with what each of its requests needs
/// made once.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's IP address, as text (a client key, `X-Forwarded-For`).
    ip: String,
    /// `X-Forwarded-For` for a request that carries none.
    forwarded_for: Option<HeaderValue>,
}

impl Peer {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_string();
        Peer {
            forwarded_for: HeaderValue::from_str(&ip).ok(),
            ip,
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn full(
    status: StatusCode,
    body: impl Into<Bytes>,
    headers: &[(HeaderName, String)],
) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name.clone(), value);
        }
    }
    response
}

fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": message, "status": status.as_u16() }).to_string();
    full(
        status,
        body,
        &[(header::CONTENT_TYPE, "application/json".into())],
    )
}

/// The routes of `config`: unchanged ones taken from `previous` (they keep their breaker's
/// state), the others built; `true` marks those built now.
fn build_routes(
    config: &Config,
    previous: &[Arc<Route>],
    listener: &Arc<dyn EventListener>,
) -> Result<Vec<(Arc<Route>, bool)>, ConfigError> {
    config
        .route
        .iter()
        .map(|r| match previous.iter().find(|p| p.config == *r) {
            Some(same) => Ok((Arc::clone(same), false)),
            None => Route::build(r, Some(Arc::clone(listener))).map(|r| (Arc::new(r), true)),
        })
        .collect()
}

/// Starts what a newly built route runs in the background: its upstream check and its
/// store-and-forward replay.
fn start_route(
    route: Arc<Route>,
    client: &Client<HttpConnector, Full<Bytes>>,
) -> Result<Arc<Route>, ConfigError> {
    route.start_health_check(client.clone());
    if let Some(queue) = crate::defer::start(&route, client.clone())? {
        let _ = route.deferred.set(queue);
    }
    Ok(route)
}

impl Proxy {
    /// A proxy for `config` (already parsed).
    pub fn new(config: Config) -> Result<Arc<Self>, ConfigError> {
        // Before any route registers its metric handles: a handle taken before the recorder
        // exists would count into nothing.
        crate::admin::install_metrics();
        let dashboard = crate::dashboard::Dashboard::new();
        let listener: Arc<dyn EventListener> = Arc::new(Fanout(vec![
            Arc::new(MetricsListener::new()),
            Arc::clone(&dashboard) as Arc<dyn EventListener>,
        ]));
        let routes = build_routes(&config, &[], &listener)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .http1_writev(false)
            .build(connector);
        let routes = routes
            .into_iter()
            .map(|(route, _)| start_route(route, &client))
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(Proxy {
            dashboard,
            in_flight: Semaphore::new(config.server.max_in_flight as usize),
            config: RwLock::new(Arc::new(config)),
            routes: RwLock::new(Arc::new(routes)),
            client,
            draining: AtomicBool::new(false),
            listener,
        }))
    }

    /// Replaces the configuration: every route is built first, so a bad file changes
    /// nothing (the old one keeps serving); unchanged routes keep their breakers.
    pub fn reload(&self, text: &str) -> Result<(), ConfigError> {
        let config = Config::parse(text)?;
        let previous = self.routes();
        let routes = build_routes(&config, &previous, &self.listener)?
            .into_iter()
            .map(|(route, new)| {
                if new {
                    start_route(route, &self.client)
                } else {
                    Ok(route)
                }
            })
            .collect::<Result<_, _>>()?;
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        tracing::info!("stormwall proxy: configuration reloaded");
        Ok(())
    }

    /// Starts draining: readiness goes false at once (so load balancers stop sending);
    /// requests in flight go on. Then wait with [`drained`](Self::drained).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// How long a drain may wait (`server.drain_timeout`).
    pub fn drain_timeout(&self) -> std::time::Duration {
        self.config().server.drain_timeout
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        let max = self.config().server.max_in_flight as usize;
        max.saturating_sub(self.in_flight.available_permits())
    }

    /// Waits until no request is in flight, or `deadline` has passed; true when drained.
    pub async fn drained(&self, deadline: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while self.in_flight() > 0 {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    /// The routes now.
    pub fn routes(&self) -> Arc<Vec<Arc<Route>>> {
        Arc::clone(&self.routes.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Serves the proxy on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let (max_connections, max_header) = {
            let config = self.config();
            (
                config.server.max_connections as usize,
                config.server.max_header_bytes,
            )
        };
        // A connection over the bound waits in the listen backlog: memory stays bounded.
        let connections = Arc::new(Semaphore::new(max_connections));
        loop {
            let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
                return Ok(());
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "stormwall proxy: accept failed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let proxy = Arc::clone(&self);
            let peer = Arc::new(Peer::new(peer));
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |request| {
                    let (proxy, peer) = (Arc::clone(&proxy), Arc::clone(&peer));
                    async move { Ok::<_, std::convert::Infallible>(proxy.handle(request, &peer).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // A head over the limit: hyper answers 431.
                builder.http1().max_buf_size(max_header).writev(false);
                builder
                    .http2()
                    .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX));
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "stormwall proxy: connection ended");
                }
            });
        }
    }

    /// One request, start to finish.
    pub async fn handle(&self, request: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let started = Instant::now();
        let routes = self.routes();
        let route = {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h));
            let path = request.uri().path();
            routes.iter().find(|r| r.matches(host, path))
        };
        let Some(route) = route else {
            return json_error(StatusCode::NOT_FOUND, "no route matches");
        };
        let response = self.forward(route, request, peer).await;
        let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        route.requests[class].increment(1);
        route.duration.record(started.elapsed().as_secs_f64());
        response
    }

    async fn forward(
        &self,
        route: &Route,
        request: Request<Incoming>,
        peer: &Peer,
    ) -> Response<ProxyBody> {
        let Ok(_slot) = self.in_flight.try_acquire() else {
            return full(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                &[(header::RETRY_AFTER, "1".into())],
            );
        };
        let (mut parts, body) = request.into_parts();
        // Most requests (GET, HEAD, DELETE) have no body: nothing to collect.
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            let max_body = self.config().server.max_body_bytes;
            match Limited::new(body, max_body).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    return json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                }
                Err(_) => return json_error(StatusCode::BAD_REQUEST, "malformed request body"),
            }
        };
        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers);
        forwarded(&mut headers, peer);
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        // The upstream's URI from parts: no formatting, no re-parsing.
        let mut target = http::uri::Parts::default();
        target.scheme = Some(http::uri::Scheme::HTTP);
        target.authority = Some(route.upstream.clone());
        target.path_and_query = Some(path_and_query.clone());
        let uri = match http::Uri::from_parts(target) {
            Ok(uri) => uri,
            Err(_) => return json_error(StatusCode::BAD_REQUEST, "malformed request target"),
        };
        let key = match route.config.client_key.as_deref() {
            None => None,
            Some("ip") => Some(peer.ip.clone()),
            Some(name) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let ctx = match key {
            Some(key) => Context::new().with_key(key),
            None => Context::new(),
        };
        let retry = stormwall_http::may_retry(&parts.method, &headers, false);
        let pipeline = if retry {
            &route.retrying
        } else {
            &route.single
        };
        let (method, client) = (&parts.method, &self.client);
        let (uri, headers, body) = (&uri, &headers, &body);
        let outcome = pipeline
            .execute_with(ctx, |_| {
                let mut attempt = Request::new(Full::new(body.clone()));
                *attempt.method_mut() = method.clone();
                *attempt.uri_mut() = uri.clone();
                *attempt.headers_mut() = headers.clone();
                client.request(attempt)
            })
            .await;
        let failed = match &outcome {
            Ok(response) => stormwall_http::is_transient(stormwall_http::AttemptOutcome::Status(
                response.status(),
            )),
            Err(_) => true,
        };
        if failed {
            if let Some(response) = self
                .defer(route, &parts.method, path_and_query.as_str(), headers, body)
                .await
            {
                return response;
            }
        }
        match outcome {
            // A transient failure that outlasted the retries is replaced by the fallback too.
            Ok(response)
                if route.config.fallback.is_some()
                    && stormwall_http::is_transient(stormwall_http::AttemptOutcome::Status(
                        response.status(),
                    )) =>
            {
                let status = response.status().as_u16();
                self.fallback(route, &format!("upstream_status_{status}"))
                    .unwrap_or_else(|| json_error(StatusCode::BAD_GATEWAY, "upstream failed"))
            }
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => self.give_up(route, &e),
        }
    }

    /// Keeps the request for later when the route defers and it carries an
    /// `Idempotency-Key`: 202 (or the configured status) with the job id.
    async fn defer(
        &self,
        route: &Route,
        method: &http::Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<Response<ProxyBody>> {
        let queue = route.deferred.get()?;
        let key = headers
            .get(stormwall_http::IDEMPOTENCY_KEY)?
            .to_str()
            .ok()?;
        let payload = crate::defer::encode(method, path_and_query, headers, body);
        match queue.enqueue(route.name(), payload, Some(key)).await {
            Ok(enqueued) => {
                let status = route
                    .config
                    .defer
                    .as_ref()
                    .and_then(|d| StatusCode::from_u16(d.status).ok())
                    .unwrap_or(StatusCode::ACCEPTED);
                let body = serde_json::json!({
                    "status": "accepted", "job": enqueued.id, "duplicate": enqueued.duplicate,
                })
                .to_string();
                Some(full(
                    status,
                    body,
                    &[(header::CONTENT_TYPE, "application/json".into())],
                ))
            }
            Err(e) => {
                tracing::warn!(route = route.name(), error = %e, "stormwall proxy: could not defer the request");
                None
            }
        }
    }

    /// The route's fallback answer, saying why in `x-stormwall-fallback`.
    fn fallback(&self, route: &Route, why: &str) -> Option<Response<ProxyBody>> {
        let fallback = route.config.fallback.as_ref()?;
        let status =
            StatusCode::from_u16(fallback.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        Some(full(
            status,
            fallback.body.clone(),
            &[
                (header::CONTENT_TYPE, fallback.content_type.clone()),
                (
                    HeaderName::from_static("x-stormwall-fallback"),
                    why.to_owned(),
                ),
            ],
        ))
    }

    fn give_up<E: std::fmt::Display>(
        &self,
        route: &Route,
        error: &Error<E>,
    ) -> Response<ProxyBody> {
        if let Some(response) = self.fallback(route, error.kind()) {
            return response;
        }
        let retry_after = error
            .retry_after()
            .map(|d| vec![(header::RETRY_AFTER, d.as_secs().max(1).to_string())])
            .unwrap_or_default();
        let (status, message) = match error {
            Error::CircuitOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "circuit open"),
            Error::BulkheadFull => (StatusCode::SERVICE_UNAVAILABLE, "bulkhead full"),
            Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate limited"),
            Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
            _ => (StatusCode::BAD_GATEWAY, "upstream unavailable"),
        };
        let body = serde_json::json!({ "error": message, "route": route.name() }).to_string();
        let mut headers = retry_after;
        headers.push((header::CONTENT_TYPE, "application/json".into()));
        full(status, body, &headers)
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none, or only `Connection: keep-alive`: one pass over the names
    // finds those present, and only they are removed (no hashing for the absent ones).
    let mut present = [false; 8];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // Headers named in `Connection` are hop-by-hop too (`close` and `keep-alive`, the
    // usual tokens, need no removal of their own beyond the list).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

fn forwarded(headers: &mut HeaderMap, peer: &Peer) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(before) => HeaderValue::from_str(&format!("{before}, {}", peer.ip)).ok(),
        // The common case: the peer's own value, made once per connection.
        None => peer.forwarded_for.clone(),
    };
    if let Some(value) = value {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}
