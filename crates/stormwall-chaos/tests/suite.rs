//! The seeds' chaos suite: real HTTP services on loopback, the chaos proxy in front of
//! them, stormwall pipelines in the caller.

mod common;

use axum::routing::get;
use common::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::fallback::FallbackOptions;
use stormwall::retry::RetryOptions;
use stormwall::{Error, Pipeline};
use stormwall_chaos::{ChaosServer, ProxySpec, Stream, Toxic, ToxicKind};

/// An HTTP service answering `GET /` with `status` and `body`; counts the requests.
async fn service(status: u16, body: String) -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { (axum::http::StatusCode::from_u16(status).unwrap(), body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

/// Calls `GET /` on `addr`: the body on 2xx, an error otherwise.
async fn call(addr: &str) -> Result<String, String> {
    match try_request(addr, "GET", "/", "", "order-service").await {
        Ok((status, body)) if (200..300).contains(&status) => Ok(body),
        Ok((status, _)) => Err(format!("status {status}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn behind_proxy(chaos: &ChaosServer, name: &str, upstream: std::net::SocketAddr) -> String {
    chaos
        .create(ProxySpec::new(name, upstream.to_string()))
        .await
        .unwrap()
        .listen
}

fn toxic(kind: ToxicKind, name: &str) -> Toxic {
    let mut t = Toxic::new(kind);
    t.name = name.into();
    t
}

#[tokio::test]
async fn an_order_succeeds_when_payment_has_2s_latency_within_its_total_timeout() {
    let chaos = ChaosServer::new();
    let (payment, _) = service(200, "charged".into()).await;
    let listen = behind_proxy(&chaos, "payment", payment).await;
    chaos
        .add_toxic(
            "payment",
            toxic(
                ToxicKind::Latency {
                    latency: 2000,
                    jitter: 0,
                },
                "slow",
            ),
        )
        .unwrap();
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_secs(30))
        .retry(RetryOptions::exponential(Duration::from_millis(200)).max_retries(3))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    let order = pipeline.execute(|_| call(&listen)).await;
    assert_eq!(order, Ok("charged".to_owned()));
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn inventory_down_returns_the_fallback_answer() {
    let chaos = ChaosServer::new();
    let (inventory, hits) = service(200, "in stock: 7".into()).await;
    let listen = behind_proxy(&chaos, "inventory", inventory).await;
    let pipeline = Pipeline::builder()
        .fallback(FallbackOptions::value("in stock (cached)".to_owned()))
        .retry(RetryOptions::constant(Duration::from_millis(10)).max_retries(2))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(
        pipeline.execute(|_| call(&listen)).await,
        Ok("in stock: 7".into())
    );
    chaos
        .update("inventory", &serde_json::json!({"enabled": false}))
        .await
        .unwrap();
    assert_eq!(
        pipeline.execute(|_| call(&listen)).await,
        Ok("in stock (cached)".into())
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the disabled proxy reached nothing"
    );
}

#[tokio::test]
async fn a_failing_dependency_opens_the_breaker_then_calls_fail_fast_without_reaching_it() {
    let chaos = ChaosServer::new();
    let (payment, hits) = service(500, "boom".into()).await;
    let listen = behind_proxy(&chaos, "payment", payment).await;
    let pipeline = Pipeline::builder()
        .circuit_breaker(
            CircuitBreakerOptions::new()
                .consecutive_failures(5)
                .break_duration(Duration::from_secs(30)),
        )
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for _ in 0..5 {
        assert!(matches!(
            pipeline.execute(|_| call(&listen)).await,
            Err(Error::Inner(_))
        ));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    for _ in 0..20 {
        let started = Instant::now();
        let outcome = pipeline.execute(|_| call(&listen)).await;
        assert!(
            matches!(outcome, Err(Error::CircuitOpen { .. })),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        5,
        "open: nothing reached the dependency"
    );
}

#[tokio::test]
async fn reset_peer_on_half_the_connections_still_delivers_every_order_with_retries() {
    let chaos = ChaosServer::new();
    let (payment, hits) = service(200, "charged".into()).await;
    let listen = behind_proxy(&chaos, "payment", payment).await;
    let mut reset = toxic(ToxicKind::ResetPeer { timeout: 0 }, "reset");
    reset.toxicity = 0.5;
    reset.stream = Stream::Upstream;
    chaos.add_toxic("payment", reset).unwrap();
    let pipeline = Pipeline::builder()
        .retry(RetryOptions::constant(Duration::from_millis(5)).max_retries(20))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let retries = AtomicU32::new(0);
    for _ in 0..20 {
        let order = pipeline
            .execute(|ctx| {
                if ctx.attempt() > 0 {
                    retries.fetch_add(1, Ordering::SeqCst);
                }
                call(&listen)
            })
            .await;
        assert_eq!(order, Ok("charged".to_owned()));
    }
    // At 50 % per connection, 20 orders without a single reset would take odds of 1 in 10⁶.
    assert!(
        retries.load(Ordering::SeqCst) > 0,
        "some connections were reset and retried"
    );
    let reached = hits.load(Ordering::SeqCst);
    assert_eq!(reached, 20, "every order was charged exactly once");
}

#[tokio::test]
async fn slicer_and_bandwidth_toxics_deliver_responses_intact() {
    let chaos = ChaosServer::new();
    let body: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (catalog, _) = service(200, body.clone()).await;
    let listen = behind_proxy(&chaos, "catalog", catalog).await;
    chaos
        .add_toxic(
            "catalog",
            toxic(
                ToxicKind::Slicer {
                    average_size: 64,
                    size_variation: 32,
                    delay: 50,
                },
                "slicer",
            ),
        )
        .unwrap();
    chaos
        .add_toxic(
            "catalog",
            toxic(ToxicKind::Bandwidth { rate: 400 }, "bandwidth"),
        )
        .unwrap();
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(pipeline.execute(|_| call(&listen)).await, Ok(body.clone()));
    }
}
