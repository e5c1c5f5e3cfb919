//! An axum service that protects itself and its dependency with stormwall:
//!
//! - inbound: a bulkhead as a tower layer on the router (at most 2 requests at once; the rest
//!   are shed with 503 at once, signalled through `poll_ready`);
//! - outbound: the handler calls a flaky payment dependency through a pipeline
//!   (fallback → retry → breaker → attempt timeout).
//!
//! Run: `cargo run -p stormwall --example axum_service`. It serves on a free loopback port,
//! sends itself a few requests and prints what each got.

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stormwall::bulkhead::{Bulkhead, BulkheadLayer, BulkheadOptions};
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::fallback::FallbackOptions;
use stormwall::retry::RetryOptions;
use stormwall::Pipeline;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The dependency: fails two calls out of three.
async fn charge(calls: &AtomicU32) -> Result<String, String> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    match calls.fetch_add(1, Ordering::Relaxed) % 3 {
        2 => Ok("charged".into()),
        _ => Err("payment service unavailable".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let payments = Arc::new(
        Pipeline::builder()
            .name("payment")
            .fallback(FallbackOptions::value("queued for later".to_owned()))
            .retry(RetryOptions::constant(Duration::from_millis(10)).max_retries(3))
            .circuit_breaker(CircuitBreakerOptions::new().consecutive_failures(10))
            .timeout(Duration::from_millis(500))
            .build()?,
    );
    let calls = Arc::new(AtomicU32::new(0));
    let order = {
        let (payments, calls) = (payments.clone(), calls.clone());
        move || async move {
            match payments.execute(|_| charge(&calls)).await {
                Ok(outcome) => (StatusCode::OK, format!("order accepted: {outcome}\n")),
                Err(e) => (StatusCode::BAD_GATEWAY, format!("order failed: {e}\n")),
            }
        }
    };
    let bulkhead = Bulkhead::new(BulkheadOptions::new(2))?;
    let app = Router::new().route("/order", get(order)).layer(
        tower::ServiceBuilder::new()
            // The bulkhead's rejection becomes a 503 instead of an error.
            .layer(HandleErrorLayer::new(|e: stormwall::Error<_>| async move {
                (StatusCode::SERVICE_UNAVAILABLE, format!("shed: {e}\n"))
            }))
            .layer(BulkheadLayer::new(bulkhead)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Five orders at once: two are served, the others shed by the bulkhead.
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(tokio::spawn(get_order(addr)));
    }
    for order in orders {
        print!("{}", order.await??);
    }
    // One at a time: each goes through, retried past the dependency's failures.
    for _ in 0..3 {
        print!("{}", get_order(addr).await?);
    }
    println!(
        "payment dependency called {} times",
        calls.load(Ordering::Relaxed)
    );
    Ok(())
}

/// `GET /order` over a plain connection: the status line and the body.
async fn get_order(addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /order HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok(format!("{status} — {body}"))
}
