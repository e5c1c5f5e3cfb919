//! The standard resilience handler in front of hyper-util's client and of reqwest, against
//! a flaky service on loopback: a 503 retried, a 429 whose `Retry-After` is honoured, a POST
//! without `Idempotency-Key` sent once.
//!
//! Run: `cargo run -p stormwall-http --example http_clients`.

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stormwall_http::{StandardLayer, StandardMiddleware, StandardOptions};
use tower::{Layer, Service, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = flaky_service().await?;
    let mut options = StandardOptions::default();
    options.retry.delay = Duration::from_millis(100);
    let layer = StandardLayer::builder(options).name("example").build()?;

    // hyper-util's client, wrapped by the layer.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut client = layer.clone().layer(client);
    for path in ["/flaky", "/limited"] {
        let started = Instant::now();
        let request = Request::get(format!("http://{addr}{path}")).body(Full::default())?;
        let response = client.ready().await?.call(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "hyper   GET {path:<9} → {status} {:?} after {:?}",
            String::from_utf8_lossy(&body),
            started.elapsed()
        );
    }

    // reqwest, with the same layer as middleware (sharing its breakers).
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(StandardMiddleware::new(layer.clone()))
        .build();
    let response = client
        .post(format!("http://{addr}/always-busy"))
        .send()
        .await?;
    println!(
        "reqwest POST /always-busy → {} (no Idempotency-Key: sent once)",
        response.status()
    );
    let response = client
        .post(format!("http://{addr}/always-busy"))
        .header("Idempotency-Key", "order-42")
        .send()
        .await?;
    println!(
        "reqwest POST /always-busy → {} (with a key: retried 3 times)",
        response.status()
    );
    println!(
        "authorities with their own breaker: {:?}",
        layer.authorities()
    );
    Ok(())
}

/// `/flaky`: 503 once, then 200. `/limited`: 429 with `Retry-After: 1` once, then 200.
/// `/always-busy`: 503.
async fn flaky_service() -> std::io::Result<std::net::SocketAddr> {
    let calls = Arc::new(AtomicU32::new(0));
    let limited = Arc::new(AtomicU32::new(0));
    let app = axum::Router::new()
        .route(
            "/flaky",
            axum::routing::get(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                        _ => (StatusCode::OK, "done"),
                    }
                }
            }),
        )
        .route(
            "/limited",
            axum::routing::get(move || {
                let n = limited.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            "slow down",
                        ),
                        _ => (StatusCode::OK, [("retry-after", "0")], "done"),
                    }
                }
            }),
        )
        .route(
            "/always-busy",
            axum::routing::post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "busy") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
