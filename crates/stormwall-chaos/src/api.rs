//! Toxiproxy's HTTP API (2.x): the same paths, methods, status codes and JSON.

use crate::proxy::{populate_specs, ProxySpec};
use crate::toxic::Toxic;
use crate::{ChaosError, ChaosServer};
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The Toxiproxy API version this server speaks, reported by `GET /version`.
pub const TOXIPROXY_API_VERSION: &str = "2.12.0";

impl IntoResponse for ChaosError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            Json(json!({ "error": self.to_string(), "status": status })),
        )
            .into_response()
    }
}

type ApiResult = Result<Response, ChaosError>;

pub(crate) fn router(server: ChaosServer) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/reset", axum::routing::post(reset))
        .route("/populate", axum::routing::post(populate))
        .route("/proxies", get(list).post(create))
        .route(
            "/proxies/{proxy}",
            get(show).post(update).patch(update).delete(delete),
        )
        .route("/proxies/{proxy}/toxics", get(toxics).post(create_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(show_toxic)
                .post(update_toxic)
                .patch(update_toxic)
                .delete(delete_toxic),
        )
        .fallback(|| async { ChaosError::NotFound.into_response() })
        .layer(middleware::from_fn(stop_browsers))
        .with_state(server)
}

/// Like Toxiproxy: a web page must not drive the API (a browser's requests carry a
/// `Mozilla/` user agent).
async fn stop_browsers(request: Request, next: Next) -> Response {
    let from_browser = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla/"));
    if from_browser {
        return (StatusCode::FORBIDDEN, "User agent not allowed\n").into_response();
    }
    next.run(request).await
}

fn parse(body: &Bytes) -> Result<Value, ChaosError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ChaosError::BadRequest(e.to_string()))
}

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, Json(body)).into_response())
}

async fn version() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        format!("{{\"version\": \"{TOXIPROXY_API_VERSION}\"}}\n"),
    )
        .into_response()
}

async fn reset(State(server): State<ChaosServer>) -> ApiResult {
    server.reset()?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list(State(server): State<ChaosServer>) -> ApiResult {
    let proxies: serde_json::Map<String, Value> = server
        .proxies()
        .into_iter()
        .map(|p| (p.name.clone(), p.to_json()))
        .collect();
    ok(StatusCode::OK, Value::Object(proxies))
}

async fn create(State(server): State<ChaosServer>, body: Bytes) -> ApiResult {
    let spec = ProxySpec::from_json(&parse(&body)?)?;
    ok(StatusCode::CREATED, server.create(spec).await?.to_json())
}

async fn populate(State(server): State<ChaosServer>, body: Bytes) -> ApiResult {
    let specs = populate_specs(&parse(&body)?)?;
    match server.populate(specs).await {
        Ok(done) => ok(
            StatusCode::CREATED,
            json!({ "proxies": done.iter().map(|p| p.to_json()).collect::<Vec<_>>() }),
        ),
        Err((e, done)) => {
            let status = e.status();
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            ok(
                code,
                json!({
                    "error": e.to_string(),
                    "status": status,
                    "proxies": done.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
                }),
            )
        }
    }
}

async fn show(State(server): State<ChaosServer>, Path(proxy): Path<String>) -> ApiResult {
    ok(StatusCode::OK, server.proxy(&proxy)?.to_json())
}

async fn update(
    State(server): State<ChaosServer>,
    Path(proxy): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse(&body)?;
    ok(
        StatusCode::OK,
        server.update(&proxy, &body).await?.to_json(),
    )
}

async fn delete(State(server): State<ChaosServer>, Path(proxy): Path<String>) -> ApiResult {
    server.delete(&proxy).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn toxics(State(server): State<ChaosServer>, Path(proxy): Path<String>) -> ApiResult {
    let toxics = server.toxics(&proxy)?;
    ok(
        StatusCode::OK,
        Value::Array(toxics.iter().map(Toxic::to_json).collect()),
    )
}

async fn create_toxic(
    State(server): State<ChaosServer>,
    Path(proxy): Path<String>,
    body: Bytes,
) -> ApiResult {
    // The proxy first: a missing proxy is a 404 whatever the body says.
    server.proxy(&proxy)?;
    let toxic = Toxic::from_json(&parse(&body)?)?;
    ok(StatusCode::OK, server.add_toxic(&proxy, toxic)?.to_json())
}

async fn show_toxic(
    State(server): State<ChaosServer>,
    Path((proxy, toxic)): Path<(String, String)>,
) -> ApiResult {
    ok(StatusCode::OK, server.toxic(&proxy, &toxic)?.to_json())
}

async fn update_toxic(
    State(server): State<ChaosServer>,
    Path((proxy, toxic)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let body = parse(&body)?;
    ok(
        StatusCode::OK,
        server.update_toxic(&proxy, &toxic, &body)?.to_json(),
    )
}

async fn delete_toxic(
    State(server): State<ChaosServer>,
    Path((proxy, toxic)): Path<(String, String)>,
) -> ApiResult {
    server.remove_toxic(&proxy, &toxic)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
