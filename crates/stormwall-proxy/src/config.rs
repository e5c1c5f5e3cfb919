//! The sidecar's configuration (TOML), checked before anything uses it: unknown keys, wrong
//! types, bad durations, invalid strategy options and overlapping routes are errors that
//! name the key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::time::Duration;
use stormwall::bulkhead::BulkheadOptions;
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::hedging::HedgingOptions;
use stormwall::rate_limit::RateLimitOptions;
use stormwall::registry::{deserialize_with_extra, ExtraKeys, PipelineSpec, StrategySpec};
use stormwall::retry::RetryOptions;
use stormwall::timeout::TimeoutOptions;
use stormwall::ConfigError;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the proxy and its admin API listen.
    pub server: ServerConfig,
    /// Named pipelines (`[pipelines.payment]`, `strategies = [...]` in order), the core's
    /// [`PipelineSpec`]: a route takes its strategies from one with `pipeline = "payment"`.
    /// The same tables configure `stormwall::registry::PipelineRegistry` and the HTTP
    /// handler.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineSpec>,
    /// The routes, tried in order: the first whose match fits serves the request.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
}

/// `[server]`. Every key can change on reload: those marked "new connections" apply to
/// connections accepted after it, the others at once; `listen` and `backlog` rebind.
/// `admin` cannot change on reload (the reload is refused naming it).
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The proxy's address, `ip:port` (port 0: any free port). Example: `127.0.0.1:8080`.
    pub listen: String,
    /// The admin API's address (metrics, health, admin, dashboard), `ip:port`, not the
    /// same as `listen`. Default loopback: `127.0.0.1:9901`.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// When set, `/admin/*` needs `Authorization: Bearer <token>`. Also from the
    /// `STORMWALL_ADMIN_TOKEN` environment variable.
    #[serde(default, skip_serializing)]
    pub admin_token: Option<String>,
    /// Largest request body accepted: 413 as soon as it is exceeded (at once when
    /// `Content-Length` says so, else when the streamed body passes it). Default 10 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// The part of a request body kept so that a retry can send it again (Envoy's
    /// per-request buffer limit). A body that fits is retried like any request; a larger
    /// one streams to the upstream once, without retry, and is never stored for `defer`.
    /// Default 64 KiB; 0 never retries a request with a body.
    #[serde(default = "default_retry_buffer")]
    pub retry_buffer_bytes: usize,
    /// Requests in flight across all routes (503 with Retry-After beyond). Default 10,000;
    /// at least 1.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Largest request head (request line and headers) accepted: 431 beyond. At least
    /// 8192. Default 64 KiB. New connections.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
    /// Most header fields in a request head (HTTP/1.1): 431 beyond. Default 100; at least
    /// 1. New connections.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Client connections open at once. At the bound, a new client makes the connection
    /// idle the longest (a keep-alive connection between requests, or one whose request
    /// head has not arrived) close; when none is idle, it waits in the listen backlog.
    /// Default 10,000; at least 1.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections the kernel queues for the proxy to accept (`listen(2)`'s backlog,
    /// capped by `net.core.somaxconn`). Default 4096; at least 1.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// From the first byte of a request head to its end: a slower client is disconnected
    /// (slowloris). Default 10 s; at least 1 ms. New connections.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection may wait for its next request (keep-alive) before it is
    /// closed. Default 60 s; at least 1 ms. New connections.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest wait for the next part of a request body; after this long in all, the body
    /// must also have arrived at `body_min_rate` on average (time spent waiting for the
    /// client, not for the upstream). A client too slow gets 408. Default 30 s; at least
    /// 1 ms.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// The slowest average rate a request body may arrive at, in bytes per second, once
    /// `body_timeout` has been spent waiting for it (Kestrel's `MinRequestBodyDataRate`).
    /// Default 240; 0 turns the rate rule off.
    #[serde(default = "default_body_min_rate")]
    pub body_min_rate: u64,
    /// How long connecting to an upstream may take (then the attempt fails as a connection
    /// error). Default 5 s; at least 1 ms.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// On SIGTERM, how long requests in flight may take to finish. Default 10 s.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

fn default_drain() -> Duration {
    Duration::from_secs(10)
}

fn default_admin() -> String {
    "127.0.0.1:9901".into()
}
fn default_max_body() -> usize {
    10 * 1024 * 1024
}
fn default_retry_buffer() -> usize {
    64 * 1024
}
fn default_max_in_flight() -> u32 {
    10_000
}
fn default_max_header() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_backlog() -> u32 {
    4096
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_body_min_rate() -> u64 {
    240
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl ServerConfig {
    /// `listen`, parsed (checked by [`Config::parse`]).
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        socket_addr("server.listen", &self.listen)
    }

    /// `admin`, parsed (checked by [`Config::parse`]).
    pub fn admin_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        socket_addr("server.admin", &self.admin)
    }
}

fn socket_addr(key: &str, text: &str) -> Result<std::net::SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::new(key, text, "an ip:port address with a port of 0-65535"))
}

/// `[[route]]`. Its strategies come from `pipeline = "<name>"` (in the pipeline's order) or
/// from its own strategy keys, the core's options types (every key of
/// docs/configuration.md), applied outer to inner in a fixed order: per-client rate limit →
/// bulkhead → total timeout → hedging → retry → breaker → attempt timeout. With both, a
/// route key replaces the pipeline's strategy of its kind in place.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique; names the route in metrics, health and the admin API.
    pub name: String,
    /// Which requests it serves.
    #[serde(rename = "match", default)]
    pub matches: MatchConfig,
    /// Where it sends them: `http://host:port`.
    pub upstream: String,
    /// Readiness fails while this route's breaker is open.
    #[serde(default)]
    pub critical: bool,
    /// The client key for per-client rate limits: a header name (`X-Tenant-Id`) or `ip`.
    #[serde(default)]
    pub client_key: Option<String>,
    /// Takes the strategies of `[pipelines.<name>]`; a strategy key set on the route too
    /// replaces that strategy. Default: none.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Total and attempt timeouts: `{ total = "30s", attempt = "10s" }`. Default: none.
    #[serde(default)]
    pub timeout: Option<RouteTimeouts>,
    /// Retries of transient failures (5xx, 408, 429, connection errors, timeouts),
    /// honouring `Retry-After` up to 60 s. Default: none.
    #[serde(default)]
    pub retry: Option<RetryOptions>,
    /// The route's circuit breaker. Default: none.
    #[serde(default)]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Concurrency limit with a bounded queue. Default: none.
    #[serde(default)]
    pub bulkhead: Option<BulkheadOptions>,
    /// Rate limit (per client key when `client_key` is set). Default: none.
    #[serde(default)]
    pub rate_limit: Option<RateLimitOptions>,
    /// The answer when the pipeline gives up. Default: a status that says why.
    pub fallback: Option<FallbackConfig>,
    /// An active check of the upstream, reported in readiness. Default: none.
    pub health_check: Option<HealthCheckConfig>,
    /// Hedging: `{ delay = "100ms", max_hedged_attempts = 1 }`: for a GET, HEAD, OPTIONS,
    /// PUT, DELETE or TRACE whose body fits `server.retry_buffer_bytes`, a further attempt
    /// starts when none has answered within `delay` (or at once when one fails); the first
    /// acceptable answer wins and the others are cancelled. Each attempt goes through the
    /// route's retry, breaker and attempt timeout. Counted in
    /// `stormwall_strategy_events_total{strategy="hedging",event="hedge_started"}`.
    /// Default: none.
    #[serde(default)]
    pub hedging: Option<HedgingOptions>,
    /// Store-and-forward: a request with an `Idempotency-Key` that cannot reach the upstream
    /// now is kept durably and answered 202; a worker replays it when the upstream is back.
    pub defer: Option<DeferConfig>,
    /// The route's strategies in order, outermost first: from its pipeline and its own keys
    /// ([`Config::parse`] fills it).
    #[serde(skip)]
    pub strategies: Vec<RouteStrategy>,
}

/// `timeout = { total = "30s", attempt = "10s" }` on a route: two timeout strategies, by
/// their place in the route's fixed order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteTimeouts {
    /// Bounds the whole request, retries and hedges included. Default: none. Valid: > 0 and
    /// ≤ 1 day.
    pub total: Option<TimeoutOptions>,
    /// Bounds each attempt. Default: none. Valid: > 0 and ≤ 1 day.
    pub attempt: Option<TimeoutOptions>,
}

/// One strategy of a route: the core's spec, and for a breaker where it keeps its state.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStrategy {
    /// The strategy and its options.
    pub spec: StrategySpec,
    /// A breaker's `redis` (see [`BreakerConfig::redis`]).
    pub redis: Option<String>,
    /// The key path of its table, for errors (`route[pay].retry`,
    /// `route[pay].timeout.total`, `pipelines.payment.strategies[2].retry`).
    pub key: String,
}

impl RouteConfig {
    /// The route's own strategy keys, in the fixed order.
    fn own_strategies(&self) -> Vec<RouteStrategy> {
        let at = |key: &str| format!("route[{}].{key}", self.name);
        let timeouts = self.timeout.unwrap_or_default();
        let plain = |spec: Option<StrategySpec>, key: &str| {
            spec.map(|spec| RouteStrategy {
                spec,
                redis: None,
                key: at(key),
            })
        };
        [
            plain(self.rate_limit.map(StrategySpec::RateLimit), "rate_limit"),
            plain(self.bulkhead.map(StrategySpec::Bulkhead), "bulkhead"),
            plain(timeouts.total.map(StrategySpec::Timeout), "timeout.total"),
            plain(self.hedging.clone().map(StrategySpec::Hedging), "hedging"),
            plain(self.retry.clone().map(StrategySpec::Retry), "retry"),
            self.circuit_breaker.as_ref().map(|b| RouteStrategy {
                spec: StrategySpec::CircuitBreaker(b.options.clone()),
                redis: b.redis.clone(),
                key: at("circuit_breaker"),
            }),
            plain(
                timeouts.attempt.map(StrategySpec::Timeout),
                "timeout.attempt",
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The strategies of `pipeline` (named `name`), each of the route's own keys replacing
    /// the pipeline's strategy of its kind in place (`timeout.total` the first timeout,
    /// `timeout.attempt` the last); a key whose kind the pipeline lacks is refused.
    fn resolve(&mut self, name: &str, pipeline: &PipelineSpec) -> Result<(), ConfigError> {
        let mut strategies: Vec<RouteStrategy> = pipeline
            .strategies
            .iter()
            .enumerate()
            .map(|(i, spec)| RouteStrategy {
                spec: spec.clone(),
                redis: None,
                key: format!("pipelines.{name}.strategies[{i}].{}", spec.kind().name()),
            })
            .collect();
        for own in self.own_strategies() {
            let kind = own.spec.kind();
            let mut of_kind = strategies
                .iter()
                .enumerate()
                .filter(|(_, s)| s.spec.kind() == kind)
                .map(|(i, _)| i);
            let at = if own.key.ends_with("timeout.attempt") {
                of_kind.next_back()
            } else {
                of_kind.next()
            };
            let Some(at) = at else {
                return Err(ConfigError::new(
                    own.key,
                    kind.name(),
                    format!(
                        "a strategy [pipelines.{name}] has, to replace (it has no {}): add it \
                         there, or drop `pipeline` and give the route its own keys",
                        kind.name()
                    ),
                ));
            };
            strategies[at] = own;
        }
        self.strategies = strategies;
        Ok(())
    }
}

/// The sidecar's own keys of a route's `circuit_breaker` table.
#[derive(Default)]
struct BreakerKeys {
    redis: Option<String>,
}

impl<'de> ExtraKeys<'de> for BreakerKeys {
    fn accepts(key: &str) -> bool {
        key == "redis"
    }

    fn read<A: serde::de::MapAccess<'de>>(&mut self, _: &str, map: &mut A) -> Result<(), A::Error> {
        self.redis = Some(map.next_value()?);
        Ok(())
    }
}

impl<'de> Deserialize<'de> for BreakerConfig {
    /// Key by key, so that an error inside names its key (`route[pay].circuit_breaker.
    /// failure_ratio`) and unknown keys are refused (`#[serde(flatten)]` does neither).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (options, extra) =
            deserialize_with_extra::<_, CircuitBreakerOptions, BreakerKeys>(deserializer)?;
        Ok(BreakerConfig {
            options,
            redis: extra.redis,
        })
    }
}

/// `circuit_breaker = { failure_ratio = 0.5, sampling_duration = "10s", minimum_throughput =
/// 10, break_duration = "30s" }`: the core's [`CircuitBreakerOptions`] (every key), plus
/// `redis`. Derefs to the core options.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BreakerConfig {
    /// The core breaker options.
    #[serde(flatten)]
    pub options: CircuitBreakerOptions,
    /// Share the breaker's state with every replica of the sidecar through Redis
    /// (`redis://host:port`): one replica's failures open the circuit on all. The breaker
    /// is named after the route; while Redis is down each replica decides alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
}

impl Deref for BreakerConfig {
    type Target = CircuitBreakerOptions;
    fn deref(&self) -> &CircuitBreakerOptions {
        &self.options
    }
}

impl DerefMut for BreakerConfig {
    fn deref_mut(&mut self) -> &mut CircuitBreakerOptions {
        &mut self.options
    }
}

/// `defer = { database = "/var/lib/stormwall/payment.db", status = 202 }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeferConfig {
    /// The SQLite file holding the deferred requests.
    pub database: String,
    /// The answer's status. Default 202.
    #[serde(default = "default_defer_status")]
    pub status: u16,
    /// Replays before a request becomes a dead letter. Default 10.
    #[serde(default = "default_defer_attempts")]
    pub max_attempts: u32,
    /// How long a replayed request is kept after it was deferred: while it is, a repeat with
    /// its `Idempotency-Key` is answered as a duplicate and not queued again. Older ones are
    /// deleted (checked every minute), so the database does not grow with every request
    /// ever deferred. Default 24 h; at least 1 s.
    #[serde(default = "default_keep_done", with = "humantime_serde")]
    pub keep_done: Duration,
}

fn default_defer_status() -> u16 {
    202
}
fn default_defer_attempts() -> u32 {
    10
}
fn default_keep_done() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `health_check = { path = "/health", interval = "5s", timeout = "1s" }`: GET `path` on
/// the upstream every `interval`; a non-2xx answer or no answer within `timeout` makes the
/// route Degraded (Unhealthy when critical) in `/health/ready`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The path to GET.
    pub path: String,
    /// How often. Default 5 s.
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long to wait. Default 1 s.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

/// `match = { path_prefix = "/payment", host = "api.local" }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Default `/`.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Any host when absent.
    #[serde(default)]
    pub host: Option<String>,
}

impl Default for MatchConfig {
    fn default() -> Self {
        MatchConfig {
            path_prefix: default_prefix(),
            host: None,
        }
    }
}

fn default_prefix() -> String {
    "/".into()
}

/// `fallback = { status = 503, body = '{"status":"queued"}' }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// The status code.
    pub status: u16,
    #[serde(default)]
    /// The body.
    pub body: String,
    #[serde(default = "default_content_type")]
    /// Its content type. Default `application/json`.
    pub content_type: String,
}

fn default_content_type() -> String {
    "application/json".into()
}

/// The key a deserialisation error is at, routes named as elsewhere (`route[payment]`,
/// or `route[2]` when the route has no readable name).
fn key_path(path: &serde_path_to_error::Path, text: &str) -> String {
    use serde_path_to_error::Segment;
    let names = toml::from_str::<toml::Table>(text).ok();
    let mut key = String::new();
    let mut parent = "";
    for segment in path.iter() {
        match segment {
            Segment::Map { key: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
                parent = name;
            }
            Segment::Seq { index } => {
                let name = names
                    .as_ref()
                    .and_then(|t| {
                        t.get(parent)?
                            .get(*index)?
                            .get("name")?
                            .as_str()
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| index.to_string());
                key.push_str(&format!("[{name}]"));
            }
            // A pipeline's strategy: `strategies[1].retry`.
            Segment::Enum { variant } => {
                key.push('.');
                key.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    if key.is_empty() {
        "config".to_owned()
    } else {
        key
    }
}

/// A route's `upstream`, checked: `http://host:port` with an optional path prefix.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// `host:port`.
    pub(crate) authority: http::uri::Authority,
    /// The path prefix put before every request's path (no trailing `/`); empty for none.
    pub(crate) prefix: String,
}

impl Upstream {
    /// `http://host[:port][/prefix]`; refused: other schemes, `user:password@`, a query or
    /// a fragment (they would be dropped silently).
    pub(crate) fn parse(text: &str) -> Result<Upstream, &'static str> {
        const EXPECTED: &str = "http://host:port, optionally with a path prefix";
        if text.contains('#') {
            return Err("http://host:port[/prefix] without a #fragment");
        }
        let uri: http::Uri = text.parse().map_err(|_| EXPECTED)?;
        if uri.scheme_str() != Some("http") {
            return Err(EXPECTED);
        }
        let authority = uri.authority().ok_or(EXPECTED)?;
        if authority.as_str().contains('@') {
            return Err("http://host:port without user:password@ (credentials in the upstream URL are not sent)");
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(EXPECTED);
        }
        if uri.query().is_some() {
            return Err("http://host:port[/prefix] without a ?query");
        }
        Ok(Upstream {
            authority: authority.clone(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl Config {
    /// Parses and checks a configuration file's text. Errors name the key
    /// (`route[payment].timeout.total`), the value and the line.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let key = key_path(e.path(), text);
                let e = e.into_inner();
                let (value, line) = match e.span() {
                    Some(span) => (
                        text.get(span.clone()).unwrap_or("").trim().to_owned(),
                        Some(text[..span.start.min(text.len())].lines().count().max(1)),
                    ),
                    None => (String::new(), None),
                };
                let reason = match line {
                    Some(line) => format!("{} (line {line})", e.message().trim()),
                    None => e.message().trim().to_owned(),
                };
                ConfigError::new(key, value, reason)
            })?;
        config.check()?;
        config.resolve_pipelines()?;
        Ok(config)
    }

    /// Like [`parse`](Self::parse), with the environment's overrides on top:
    /// `STORMWALL__<PIPELINE>__<STRATEGY>__<KEY>...=value` sets a key of a strategy of
    /// `[pipelines.<pipeline>]` (by kind, or `STRATEGIES__<POSITION>` by position),
    /// `STORMWALL__SERVER__<KEY>=value` one of `[server]` (keys lowercased, values read as
    /// TOML values are, else as strings: `5`, `true`, `250ms`). Routes are a list, so a
    /// route's strategies are overridden through the pipeline it names. An error about a key
    /// a variable set names the variable.
    pub fn parse_with_env(text: &str) -> Result<Config, ConfigError> {
        let overrides = stormwall::registry::env_overrides();
        if overrides.is_empty() {
            return Config::parse(text);
        }
        let (merged, applied) = stormwall::registry::toml_with_env(text, &overrides)?;
        let merged = toml::to_string(&merged).map_err(|e| {
            ConfigError::new("config", "", format!("the file with its overrides: {e}"))
        })?;
        Config::parse(&merged).map_err(|e| applied.blame(e))
    }

    /// Gives each route its strategies: those of the pipeline it names (checked first, so
    /// that an error names the key where it is written:
    /// `pipelines.payment.strategies[2].retry.delay`), with its own keys.
    fn resolve_pipelines(&mut self) -> Result<(), ConfigError> {
        for (name, spec) in &self.pipelines {
            spec.validate()
                .map_err(|e| e.within(&format!("pipelines.{name}")))?;
        }
        for route in &mut self.route {
            let Some(name) = route.pipeline.clone() else {
                route.strategies = route.own_strategies();
                continue;
            };
            let Some(spec) = self.pipelines.get(&name) else {
                return Err(ConfigError::new(
                    format!("route[{}].pipeline", route.name),
                    name,
                    "the name of a [pipelines.<name>] table",
                ));
            };
            route.resolve(&name, spec)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        if server.max_header_bytes < 8192 {
            return Err(ConfigError::new(
                "server.max_header_bytes",
                server.max_header_bytes,
                "at least 8192",
            ));
        }
        for (key, value) in [
            ("server.max_connections", server.max_connections),
            ("server.max_in_flight", server.max_in_flight),
            ("server.backlog", server.backlog),
            (
                "server.max_headers",
                u32::try_from(server.max_headers).unwrap_or(u32::MAX),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, value, "at least 1"));
            }
        }
        for (key, value) in [
            ("server.header_read_timeout", server.header_read_timeout),
            ("server.idle_timeout", server.idle_timeout),
            ("server.body_timeout", server.body_timeout),
            (
                "server.upstream_connect_timeout",
                server.upstream_connect_timeout,
            ),
        ] {
            if value < Duration::from_millis(1) {
                return Err(ConfigError::new(key, value, "at least 1ms"));
            }
        }
        let (listen, admin) = (server.listen_addr()?, server.admin_addr()?);
        let overlap = listen.port() != 0
            && listen.port() == admin.port()
            && (listen.ip() == admin.ip()
                || listen.ip().is_unspecified()
                || admin.ip().is_unspecified());
        if overlap {
            return Err(ConfigError::new(
                "server.admin",
                &server.admin,
                format!("an address other than server.listen ({})", server.listen),
            ));
        }
        let mut seen: Vec<(&str, Option<&str>, &str)> = Vec::new();
        for route in &self.route {
            let at = |field: &str| format!("route[{}].{field}", route.name);
            if route.name.is_empty() {
                return Err(ConfigError::new("route.name", "", "a non-empty name"));
            }
            if seen.iter().any(|(name, _, _)| *name == route.name) {
                return Err(ConfigError::new(at("name"), &route.name, "unique"));
            }
            let (host, prefix) = (
                route.matches.host.as_deref(),
                route.matches.path_prefix.as_str(),
            );
            if let Some((other, _, _)) = seen.iter().find(|(_, h, p)| *h == host && *p == prefix) {
                return Err(ConfigError::new(
                    at("match"),
                    prefix,
                    format!(
                        "different from route[{other}].match (both would match the same requests)"
                    ),
                ));
            }
            if !prefix.starts_with('/') {
                return Err(ConfigError::new(
                    at("match.path_prefix"),
                    prefix,
                    "starting with /",
                ));
            }
            Upstream::parse(&route.upstream)
                .map_err(|why| ConfigError::new(at("upstream"), &route.upstream, why))?;
            if let Some(f) = &route.fallback {
                if http::StatusCode::from_u16(f.status).is_err() {
                    return Err(ConfigError::new(
                        at("fallback.status"),
                        f.status,
                        "an HTTP status (100–999)",
                    ));
                }
            }
            if let Some(d) = &route.defer {
                if d.keep_done < Duration::from_secs(1) {
                    return Err(ConfigError::new(
                        at("defer.keep_done"),
                        d.keep_done,
                        "at least 1s",
                    ));
                }
            }
            seen.push((&route.name, host, prefix));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"

[[route]]
name = "payment"
match = { path_prefix = "/payment" }
upstream = "http://127.0.0.1:7001"
timeout = { total = "30s", attempt = "10s" }
retry = { max_retries = 3, backoff = "exponential", delay = "200ms", jitter = "full" }
circuit_breaker = { failure_ratio = 0.5, sampling_duration = "10s", minimum_throughput = 10, break_duration = "30s" }
bulkhead = { max_concurrency = 100, queue = 50 }
fallback = { status = 503, body = '{"status":"queued"}' }
"#;

    #[test]
    fn the_design_example_parses() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.server.admin, "127.0.0.1:9901");
        assert_eq!(
            c.route[0].timeout.unwrap().attempt,
            Some(Duration::from_secs(10).into())
        );
        assert_eq!(c.route[0].bulkhead.as_ref().unwrap().queue_limit, 50);
        assert_eq!(
            kinds(&c.route[0]),
            ["bulkhead", "timeout", "retry", "circuit_breaker", "timeout"]
        );
    }

    #[test]
    fn bad_input_names_the_key() {
        let cases = [
            (GOOD.replace("max_retries = 3", "max_retires = 3"), "max_retires"),
            (GOOD.replace("\"200ms\"", "\"soon\""), "soon"),
            (
                GOOD.replace("max_concurrency = 100", "max_concurrency = \"many\""),
                "route[payment].bulkhead.max_concurrency",
            ),
            (GOOD.replace("\"30s\", attempt", "\"-3s\", attempt"), "route[payment].timeout.total"),
            (GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nidle_timeout = 5"), "server.idle_timeout"),
            (GOOD.replace("127.0.0.1:8080", "not an address"), "server.listen"),
            (GOOD.replace("127.0.0.1:8080", "127.0.0.1:99999"), "server.listen"),
            (
                GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:9901\""),
                "server.admin",
            ),
            (GOOD.replace("http://127.0.0.1:7001", "http://user:secret@127.0.0.1:7001"), "route[payment].upstream"),
            (GOOD.replace("http://127.0.0.1:7001", "http://127.0.0.1:7001/v2?x=1"), "route[payment].upstream"),
            (GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nbacklog = 0"), "server.backlog"),
            (GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nheader_read_timeout = \"0s\""), "server.header_read_timeout"),
            (GOOD.replace("http://127.0.0.1:7001", "ftp://x"), "route[payment].upstream"),
            (GOOD.replace("status = 503", "status = 1000"), "route[payment].fallback.status"),
            (
                format!("{GOOD}\n[[route]]\nname = \"kept\"\nmatch = {{ path_prefix = \"/kept\" }}\nupstream = \"http://127.0.0.1:1\"\ndefer = {{ database = \"k.db\", keep_done = \"500ms\" }}\n"),
                "route[kept].defer.keep_done",
            ),
            (
                format!("{GOOD}\n[[route]]\nname = \"again\"\nmatch = {{ path_prefix = \"/payment\" }}\nupstream = \"http://127.0.0.1:1\"\n"),
                "route[again].match",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text).unwrap_err();
            assert!(
                e.to_string().contains(key) || e.field.contains(key),
                "{key}: {e}"
            );
        }
        // Type and duration errors name the key, the value and the line.
        let e = Config::parse(&GOOD.replace("\"30s\", attempt", "\"-3s\", attempt")).unwrap_err();
        assert_eq!(e.field, "route[payment].timeout.total");
        assert!(
            e.to_string().contains("-3s") && e.to_string().contains("line 9"),
            "{e}"
        );
    }

    /// The example file the HTTP handler and the registry read too.
    const EXAMPLE: &str = include_str!("../../../examples/stormwall.toml");

    /// The kinds of a route's strategies, in order.
    fn kinds(route: &RouteConfig) -> Vec<&'static str> {
        route
            .strategies
            .iter()
            .map(|s| s.spec.kind().name())
            .collect()
    }

    #[test]
    fn the_shared_example_file_gives_routes_their_named_pipelines() {
        let c = Config::parse(EXAMPLE).unwrap();
        let payment = &c.route[0];
        assert_eq!(payment.pipeline.as_deref(), Some("payment"));
        assert_eq!(
            kinds(payment),
            ["bulkhead", "timeout", "retry", "circuit_breaker", "timeout"]
        );
        let StrategySpec::Retry(retry) = &payment.strategies[2].spec else {
            panic!("{:?}", payment.strategies)
        };
        assert_eq!(retry.max_retries, 3);
        assert_eq!(retry.delay, Duration::from_millis(200));
        assert_eq!(retry.max_delay, Some(Duration::from_secs(5)));
        assert_eq!(retry.jitter, stormwall::retry::Jitter::Full);
        assert_eq!(
            payment.strategies[4].spec,
            StrategySpec::Timeout(Duration::from_secs(10).into())
        );
        let inventory = &c.route[1];
        let StrategySpec::CircuitBreaker(breaker) = &inventory.strategies[2].spec else {
            panic!("{:?}", inventory.strategies)
        };
        assert_eq!(breaker.consecutive_failures, Some(5));
        for route in &c.route {
            assert!(crate::Route::build(route, None)
                .unwrap()
                .retrying
                .strategy()
                .inner()
                .is_fixed());
        }
    }

    #[test]
    fn a_route_key_replaces_its_pipelines_strategy_and_errors_name_where_they_are_written() {
        let own_retry = EXAMPLE.replace(
            "pipeline = \"payment\"",
            "pipeline = \"payment\"\nretry = { max_retries = 1, delay = \"1s\", backoff = \"constant\" }\ntimeout = { attempt = \"3s\" }",
        );
        let c = Config::parse(&own_retry).unwrap();
        let payment = &c.route[0];
        // In place: the other strategies still come from the pipeline, in its order.
        assert_eq!(
            kinds(payment),
            ["bulkhead", "timeout", "retry", "circuit_breaker", "timeout"]
        );
        let StrategySpec::Retry(retry) = &payment.strategies[2].spec else {
            panic!()
        };
        assert_eq!(retry.max_retries, 1);
        assert_eq!(retry.backoff, stormwall::retry::Backoff::Constant);
        assert_eq!(
            payment.strategies[4].spec,
            StrategySpec::Timeout(Duration::from_secs(3).into())
        );
        assert_eq!(
            payment.strategies[1].spec,
            StrategySpec::Timeout(Duration::from_secs(30).into())
        );
        // A kind the pipeline lacks is refused, by the route's key.
        let hedged = EXAMPLE.replace(
            "pipeline = \"payment\"",
            "pipeline = \"payment\"\nhedging = { delay = \"1s\" }",
        );
        assert_eq!(
            Config::parse(&hedged).unwrap_err().field,
            "route[payment].hedging"
        );
        let e = Config::parse(&EXAMPLE.replace("max_retries = 3", "max_retries = 0")).unwrap_err();
        assert_eq!(e.field, "pipelines.payment.strategies[2].retry.max_retries");
        let e = Config::parse(&EXAMPLE.replace("max_retries = 3", "max_retry = 3")).unwrap_err();
        assert!(e.to_string().contains("max_retry"), "{e}");
        let e = Config::parse(&EXAMPLE.replace("pipeline = \"inventory\"", "pipeline = \"stock\""))
            .unwrap_err();
        assert_eq!(e.field, "route[inventory].pipeline");
        // Every core key is settable on a route, and checked under the route's key path.
        let own = GOOD.replace(
            "bulkhead = { max_concurrency = 100, queue = 50 }",
            "bulkhead = { max_concurrency = 100, queue_limit = 50, queue_timeout = \"0s\" }",
        );
        let route = &Config::parse(&own).unwrap().route[0];
        let e = crate::Route::build(route, None).unwrap_err();
        assert_eq!(e.field, "route[payment].bulkhead.queue_timeout");
        let own = GOOD.replace(
            "jitter = \"full\" }",
            "jitter = \"full\", max_delay = \"100ms\" }",
        );
        let e = crate::Route::build(&Config::parse(&own).unwrap().route[0], None).unwrap_err();
        assert_eq!(e.field, "route[payment].retry.max_delay");
        let e = crate::Route::build(
            &Config::parse(&GOOD.replace("\"30s\", attempt", "\"2d\", attempt"))
                .unwrap()
                .route[0],
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "route[payment].timeout.total");
        let e = Config::parse(&GOOD.replace("jitter = \"full\"", "jitter = \"lots\"")).unwrap_err();
        assert_eq!(e.field, "route[payment].retry.jitter");
        assert!(e.to_string().contains("lots"), "{e}");
    }

    /// Every type and duration error names the full key path, in every table of a route and
    /// of a pipeline, with the value and the line.
    #[test]
    fn type_and_duration_errors_name_the_full_key_path_in_every_table() {
        let cases = [
            (
                "delay = \"200ms\"",
                "delay = \"soon\"",
                "route[payment].retry.delay",
            ),
            (
                "max_retries = 3,",
                "max_retries = \"3\",",
                "route[payment].retry.max_retries",
            ),
            (
                "failure_ratio = 0.5",
                "failure_ratio = \"half\"",
                "route[payment].circuit_breaker.failure_ratio",
            ),
            (
                "break_duration = \"30s\"",
                "break_duration = 30",
                "route[payment].circuit_breaker.break_duration",
            ),
            (
                "minimum_throughput = 10",
                "minimum_throughput = -1",
                "route[payment].circuit_breaker.minimum_throughput",
            ),
            (
                "queue = 50",
                "queue = \"fifty\"",
                "route[payment].bulkhead.queue",
            ),
            (
                "total = \"30s\"",
                "total = \"forever\"",
                "route[payment].timeout.total",
            ),
            (
                "attempt = \"10s\"",
                "attempt = 10",
                "route[payment].timeout.attempt",
            ),
            (
                "status = 503",
                "status = \"503\"",
                "route[payment].fallback.status",
            ),
        ];
        for (from, to, key) in cases {
            assert!(GOOD.contains(from), "{from}");
            let e = Config::parse(&GOOD.replace(from, to)).unwrap_err();
            assert_eq!(e.field, key, "{to}: {e}");
            assert!(e.to_string().contains("line "), "{e}");
        }
        let more = GOOD.replace(
            "bulkhead = { max_concurrency = 100, queue = 50 }",
            "rate_limit = { permits = 5 }\nhedging = { delay = \"1s\" }\nhealth_check = { path = \"/h\" }",
        );
        for (from, to, key) in [
            (
                "permits = 5",
                "permits = \"five\"",
                "route[payment].rate_limit.permits",
            ),
            (
                "permits = 5",
                "permits = 5, period = \"often\"",
                "route[payment].rate_limit.period",
            ),
            (
                "delay = \"1s\" }\nhealth",
                "delay = 1 }\nhealth",
                "route[payment].hedging.delay",
            ),
            (
                "path = \"/h\"",
                "path = \"/h\", interval = \"often\"",
                "route[payment].health_check.interval",
            ),
            ("redis", "redis", "route[payment]"),
        ] {
            if from == "redis" {
                let e = Config::parse(&GOOD.replace(
                    "break_duration = \"30s\"",
                    "break_duration = \"30s\", redis = 6379",
                ))
                .unwrap_err();
                assert_eq!(e.field, "route[payment].circuit_breaker.redis", "{e}");
                continue;
            }
            let e = Config::parse(&more.replace(from, to)).unwrap_err();
            assert_eq!(e.field, key, "{to}: {e}");
        }
        // An unknown key inside the breaker table is refused (with `#[serde(flatten)]` it was
        // not), naming its table and itself.
        let e = Config::parse(&GOOD.replace("failure_ratio", "failur_ratio")).unwrap_err();
        assert_eq!(e.field, "route[payment].circuit_breaker");
        assert!(e.to_string().contains("failur_ratio"), "{e}");
        // In a pipeline: the strategy's position and kind.
        for (from, to, key) in [
            (
                "delay = \"100ms\"",
                "delay = \"soon\"",
                "pipelines.inventory.strategies[1].retry.delay",
            ),
            (
                "consecutive_failures = 5",
                "consecutive_failures = \"5\"",
                "pipelines.inventory.strategies[2].circuit_breaker.consecutive_failures",
            ),
            (
                "{ timeout = \"5s\" }",
                "{ timeout = 5 }",
                "pipelines.inventory.strategies[3].timeout",
            ),
            (
                "queue_limit = 50",
                "queue_limit = \"x\"",
                "pipelines.payment.strategies[0].bulkhead.queue_limit",
            ),
        ] {
            assert!(EXAMPLE.contains(from), "{from}");
            let e = Config::parse(&EXAMPLE.replace(from, to)).unwrap_err();
            assert_eq!(e.field, key, "{to}: {e}");
        }
    }

    #[test]
    fn an_upstream_path_is_a_prefix_for_every_request() {
        let upstream = Upstream::parse("http://127.0.0.1:7001/v2/api/").unwrap();
        assert_eq!(
            (upstream.authority.as_str(), upstream.prefix.as_str()),
            ("127.0.0.1:7001", "/v2/api")
        );
        assert_eq!(Upstream::parse("http://127.0.0.1:7001").unwrap().prefix, "");
        assert_eq!(
            Upstream::parse("http://127.0.0.1:7001/").unwrap().prefix,
            ""
        );
    }
}
