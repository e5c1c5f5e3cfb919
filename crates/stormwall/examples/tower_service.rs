//! A tonic-style client stack built with tower's `ServiceBuilder`: a rate limit and a
//! bulkhead that signal readiness, then a resilience pipeline (timeout, retry, breaker)
//! around a flaky service.
//!
//! `cargo run --example tower_service`

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stormwall::bulkhead::{Bulkhead, BulkheadLayer, BulkheadOptions};
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::layer::PipelineLayer;
use stormwall::rate_limit::{RateLimitLayer, RateLimitOptions, RateLimiter};
use stormwall::retry::RetryOptions;
use stormwall::Pipeline;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// The request and response of a made-up `Inventory/Reserve` RPC.
#[derive(Debug, Clone)]
struct Reserve {
    sku: &'static str,
    quantity: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    // Fails every other call, like a dependency restarting its pods.
    let inventory = service_fn(move |req: Reserve| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            if n.is_multiple_of(2) {
                Err(std::io::Error::other("unavailable"))
            } else {
                Ok(format!("reserved {} × {}", req.quantity, req.sku))
            }
        }
    });
    let pipeline = Pipeline::builder()
        .name("inventory")
        .timeout(Duration::from_secs(5))
        .retry(RetryOptions::constant(Duration::from_millis(20)).max_retries(2))
        .circuit_breaker(CircuitBreakerOptions::consecutive(5))
        .timeout(Duration::from_secs(1))
        .build()?;
    let mut client = ServiceBuilder::new()
        .layer(RateLimitLayer::new(RateLimiter::new(
            RateLimitOptions::per_second(100),
        )?))
        .layer(BulkheadLayer::new(Bulkhead::new(
            BulkheadOptions::new(10).queue_limit(20),
        )?))
        .layer(PipelineLayer::new(pipeline))
        .service(inventory);
    for (sku, quantity) in [("apple", 3), ("pear", 1), ("plum", 7)] {
        let reply = client.ready().await?.call(Reserve { sku, quantity }).await;
        println!("{sku}: {reply:?}");
    }
    println!(
        "{} calls reached the inventory service",
        calls.load(Ordering::Relaxed)
    );
    Ok(())
}
