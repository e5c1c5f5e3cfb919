//! Store-and-forward for a route: requests with an `Idempotency-Key` that cannot reach the
//! upstream now are kept in a durable queue (answered 202) and replayed when it is back.

use crate::body::UpstreamBody;
use crate::route::Route;
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use std::sync::{Arc, Weak};
use std::time::Duration;
use stormwall_durable::{DurableQueue, Job, QueueOptions, Worker, WorkerOptions};

/// A request as stored: `<4-byte length><metadata JSON><body>`.
pub(crate) fn encode(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Vec<u8> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let meta = serde_json::json!({ "method": method.as_str(), "path": path_and_query, "headers": headers })
        .to_string();
    let mut out = Vec::with_capacity(4 + meta.len() + body.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(body);
    out
}

/// The stored request, rebuilt toward `upstream`; `None` when the job is not one of ours.
fn decode(payload: &[u8], route: &Route) -> Option<Request<UpstreamBody>> {
    let length = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let meta: serde_json::Value = serde_json::from_slice(payload.get(4..4 + length)?).ok()?;
    let body = Bytes::copy_from_slice(payload.get(4 + length..)?);
    let path = http::uri::PathAndQuery::try_from(meta["path"].as_str()?).ok()?;
    let uri = route.upstream_uri(&path).ok()?;
    let mut request = Request::new(UpstreamBody::full(body));
    *request.method_mut() = Method::from_bytes(meta["method"].as_str()?.as_bytes()).ok()?;
    *request.uri_mut() = uri;
    for pair in meta["headers"].as_array()? {
        let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str()) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            request.headers_mut().append(name, value);
        }
    }
    Some(request)
}

/// A replay's bound when the route sets no timeout: the worker's lease (30 s), so that a
/// replay never outlives its lease.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a route's replay worker deletes replayed requests past `defer.keep_done`.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Opens a route's queue and starts its replay worker (ending when the route is dropped).
pub(crate) fn start(
    route: &Arc<Route>,
    client: UpstreamClient,
) -> Result<Option<DurableQueue>, stormwall::ConfigError> {
    let Some(defer) = route.config.defer.clone() else {
        return Ok(None);
    };
    let queue = DurableQueue::open(&defer.database, QueueOptions::default()).map_err(|e| {
        stormwall::ConfigError::new(
            format!("route[{}].defer.database", route.name()),
            &defer.database,
            e.to_string(),
        )
    })?;
    let weak: Weak<Route> = Arc::downgrade(route);
    // Replays run through the route's breaker: they wait while it is open, probe when the
    // break ends, and their outcomes count like the route's live requests.
    let worker = Worker::new(
        queue.clone(),
        route.name(),
        WorkerOptions {
            name: format!("replay-{}", route.name()),
            max_attempts: defer.max_attempts,
            backoff: Duration::from_millis(500),
            idle: Duration::from_millis(200),
            ..Default::default()
        },
        route.breaker.clone(),
    );
    let (keeper, name) = (queue.clone(), route.name().to_owned());
    tokio::spawn(async move {
        // The first purge runs at start-up (a restart does not wait a minute).
        let mut purged: Option<tokio::time::Instant> = None;
        let replay = |job: Job| {
            let (weak, client) = (weak.clone(), client.clone());
            async move {
                let Some(route) = weak.upgrade() else {
                    return Err("route removed".to_string());
                };
                let Some(request) = decode(&job.payload, &route) else {
                    return Err("unreadable deferred request".to_string());
                };
                // A replay is one attempt: the route's attempt timeout (else its total,
                // else the lease) bounds it, so a silent upstream cannot stall the queue.
                let bound = route
                    .config
                    .timeout
                    .as_ref()
                    .and_then(|t| t.attempt.or(t.total))
                    .map_or(REPLAY_TIMEOUT, |t| t.timeout);
                let replay = async {
                    match client.request(request).await {
                        Ok(response)
                            if stormwall_http::is_transient(
                                stormwall_http::AttemptOutcome::Status(response.status()),
                            ) =>
                        {
                            Err(format!("upstream answered {}", response.status()))
                        }
                        Ok(response) => {
                            let _ = response.into_body().collect().await;
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                };
                tokio::time::timeout(bound, replay)
                    .await
                    .unwrap_or_else(|_| Err(format!("replay timed out after {bound:?}")))
            }
        };
        loop {
            if weak.strong_count() == 0 {
                return;
            }
            match worker.run_once(&replay).await {
                Ok(0) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Ok(_) => {}
            }
            if purged.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                purged = Some(tokio::time::Instant::now());
                if let Err(e) = keeper.purge_done(&name, defer.keep_done).await {
                    tracing::warn!(route = %name, error = %e, "stormwall proxy: could not purge replayed requests");
                }
            }
        }
    });
    Ok(Some(queue))
}
