//! Per-strategy tower layers: readiness for the rate limiter and the bulkhead.

use std::time::Duration;
use stormwall::bulkhead::{Bulkhead, BulkheadLayer, BulkheadOptions};
use stormwall::rate_limit::{RateLimitLayer, RateLimitOptions, RateLimiter};
use stormwall::Error;
use tokio::time::{sleep, Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

fn slow(
    ms: u64,
) -> impl Service<
    u32,
    Response = u32,
    Error = std::io::Error,
    Future = impl std::future::Future<Output = Result<u32, std::io::Error>> + Send,
> + Clone {
    service_fn(move |x: u32| async move {
        sleep(Duration::from_millis(ms)).await;
        Ok::<_, std::io::Error>(x)
    })
}

#[tokio::test(start_paused = true)]
async fn rate_limit_layer_waits_in_poll_ready_for_a_permit() {
    let limiter = RateLimiter::new(RateLimitOptions::per_second(2)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter))
        .service(slow(0));
    let start = Instant::now();
    for i in 0..3 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
    }
    // Two at once (the burst), the third after 500 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_layer_rejects_a_call_made_without_readiness() {
    let limiter = RateLimiter::new(RateLimitOptions::per_second(1)).unwrap();
    let mut svc = RateLimitLayer::new(limiter).layer_service(slow(0));
    assert_eq!(svc.call(1).await.unwrap(), 1);
    let rejected = svc.call(2).await.unwrap_err();
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(rejected.kind(), "rate_limited");
}

trait LayerService<S> {
    type Service;
    fn layer_service(&self, inner: S) -> Self::Service;
}

impl<L: tower::Layer<S>, S> LayerService<S> for L {
    type Service = L::Service;
    fn layer_service(&self, inner: S) -> L::Service {
        self.layer(inner)
    }
}

#[tokio::test(start_paused = true)]
async fn bulkhead_layer_sheds_when_full_without_a_queue() {
    let bulkhead = Bulkhead::new(BulkheadOptions::new(1)).unwrap();
    let layer = BulkheadLayer::new(bulkhead.clone());
    let mut a = layer.layer_service(slow(100));
    let mut b = a.clone();
    let first = a.ready().await.unwrap().call(1);
    assert_eq!(bulkhead.in_use(), 1, "the slot is taken at readiness");
    // Ready (load shedding), but the call fails fast.
    let second = b.ready().await.unwrap().call(2).await;
    assert!(matches!(second, Err(Error::BulkheadFull)));
    assert_eq!(first.await.unwrap(), 1);
    assert_eq!(bulkhead.in_use(), 0);
    assert_eq!(b.ready().await.unwrap().call(3).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_layer_queues_in_poll_ready_with_a_queue() {
    let bulkhead = Bulkhead::new(BulkheadOptions::new(1).queue_limit(1)).unwrap();
    let layer = BulkheadLayer::new(bulkhead.clone());
    let mut a = layer.layer_service(slow(100));
    let mut b = a.clone();
    let start = Instant::now();
    let first = a.ready().await.unwrap().call(1);
    let (one, two) = tokio::join!(first, async {
        // Waits its turn in poll_ready: backpressure, not an error.
        let r = b.ready().await.unwrap().call(2).await;
        (r, start.elapsed())
    });
    assert_eq!(one.unwrap(), 1);
    assert_eq!(two.0.unwrap(), 2);
    assert_eq!(two.1, Duration::from_millis(200));
    assert_eq!((bulkhead.in_use(), bulkhead.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn bulkhead_layer_queue_timeout_sheds() {
    let bulkhead = Bulkhead::new(
        BulkheadOptions::new(1)
            .queue_limit(1)
            .queue_timeout(Duration::from_millis(50)),
    )
    .unwrap();
    let layer = BulkheadLayer::new(bulkhead.clone());
    let mut a = layer.layer_service(slow(100));
    let mut b = a.clone();
    let first = a.ready().await.unwrap().call(1);
    let second = async { b.ready().await.unwrap().call(2).await };
    let (one, two) = tokio::join!(first, second);
    assert_eq!(one.unwrap(), 1);
    assert!(matches!(two, Err(Error::BulkheadFull)));
    assert_eq!((bulkhead.in_use(), bulkhead.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_ready_service_gives_its_slot_back() {
    let bulkhead = Bulkhead::new(BulkheadOptions::new(1)).unwrap();
    let mut svc = BulkheadLayer::new(bulkhead.clone()).layer_service(slow(0));
    svc.ready().await.unwrap();
    assert_eq!(bulkhead.in_use(), 1);
    drop(svc);
    assert_eq!(bulkhead.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn every_strategy_has_a_layer() {
    use stormwall::circuit_breaker::CircuitBreakerOptions;
    use stormwall::layer::strategy_layer;
    use stormwall::retry::RetryOptions;
    let svc = ServiceBuilder::new()
        .layer(strategy_layer(Duration::from_millis(50)).unwrap())
        .layer(strategy_layer(RetryOptions::constant(Duration::from_millis(1))).unwrap())
        .layer(strategy_layer(CircuitBreakerOptions::consecutive(3)).unwrap())
        .service(slow(100));
    // The inner call takes 100 ms: the outer timeout (a layer of its own) gives up at 50.
    let outcome = svc.oneshot(1).await;
    assert!(matches!(outcome, Err(Error::Timeout(_))));
    let invalid = strategy_layer(RetryOptions::constant(Duration::ZERO));
    assert_eq!(
        invalid.err().map(|e| e.field),
        Some("retry.delay".to_owned())
    );
}
