//! Stale-on-error over the in-memory cache, on a paused clock.

mod common;

use common::Recorder;
use std::time::Duration;
use stormwall::cache::{MemoryCache, StaleOnError, StaleOnErrorOptions};
use stormwall::pipeline::Strategy;
use stormwall::{Context, Error, Pipeline};
use tokio::time::advance;

fn cache() -> MemoryCache<u32> {
    MemoryCache::new(100, Duration::from_secs(3600))
}

async fn call<S: Strategy<u32, &'static str>>(
    p: &Pipeline<S>,
    key: Option<&'static str>,
    answer: Result<u32, &'static str>,
) -> Result<u32, Error<&'static str>> {
    let ctx = match key {
        Some(k) => Context::new().with_key(k),
        None => Context::new(),
    };
    p.execute_with(ctx, |_| async move { answer }).await
}

#[tokio::test(start_paused = true)]
async fn serves_the_last_good_value_for_the_key_when_the_call_fails() {
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .strategy(
            StaleOnError::new(cache(), StaleOnErrorOptions::new(Duration::from_secs(60))).unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(call(&p, Some("a"), Ok(1)).await, Ok(1));
    assert_eq!(call(&p, Some("b"), Ok(2)).await, Ok(2));
    assert_eq!(
        call(&p, Some("a"), Ok(3)).await,
        Ok(3),
        "a success refreshes the value"
    );
    advance(Duration::from_secs(30)).await;
    assert_eq!(call(&p, Some("a"), Err("down")).await, Ok(3));
    assert_eq!(call(&p, Some("b"), Err("down")).await, Ok(2));
    assert_eq!(recorder.count("served_stale"), 2);
}

#[tokio::test(start_paused = true)]
async fn values_older_than_max_staleness_are_not_served() {
    let p = Pipeline::builder()
        .strategy(
            StaleOnError::new(cache(), StaleOnErrorOptions::new(Duration::from_secs(60))).unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(call(&p, Some("a"), Ok(1)).await, Ok(1));
    advance(Duration::from_secs(61)).await;
    assert_eq!(
        call(&p, Some("a"), Err("down")).await,
        Err(Error::Inner("down"))
    );
}

#[tokio::test(start_paused = true)]
async fn calls_without_a_key_or_never_cached_pass_through() {
    let p = Pipeline::builder()
        .strategy(StaleOnError::new(cache(), StaleOnErrorOptions::default()).unwrap())
        .build()
        .unwrap();
    assert_eq!(call(&p, None, Ok(1)).await, Ok(1));
    assert_eq!(call(&p, None, Err("down")).await, Err(Error::Inner("down")));
    assert_eq!(
        call(&p, Some("never"), Err("down")).await,
        Err(Error::Inner("down"))
    );
}

#[tokio::test(start_paused = true)]
async fn the_predicate_decides_which_failures_get_a_stale_value() {
    let options = StaleOnErrorOptions::default()
        .handle(|r: &Result<u32, Error<&'static str>>| matches!(r, Err(Error::Inner("down"))));
    let p = Pipeline::builder()
        .strategy(StaleOnError::new(cache(), options).unwrap())
        .build()
        .unwrap();
    assert_eq!(call(&p, Some("a"), Ok(1)).await, Ok(1));
    assert_eq!(
        call(&p, Some("a"), Err("not found")).await,
        Err(Error::Inner("not found"))
    );
    assert_eq!(call(&p, Some("a"), Err("down")).await, Ok(1));
}

#[test]
fn zero_max_staleness_is_rejected() {
    let e = StaleOnError::new(cache(), StaleOnErrorOptions::new(Duration::ZERO)).unwrap_err();
    assert_eq!(e.field, "stale_on_error.max_staleness");
}
