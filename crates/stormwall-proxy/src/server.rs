//! The reverse proxy: routes a request, runs it through its route's pipeline to the
//! upstream, answers the fallback (or a status that says why) when the pipeline gives up.

use crate::body::{BodyFailure, BodyLimits, ClientBody, Prepared, UpstreamBody};
use crate::config::{Config, ServerConfig};
use crate::connection::{Connections, Ended, Slot, Timeouts, Tracked, Watched};
use crate::route::{ClientKey, Route};
use crate::upstream::{Attempt, UpstreamClient};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;
use stormwall::telemetry::{EventListener, MetricsListener};
use stormwall::{ConfigError, Context, Error};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The body of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The proxy's live state: routes (swapped whole on reload), the upstream client, limits.
pub struct Proxy {
    /// Every route's events, live (served at the admin listener's `/dashboard`).
    pub(crate) dashboard: Arc<crate::dashboard::Dashboard>,
    pub(crate) config: RwLock<Arc<Config>>,
    pub(crate) routes: RwLock<Arc<Vec<Arc<Route>>>>,
    client: UpstreamClient,
    /// `server.upstream_connect_timeout` in ms, read by the client at every connect.
    connect_timeout: Arc<AtomicU64>,
    /// Requests in flight now (bounded by `server.max_in_flight`).
    in_flight: AtomicUsize,
    /// Client connections, bounded by `server.max_connections`.
    connections: Arc<Connections>,
    /// The listener serving now (set by [`serve`](Self::serve)); a reload that changes
    /// `listen` puts the new one in `rebound` and wakes the accept loop.
    listening: Mutex<Option<Arc<TcpListener>>>,
    rebound: Mutex<Option<Arc<TcpListener>>>,
    rebind: Notify,
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

/// Headers that carry credentials: a request with one is never stored for `defer`.
const CREDENTIALS: [HeaderName; 2] = [header::AUTHORIZATION, header::COOKIE];

/// The header count hyper's HTTP/1 server accepts when not told another.
const HYPER_MAX_HEADERS: usize = 100;

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

/// The answer to a request whose body failed: 413, 408 or 400, closing the connection
/// (the rest of the body is not read).
fn body_failed(why: BodyFailure) -> Response<ProxyBody> {
    let status = match why {
        BodyFailure::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        BodyFailure::TooSlow => StatusCode::REQUEST_TIMEOUT,
        BodyFailure::Malformed => StatusCode::BAD_REQUEST,
    };
    let mut response = json_error(status, &why.to_string());
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The routes of `config`: unchanged ones taken from `previous`, the others built, each
/// keeping the strategies of the previous route of its name whose options did not change
/// (an open breaker stays open when only the retry changed); `true` marks those built now.
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
            None => {
                let before = previous.iter().find(|p| p.name() == r.name);
                let (route, changes) =
                    Route::rebuild(r, Some(Arc::clone(listener)), before.map(|p| &**p))?;
                if before.is_some() {
                    tracing::info!(route = %r.name, kept = ?changes.kept(), rebuilt = ?changes.rebuilt(), "stormwall proxy: route changed");
                }
                Ok((Arc::new(route), true))
            }
        })
        .collect()
}

/// Starts what a newly built route runs in the background: its upstream check and its
/// store-and-forward replay.
fn start_route(route: Arc<Route>, client: &UpstreamClient) -> Result<Arc<Route>, ConfigError> {
    route.start_health_check(client.clone());
    if let Some(queue) = crate::defer::start(&route, client.clone())? {
        let _ = route.deferred.set(queue);
    }
    Ok(route)
}

/// A listener on `server.listen` with `server.backlog` (the kernel caps it at
/// `net.core.somaxconn`).
pub fn bind(server: &ServerConfig) -> Result<TcpListener, ConfigError> {
    let addr = server.listen_addr()?;
    let bound = (|| {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(server.backlog)
    })();
    bound.map_err(|e| {
        ConfigError::new(
            "server.listen",
            &server.listen,
            format!("an address this process can listen on ({e})"),
        )
    })
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Holds one of `server.max_in_flight` until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proxy {
    /// A proxy for `config` (already parsed).
    pub fn new(config: Config) -> Result<Arc<Self>, ConfigError> {
        // Before any route registers its metric handles: a handle taken before the recorder
        // exists would count into nothing.
        crate::prometheus::install();
        let dashboard = crate::dashboard::Dashboard::new();
        let listener: Arc<dyn EventListener> = Arc::new(Fanout(vec![
            Arc::new(MetricsListener::new()),
            Arc::clone(&dashboard) as Arc<dyn EventListener>,
        ]));
        let routes = build_routes(&config, &[], &listener)?;
        let connect_timeout = Arc::new(AtomicU64::new(millis(
            config.server.upstream_connect_timeout,
        )));
        let client = crate::upstream::client(Arc::clone(&connect_timeout));
        let routes = routes
            .into_iter()
            .map(|(route, _)| start_route(route, &client))
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(Proxy {
            dashboard,
            connections: Connections::new(config.server.max_connections as usize),
            in_flight: AtomicUsize::new(0),
            config: RwLock::new(Arc::new(config)),
            routes: RwLock::new(Arc::new(routes)),
            client,
            connect_timeout,
            listening: Mutex::new(None),
            rebound: Mutex::new(None),
            rebind: Notify::new(),
            draining: AtomicBool::new(false),
            listener,
        }))
    }

    /// Replaces the configuration (`text` with the environment's `STORMWALL__…` overrides,
    /// see [`Config::parse_with_env`]): everything is built first, so a bad file changes
    /// nothing (the old one keeps serving); unchanged routes are kept whole, and a changed
    /// route keeps each strategy whose options did not change, state included. Every
    /// `server.*` key is applied (see [`ServerConfig`]: `listen` rebinds, `backlog`
    /// re-listens, limits and timeouts change) except `admin`, whose change refuses the
    /// reload.
    pub fn reload(&self, text: &str) -> Result<(), ConfigError> {
        // With the environment's overrides, as at start (`stormwall proxy` reads the file
        // with them): a reload must not drop them.
        let config = Config::parse_with_env(text)?;
        let old = self.config();
        if config.server.admin != old.server.admin {
            return Err(ConfigError::new(
                "server.admin",
                &config.server.admin,
                format!(
                    "unchanged ({}): the admin listener cannot move on reload, restart the proxy to move it",
                    old.server.admin
                ),
            ));
        }
        let previous = self.routes();
        let routes = build_routes(&config, &previous, &self.listener)?;
        let rebound = if config.server.listen != old.server.listen {
            Some(Arc::new(bind(&config.server)?))
        } else {
            if config.server.backlog != old.server.backlog {
                self.relisten(config.server.backlog)?;
            }
            None
        };
        let routes = routes
            .into_iter()
            .map(|(route, new)| {
                if new {
                    start_route(route, &self.client)
                } else {
                    Ok(route)
                }
            })
            .collect::<Result<_, _>>()?;
        let server = &config.server;
        self.connections.set_limit(server.max_connections as usize);
        self.connect_timeout
            .store(millis(server.upstream_connect_timeout), Ordering::Relaxed);
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        if let Some(listener) = rebound {
            tracing::info!(listen = ?listener.local_addr().ok(), "stormwall proxy: listening on the new address");
            *self.rebound.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener);
            self.rebind.notify_one();
        }
        tracing::info!("stormwall proxy: configuration reloaded");
        Ok(())
    }

    /// Calls `listen(2)` again on the listener serving now, with a new backlog.
    fn relisten(&self, backlog: u32) -> Result<(), ConfigError> {
        let listening = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        let Some(listener) = listening.as_ref() else {
            return Ok(());
        };
        let backlog_int = i32::try_from(backlog).unwrap_or(i32::MAX);
        socket2::SockRef::from(listener.as_ref())
            .listen(backlog_int)
            .map_err(|e| {
                ConfigError::new(
                    "server.backlog",
                    backlog,
                    format!("a backlog the listener accepts ({e})"),
                )
            })
    }

    /// The address the proxy listens on now (`None` before [`serve`](Self::serve)).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Starts draining: readiness goes false at once (so load balancers stop sending);
    /// requests in flight go on. Then wait with [`drained`](Self::drained).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// How long a drain may wait (`server.drain_timeout`).
    pub fn drain_timeout(&self) -> std::time::Duration {
        self.config().server.drain_timeout
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.connections.open()
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

    /// The `[server]` settings running now.
    pub fn server_config(&self) -> ServerConfig {
        self.config().server.clone()
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Serves the proxy on `listener` (and on the listeners reloads bind) until the task
    /// is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let mut listener = Arc::new(listener);
        *self.listening.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&listener));
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = self.rebind.notified() => {
                    let next = self.rebound.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(next) = next {
                        // The old listener closes here: clients not yet accepted on it
                        // are refused, connections already open go on.
                        *self.listening.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Arc::clone(&next));
                        listener = next;
                    }
                    continue;
                }
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(error = %e, "stormwall proxy: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            // At max_connections the connection idle the longest is closed for this one;
            // when none is idle, this one waits and the next wait in the listen backlog.
            let slot = self.connections.slot().await;
            let _ = stream.set_nodelay(true);
            self.spawn_connection(stream, peer, slot);
        }
    }

    fn spawn_connection(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        slot: Slot,
    ) {
        let config = self.config();
        let server = &config.server;
        let timeouts = Timeouts {
            header_read: server.header_read_timeout,
            idle: server.idle_timeout,
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // A head over the limits: hyper answers 431. Its header timer stays off (it
        // would also cut keep-alive connections): `connection::watch` keeps the time.
        let mut http1 = builder.http1();
        http1
            .max_buf_size(server.max_header_bytes)
            .header_read_timeout(None)
            .writev(false);
        // hyper's own limit is 100 headers, kept in place on the stack; given a limit,
        // even 100, it fills a vector of that many slots for every request head (~1.7k
        // instructions a request): it is set only when it differs.
        if server.max_headers != HYPER_MAX_HEADERS {
            http1.max_headers(server.max_headers);
        }
        builder
            .http2()
            .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
        let proxy = Arc::clone(self);
        tokio::spawn(async move {
            let connection = Arc::clone(&slot.connection);
            let io = TokioIo::new(Watched::new(stream, Arc::clone(&connection)));
            let peer = Arc::new(Peer::new(peer));
            let serving = Arc::clone(&connection);
            let service = hyper::service::service_fn(move |request| {
                let serving = serving.serving();
                let (proxy, peer) = (Arc::clone(&proxy), Arc::clone(&peer));
                async move {
                    let response = proxy.handle(request, &peer).await;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|body| Tracked::new(body, serving)),
                    )
                }
            });
            let conn = builder.serve_connection(io, service);
            let ended = crate::connection::watch(conn, &connection, timeouts).await;
            if ended != Ended::Closed {
                tracing::debug!(?ended, "stormwall proxy: connection closed");
            }
            drop(slot);
        });
    }

    /// One request, start to finish.
    pub async fn handle(&self, request: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let started = Instant::now();
        let routes = self.routes();
        let (mut parts, body) = request.into_parts();
        // Routing sees the path without dot segments, and so does the upstream.
        if let Some(normal) = crate::path::normalise(&parts.uri) {
            match normal {
                Ok(uri) => parts.uri = uri,
                Err(why) => return json_error(StatusCode::BAD_REQUEST, why),
            }
        }
        let route = {
            // HTTP/2 carries the host in `:authority` (the URI), HTTP/1.1 in `Host`; read
            // only when a route matches on the host.
            let host = || {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                    .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host))
            };
            routes.iter().find(|r| r.matches(host, parts.uri.path()))
        };
        let Some(route) = route else {
            return json_error(StatusCode::NOT_FOUND, "no route matches");
        };
        let response = self.forward(route, parts, body, peer).await;
        let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        route.requests[class].increment(1);
        route.duration.record(started.elapsed().as_secs_f64());
        response
    }

    /// Sends the request through the route's pipeline and answers what came of it.
    async fn forward(
        &self,
        route: &Route,
        parts: http::request::Parts,
        body: Incoming,
        peer: &Peer,
    ) -> Response<ProxyBody> {
        let config = self.config();
        let server = &config.server;
        let Some(_slot) = self.admit(server.max_in_flight as usize) else {
            return full(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                &[(header::RETRY_AFTER, "1".into())],
            );
        };
        let Ok(request) = UpstreamRequest::new(route, parts, peer) else {
            return json_error(StatusCode::BAD_REQUEST, "malformed request target");
        };
        // Most requests (GET, HEAD, DELETE) have no body: nothing to check or keep.
        let (body, failure) = if body.is_end_stream() {
            (Prepared::Replayable(Bytes::new()), None)
        } else {
            let body = ClientBody::new(
                body,
                BodyLimits {
                    max_bytes: server.max_body_bytes as u64,
                    timeout: server.body_timeout,
                    min_rate: server.body_min_rate,
                },
            );
            let failure = body.failure();
            match crate::body::prepare(body, server.retry_buffer_bytes, request.retry).await {
                Ok(body) => (body, Some(failure)),
                Err(why) => return body_failed(why),
            }
        };
        let (outcome, replay) = self.send(route, &request, body, failure.as_deref()).await;
        // Classified once, here: a success or a client error passes through (most requests:
        // the outcome moved no further, no failure future made); the rest is a failure.
        match outcome {
            Ok(Attempt::Upstream(response)) if !transient(&response) => pass(response),
            outcome => self.answer_failure(route, &request, outcome, replay).await,
        }
    }

    /// One of `max_in_flight`, if any is free.
    fn admit(&self, max: usize) -> Option<InFlight<'_>> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(&self.in_flight))
    }

    /// Runs the attempts: a replayable body goes to every attempt (retries allowed, and
    /// hedges for idempotent methods), a body sent once to the first only (no retry). Gives back the replayable body (for
    /// `defer`).
    async fn send(
        &self,
        route: &Route,
        request: &UpstreamRequest,
        body: Prepared,
        failure: Option<&OnceLock<BodyFailure>>,
    ) -> (Outcome, Option<Bytes>) {
        let (replay, once) = match body {
            Prepared::Replayable(bytes) => (Some(bytes), None),
            Prepared::Once(body) => (None, Some(body)),
        };
        let pipeline = match (&replay, &route.hedged) {
            (Some(_), Some(hedged)) if request.method.is_idempotent() => hedged,
            (Some(_), _) if request.retry => &route.retrying,
            _ => &route.single,
        };
        // Taken by the first attempt.
        let once = Mutex::new(once);
        let (client, replay_ref) = (&self.client, &replay);
        let outcome = pipeline
            .execute_with(request.context(), |_| {
                let body = match replay_ref {
                    Some(bytes) => Some(UpstreamBody::full(bytes.clone())),
                    None => once.lock().unwrap_or_else(|e| e.into_inner()).take(),
                };
                let attempt = body.map(|body| client.request(request.build(body)));
                async move {
                    let Some(attempt) = attempt else {
                        // A second attempt at a body sent once is not made (the single
                        // pipeline has no retry, so this does not happen).
                        return Ok(Attempt::ClientBody(BodyFailure::Malformed));
                    };
                    match attempt.await {
                        Ok(response) => Ok(Attempt::Upstream(response)),
                        // The client's body failed on the way: the client's doing.
                        Err(e) => match failure.and_then(OnceLock::get) {
                            Some(why) => Ok(Attempt::ClientBody(*why)),
                            None => Err(e),
                        },
                    }
                }
            })
            .await;
        (outcome, replay)
    }

    /// Answers attempts that did not succeed (`forward` passes successes and client errors
    /// through): the client's body failing is the client's; an upstream failure is deferred
    /// (when the route defers and the body was kept), else answered by the fallback, else
    /// by a status that says why.
    async fn answer_failure(
        &self,
        route: &Route,
        request: &UpstreamRequest,
        outcome: Outcome,
        replay: Option<Bytes>,
    ) -> Response<ProxyBody> {
        if let Ok(Attempt::ClientBody(why)) = outcome {
            return body_failed(why);
        }
        if let Some(body) = &replay {
            if let Some(response) = self.defer(route, request, body).await {
                return response;
            }
        }
        match outcome {
            Ok(Attempt::Upstream(response)) => {
                // A transient failure that outlasted the retries: the fallback, if any.
                let why = format!("upstream_status_{}", response.status().as_u16());
                match route.fallback_response(&why) {
                    Some(fallback) => fallback,
                    None => pass(response),
                }
            }
            Ok(Attempt::ClientBody(why)) => body_failed(why),
            Err(e) => self.give_up(route, &e),
        }
    }

    /// Keeps the request for later when the route defers and it carries an
    /// `Idempotency-Key`: 202 (or the configured status) with the job id. A request that
    /// carries credentials (`Authorization`, `Cookie`) is not kept — they would sit in the
    /// database in plain text — and is answered 503 saying so.
    async fn defer(
        &self,
        route: &Route,
        request: &UpstreamRequest,
        body: &Bytes,
    ) -> Option<Response<ProxyBody>> {
        let queue = route.deferred.get()?;
        let key = request
            .headers
            .get(stormwall_http::IDEMPOTENCY_KEY)?
            .to_str()
            .ok()?;
        if let Some(credential) = CREDENTIALS
            .iter()
            .find(|name| request.headers.contains_key(*name))
        {
            tracing::warn!(
                route = route.name(),
                header = credential.as_str(),
                "stormwall proxy: not deferred: the request carries credentials, which are never stored"
            );
            return Some(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream unavailable and the request not deferred: it carries {credential}, and credentials are never stored"),
            ));
        }
        let payload = crate::defer::encode(
            &request.method,
            request.path_and_query.as_str(),
            &request.headers,
            body,
        );
        match queue.enqueue(route.name(), payload, Some(key)).await {
            Ok(enqueued) => {
                let body = serde_json::json!({
                    "status": "accepted", "job": enqueued.id, "duplicate": enqueued.duplicate,
                })
                .to_string();
                Some(full(
                    route.defer_status,
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

    fn give_up<E: std::fmt::Display>(
        &self,
        route: &Route,
        error: &Error<E>,
    ) -> Response<ProxyBody> {
        if let Some(response) = route.fallback_response(error.kind()) {
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

/// What the attempts came to.
type Outcome = Result<Attempt, Error<hyper_util::client::legacy::Error>>;

/// Whether the upstream's answer is a failure worth a fallback or a deferral (5xx, 429…).
fn transient(response: &Response<Incoming>) -> bool {
    stormwall_http::is_transient(stormwall_http::AttemptOutcome::Status(response.status()))
}

/// The upstream's response, on its way to the client (streamed).
fn pass(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
}

/// What every attempt of one request sends, made once.
struct UpstreamRequest {
    method: http::Method,
    /// The client's path and query (normalised).
    path_and_query: http::uri::PathAndQuery,
    uri: http::Uri,
    /// The client's headers less hop-by-hop ones, plus `X-Forwarded-*`.
    headers: HeaderMap,
    /// The client key for per-client limits.
    key: Option<String>,
    /// Whether the request may be retried (idempotent, or with an `Idempotency-Key`).
    retry: bool,
}

impl UpstreamRequest {
    fn new(
        route: &Route,
        mut parts: http::request::Parts,
        peer: &Peer,
    ) -> Result<Self, http::Error> {
        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers);
        forwarded(&mut headers, peer);
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let uri = route.upstream_uri(&path_and_query)?;
        let key = match &route.client_key {
            ClientKey::None => None,
            ClientKey::Ip => Some(peer.ip.clone()),
            ClientKey::Header(name) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let retry = stormwall_http::may_retry(&parts.method, &headers, false);
        Ok(UpstreamRequest {
            method: parts.method,
            path_and_query,
            uri,
            headers,
            key,
            retry,
        })
    }

    fn context(&self) -> Context {
        match &self.key {
            Some(key) => Context::new().with_key(key.clone()),
            None => Context::new(),
        }
    }

    /// One attempt's request.
    fn build(&self, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut attempt = Request::new(body);
        *attempt.method_mut() = self.method.clone();
        *attempt.uri_mut() = self.uri.clone();
        *attempt.headers_mut() = self.headers.clone();
        attempt
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
    // usual tokens, need no removal of their own beyond the list). A value that is one of
    // those two alone (nginx answers `Connection: keep-alive`) names nothing: not split.
    let mut named: Vec<HeaderName> = Vec::new();
    if present[0] {
        for value in headers.get_all(header::CONNECTION) {
            let bytes = value.as_bytes();
            if bytes.eq_ignore_ascii_case(b"keep-alive") || bytes.eq_ignore_ascii_case(b"close") {
                continue;
            }
            let Ok(value) = value.to_str() else {
                continue;
            };
            named.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|token| {
                        !token.eq_ignore_ascii_case("close")
                            && !HOP_BY_HOP
                                .iter()
                                .any(|h| token.eq_ignore_ascii_case(h.as_str()))
                    })
                    .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok()),
            );
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

fn forwarded(headers: &mut HeaderMap, peer: &Peer) {
    // One lookup of `X-Forwarded-For` (an entry), not a `get` then an `insert`.
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Occupied(mut present) => {
            let value = match present.get().to_str() {
                Ok(before) => HeaderValue::from_str(&format!("{before}, {}", peer.ip)).ok(),
                Err(_) => peer.forwarded_for.clone(),
            };
            if let Some(value) = value {
                present.insert(value);
            }
        }
        // The common case: the peer's own value, made once per connection.
        header::Entry::Vacant(absent) => {
            if let Some(value) = peer.forwarded_for.clone() {
                absent.insert(value);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}
