//! `KeyedCircuitBreaker`: a breaker per key, bounded in keys, least recently used closed
//! breakers forgotten first, open ones never; and its tower layer.

mod common;

use common::Recorder;
use std::time::Duration;
use stormwall::circuit_breaker::{
    CircuitBreakerOptions, CircuitState, KeyedCircuitBreaker, KeyedCircuitBreakerLayer,
};
use stormwall::{Context, Error, Pipeline};
use tower_layer::Layer;
use tower_service::Service;

fn breakers(max_keys: usize) -> KeyedCircuitBreaker {
    KeyedCircuitBreaker::new(
        CircuitBreakerOptions::consecutive(2).break_duration(Duration::from_secs(30)),
        max_keys,
    )
    .unwrap()
}

async fn call(
    pipeline: &Pipeline<impl stormwall::pipeline::Strategy<(), &'static str>>,
    key: &str,
    ok: bool,
) -> Result<(), Error<&'static str>> {
    pipeline
        .execute_with(Context::new().with_key(key), |_| async move {
            if ok {
                Ok(())
            } else {
                Err("down")
            }
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn one_keys_failures_open_only_its_own_circuit() {
    let keyed = breakers(100);
    let p = Pipeline::builder().strategy(keyed.clone()).build().unwrap();
    for _ in 0..2 {
        let _ = call(&p, "a", false).await;
    }
    assert_eq!(keyed.state("a"), Some(CircuitState::Open));
    assert!(matches!(
        call(&p, "a", true).await,
        Err(Error::CircuitOpen {
            retry_after: Some(_)
        })
    ));
    assert_eq!(call(&p, "b", true).await, Ok(()));
    assert_eq!(keyed.state("b"), Some(CircuitState::Closed));
    // Without a key: the default breaker, untouched by a's failures.
    assert_eq!(p.execute(|_| async { Ok::<_, &str>(()) }).await, Ok(()));
    assert_eq!(keyed.default_breaker().state(), CircuitState::Closed);
    // a's break ends like any breaker's.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(call(&p, "a", true).await, Ok(()));
    assert_eq!(keyed.state("a"), Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn the_least_recently_used_closed_breaker_makes_room() {
    let keyed = breakers(2);
    let p = Pipeline::builder().strategy(keyed.clone()).build().unwrap();
    call(&p, "a", true).await.unwrap();
    call(&p, "b", true).await.unwrap();
    call(&p, "a", true).await.unwrap(); // b is now the least recently used
    call(&p, "c", true).await.unwrap();
    assert_eq!(keyed.keys(), 2);
    assert_eq!(keyed.state("b"), None, "b was forgotten");
    assert_eq!(keyed.state("a"), Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn open_breakers_are_never_forgotten_and_overflow_goes_to_the_default() {
    let keyed = breakers(2);
    let p = Pipeline::builder().strategy(keyed.clone()).build().unwrap();
    for key in ["a", "b"] {
        for _ in 0..2 {
            let _ = call(&p, key, false).await;
        }
    }
    // Both open: c cannot take a place, and runs through the default breaker.
    assert_eq!(call(&p, "c", true).await, Ok(()));
    assert_eq!(keyed.keys(), 2);
    assert_eq!(keyed.state("a"), Some(CircuitState::Open));
    assert_eq!(keyed.state("b"), Some(CircuitState::Open));
    assert_eq!(keyed.state("c"), None);
    // Once a closes again, it can be forgotten for a new key.
    tokio::time::advance(Duration::from_secs(30)).await;
    call(&p, "a", true).await.unwrap();
    call(&p, "d", true).await.unwrap();
    assert_eq!(keyed.state("a"), None);
    assert_eq!(keyed.state("d"), Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn per_key_transitions_reach_the_pipelines_listener() {
    let recorder = Recorder::new();
    let keyed = breakers(10);
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .strategy(keyed)
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = call(&p, "a", false).await;
    }
    let _ = call(&p, "a", true).await;
    assert_eq!(recorder.count("circuit_transition"), 1);
    assert_eq!(recorder.count("circuit_rejected"), 1);
}

#[test]
fn max_keys_of_zero_is_refused_by_name() {
    let e = KeyedCircuitBreaker::new(CircuitBreakerOptions::new(), 0).unwrap_err();
    assert_eq!(e.field, "circuit_breaker.max_keys");
    let e =
        KeyedCircuitBreaker::new(CircuitBreakerOptions::new().failure_ratio(2.0), 10).unwrap_err();
    assert_eq!(e.field, "circuit_breaker.failure_ratio");
}

#[tokio::test(start_paused = true)]
async fn the_layer_keys_each_request() {
    let keyed = breakers(10);
    // The request is (tenant, succeed?); the key is the tenant.
    let layer = KeyedCircuitBreakerLayer::new(keyed.clone(), |req: &(&'static str, bool)| {
        Some(req.0.to_owned())
    });
    let mut service = layer.layer(tower::service_fn(|req: (&'static str, bool)| async move {
        if req.1 {
            Ok(req.0)
        } else {
            Err("down")
        }
    }));
    for _ in 0..2 {
        assert_eq!(service.call(("a", false)).await, Err(Error::Inner("down")));
    }
    assert!(matches!(
        service.call(("a", true)).await,
        Err(Error::CircuitOpen { .. })
    ));
    assert_eq!(service.call(("b", true)).await, Ok("b"));
    assert_eq!(keyed.state("a"), Some(CircuitState::Open));
}
