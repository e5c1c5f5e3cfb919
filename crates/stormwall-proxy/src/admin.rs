//! The admin listener: health probes, Prometheus metrics, the admin API, the dashboard.

use crate::server::Proxy;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use stormwall::circuit_breaker::CircuitState;
use stormwall::health::{BreakerCheck, CheckResult, HealthRegistry, HealthStatus};

fn registry(proxy: &Proxy) -> HealthRegistry {
    let mut registry = HealthRegistry::new().check(
        "process",
        &["live", "startup"],
        Duration::from_secs(1),
        || async { CheckResult::healthy() },
    );
    for route in proxy.routes().iter() {
        if route.config.health_check.is_some() {
            let (route, critical) = (Arc::clone(route), route.config.critical);
            registry = registry.check(
                format!("upstream:{}", route.name()),
                &["ready"],
                Duration::from_secs(1),
                move || {
                    let problem = route
                        .upstream_problem
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    async move {
                        match problem {
                            None => CheckResult::healthy(),
                            Some(why) if critical => CheckResult::unhealthy(why),
                            Some(why) => CheckResult::degraded(why),
                        }
                    }
                },
            );
        }
        if let Some(breaker) = &route.breaker {
            let check = BreakerCheck::new(breaker.clone());
            let check = if route.config.critical {
                check.critical()
            } else {
                check
            };
            registry = registry.check(
                format!("route:{}", route.name()),
                &["ready"],
                Duration::from_secs(1),
                check,
            );
        }
    }
    registry
}

async fn health(proxy: &Proxy, tag: &str) -> Response {
    let mut report = registry(proxy).report(Some(tag)).await;
    if tag == "ready" && proxy.draining.load(std::sync::atomic::Ordering::Acquire) {
        report.status = HealthStatus::Unhealthy;
    }
    let code = match report.status {
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (code, Json(report)).into_response()
}

fn circuits(proxy: &Proxy) -> serde_json::Value {
    let routes: Vec<_> = proxy
        .routes()
        .iter()
        .map(|r| {
            json!({
                "route": r.name(),
                "critical": r.config.critical,
                "state": r.breaker.as_ref().map(|b| b.state().as_str()),
                "shared": r.circuit_shared(),
            })
        })
        .collect();
    json!({ "circuits": routes })
}

/// `Authorization: Bearer <token>` on `/admin/*` when a token is set (the scheme in any
/// case, RFC 9110 §11.1; the token compared in constant time).
async fn authorise(State(proxy): State<Arc<Proxy>>, request: Request, next: Next) -> Response {
    let token = proxy
        .config()
        .server
        .admin_token
        .clone()
        .or_else(|| std::env::var("STORMWALL_ADMIN_TOKEN").ok());
    if let Some(token) = token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, given)| given.trim_start());
        if !given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "admin token required"})),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares in a time that depends on the lengths only, not on where the bytes differ.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let mut differ = u8::from(given.len() != secret.len());
    for (i, byte) in given.iter().enumerate() {
        differ |= byte ^ secret.get(i % secret.len().max(1)).copied().unwrap_or(0);
    }
    std::hint::black_box(differ) == 0
}

/// The admin router; `reload` reads the configuration file again.
pub fn router(
    proxy: Arc<Proxy>,
    reload: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> Router {
    crate::prometheus::install();
    let admin = Router::new()
        .route(
            "/admin/config",
            get(|State(p): State<Arc<Proxy>>| async move {
                let config = p.config();
                let mut server = serde_json::to_value(&config.server).unwrap_or_default();
                server["admin_token_set"] = json!(config.server.admin_token.is_some());
                // What the proxy listens on now (the port chosen for port 0).
                server["listening"] = json!(p.local_addr().map(|a| a.to_string()));
                Json(json!({
                    "server": server,
                    "routes": config.route.iter().map(|r| json!({
                        "name": r.name, "upstream": r.upstream,
                        "path_prefix": r.matches.path_prefix, "host": r.matches.host,
                    })).collect::<Vec<_>>(),
                }))
            }),
        )
        .route("/admin/circuits", get(|State(p): State<Arc<Proxy>>| async move { Json(circuits(&p)) }))
        .route(
            "/admin/queues",
            get(|State(p): State<Arc<Proxy>>| async move {
                let mut queues = Vec::new();
                for route in p.routes().iter() {
                    let Some(queue) = route.deferred.get() else { continue };
                    let depth = queue.depth(route.name()).await.unwrap_or_default();
                    let dead = queue.dead_letters(route.name()).await.unwrap_or_default();
                    queues.push(json!({
                        "route": route.name(),
                        "ready": depth.ready, "leased": depth.leased, "done": depth.done, "dead": depth.dead,
                        "oldest_ready_age_seconds": depth.oldest_ready_age.as_secs_f64(),
                        "dead_letters": dead.iter().map(|(id, key, error)| json!({"job": id, "key": key, "error": error})).collect::<Vec<_>>(),
                    }));
                }
                Json(json!({ "queues": queues }))
            }),
        )
        .route(
            "/admin/routes/{route}/{action}",
            post(|State(p): State<Arc<Proxy>>, Path((route, action)): Path<(String, String)>| async move {
                let routes = p.routes();
                let Some(breaker) = routes.iter().find(|r| r.name() == route).and_then(|r| r.breaker.clone()) else {
                    return (StatusCode::NOT_FOUND, Json(json!({"error": "no such route with a circuit breaker"})));
                };
                match action.as_str() {
                    "isolate" => breaker.isolate(),
                    "close" | "reset" => breaker.close(),
                    _ => return (StatusCode::BAD_REQUEST, Json(json!({"error": "action must be isolate, close or reset"}))),
                }
                (StatusCode::OK, Json(json!({"route": route, "state": breaker.state().as_str()})))
            }),
        )
        .route(
            "/admin/reload",
            post(move || {
                let reload = Arc::clone(&reload);
                async move {
                    match reload() {
                        Ok(()) => (StatusCode::OK, Json(json!({"reloaded": true}))),
                        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"reloaded": false, "error": e}))),
                    }
                }
            }),
        )
        .layer(middleware::from_fn_with_state(Arc::clone(&proxy), authorise));
    Router::new()
        .route("/health/live", get(|State(p): State<Arc<Proxy>>| async move { health(&p, "live").await }))
        .route("/health/ready", get(|State(p): State<Arc<Proxy>>| async move { health(&p, "ready").await }))
        .route("/health/startup", get(|State(p): State<Arc<Proxy>>| async move { health(&p, "startup").await }))
        .route(
            "/metrics",
            get(|State(p): State<Arc<Proxy>>| async move {
                // Gauges that are states, read now.
                for route in p.routes().iter() {
                    if let Some(breaker) = &route.breaker {
                        let value = f64::from(match breaker.state() {
                            CircuitState::Closed => 0u8,
                            CircuitState::Open => 1,
                            CircuitState::HalfOpen => 2,
                            CircuitState::Isolated => 3,
                            CircuitState::Disabled => 4,
                        });
                        metrics::gauge!("stormwall_circuit_state", "route" => route.name().to_owned()).set(value);
                    }
                }
                let text = crate::prometheus::render();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }),
        )
        .merge(admin)
        .with_state(Arc::clone(&proxy))
        .merge(proxy.dashboard.router())
}
