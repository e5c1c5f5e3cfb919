#![cfg_attr(docsrs, feature(doc_cfg))]
//! The resilience sidecar: a reverse proxy that applies a stormwall pipeline per route, for
//! services in any language.
//!
//! `stormwall proxy --config stormwall.toml` serves the routes of the file (see
//! [`Config`]): each route matches by host and path prefix and sends to one upstream
//! through its per-client rate limit → bulkhead → total timeout → retry (idempotent requests
//! or with `Idempotency-Key`; `Retry-After` honoured) → circuit breaker → attempt timeout;
//! when the pipeline gives up it answers the route's fallback, or a status that says why
//! (503 open circuit / full bulkhead, 429 rate limited, 504 timeout, 502 unreachable).
//! The admin listener serves `/health/{live,ready,startup}`, `/metrics` (Prometheus) and
//! `/admin/*` (config, circuits, isolate/close/reset, reload; bearer token when set).

mod admin;
mod body;
mod config;
mod connection;
pub mod dashboard;
mod defer;
mod path;
mod prometheus;
mod route;
mod server;
mod upstream;

pub use admin::router as admin_router;
pub use config::{
    BreakerConfig, Config, DeferConfig, FallbackConfig, HealthCheckConfig, MatchConfig,
    RouteConfig, ServerConfig,
};
pub use prometheus::{install as install_metrics, DURATION_BUCKETS};
pub use route::Route;
pub use server::{bind, Peer, Proxy, ProxyBody};
