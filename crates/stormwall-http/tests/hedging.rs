//! The hedging handler on tokio's paused clock, against in-process services.

use http::{Request, Response, StatusCode};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stormwall::hedging::HedgingOptions as CoreHedging;
use stormwall_http::{HedgingLayer, HedgingOptions};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// Answers with the request's authority after a delay that depends on it; counts the
/// attempts that ran to completion and those cancelled.
fn endpoints(
    slow: Duration,
    finished: Arc<AtomicU32>,
) -> impl Service<Request<String>, Response = Response<String>, Error = std::io::Error, Future: Send>
       + Clone
       + Send
       + Sync
       + 'static {
    service_fn(move |request: Request<String>| {
        let finished = finished.clone();
        async move {
            let host = request.uri().host().unwrap_or("").to_owned();
            let delay = if host == "primary.test" {
                slow
            } else {
                Duration::from_millis(50)
            };
            tokio::time::sleep(delay).await;
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(format!("from {host}")))
        }
    })
}

/// Hedges to `backup.test` when `primary.test` has not answered in 200 ms.
fn primary_then_backup() -> HedgingLayer {
    HedgingLayer::new(HedgingOptions {
        hedging: CoreHedging::latency(Duration::from_millis(200)),
        endpoints: vec![
            "http://primary.test:80".into(),
            "http://backup.test:80".into(),
        ],
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_stalled_primary_is_hedged_to_the_alternate_endpoint_which_wins() {
    let finished = Arc::new(AtomicU32::new(0));
    let layer = primary_then_backup();
    let mut client = layer.layer(endpoints(Duration::from_secs(20), finished.clone()));
    let started = Instant::now();
    let request = Request::get("http://service.test/orders/7")
        .body(String::new())
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "from backup.test");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(250),
        "hedge after 200 ms + 50 ms"
    );
    // The stalled primary was cancelled: let its 20 s pass, it never finishes.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fast_primary_is_not_hedged() {
    let finished = Arc::new(AtomicU32::new(0));
    let layer = primary_then_backup();
    let mut client = layer.layer(endpoints(Duration::from_millis(10), finished.clone()));
    let request = Request::get("http://service.test/x")
        .body(String::new())
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.body(), "from primary.test");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(finished.load(Ordering::SeqCst), 1, "no hedge was sent");
}

#[test]
fn bad_endpoints_and_timeouts_name_the_field() {
    let e = HedgingLayer::new(HedgingOptions {
        endpoints: vec!["not a uri".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "endpoints[0]");
    let e = HedgingLayer::new(HedgingOptions {
        attempt_timeout: Duration::from_secs(60),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "attempt_timeout");
    let e = HedgingLayer::new(HedgingOptions {
        hedging: CoreHedging::default().max_hedged_attempts(0),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.field.starts_with("hedging."), "{e}");
}
