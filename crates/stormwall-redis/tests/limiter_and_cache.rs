//! The Redis-shared rate limiter and cache, against a real redis-server.

mod common;

use common::RedisServer;
use std::time::{Duration, Instant};
use stormwall::cache::{StaleOnError, StaleOnErrorOptions, ValueCache};
use stormwall::rate_limit::RateLimitOptions;
use stormwall::{Context, Error, Pipeline};
use stormwall_redis::{RedisCache, RedisRateLimiter, RedisStoreError};

/// A command timeout no loaded test machine reaches while Redis is up.
const PATIENT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_quota_per_tenant() {
    let redis = RedisServer::start();
    // 10 a minute: no permit comes back while the test runs, however slowly it runs.
    let options = RateLimitOptions::per_minute(10);
    // A loaded machine can hold a Redis answer past the default 50 ms: the local limiter
    // would then decide, and grant from its own quota. This test is about the shared one.
    let a = RedisRateLimiter::with_command_timeout(&redis.url(), "api", options, PATIENT).unwrap();
    let b = RedisRateLimiter::with_command_timeout(&redis.url(), "api", options, PATIENT).unwrap();
    let mut granted = 0;
    for i in 0..20 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        if limiter.try_acquire(Some("tenant-7")).await.is_ok() {
            granted += 1;
        }
    }
    assert_eq!(granted, 10, "the burst of 10 is shared, not 10 each");
    let wait = a.try_acquire(Some("tenant-7")).await.unwrap_err();
    // At most one permit's interval (6 s), and most of it still to come.
    assert!(
        wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
        "{wait:?}"
    );
    // Another tenant has its own quota.
    assert!(b.try_acquire(Some("tenant-8")).await.is_ok());
    // As a pipeline strategy, keyed by the context.
    let pipeline = Pipeline::builder().strategy(a.clone()).build().unwrap();
    let outcome = pipeline
        .execute_with(Context::new().with_key("tenant-7"), |_| async {
            Ok::<_, ()>(1)
        })
        .await;
    assert!(
        matches!(outcome, Err(Error::RateLimited { .. })),
        "{outcome:?}"
    );
}

#[test]
fn a_zero_command_timeout_is_refused_naming_it() {
    let err = RedisRateLimiter::with_command_timeout(
        "redis://127.0.0.1:1",
        "api",
        RateLimitOptions::per_second(1),
        Duration::ZERO,
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("rate_limit.command_timeout"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_limiter_decides_locally_and_quickly() {
    let mut redis = RedisServer::start();
    // Patient while Redis is up, so the first acquire is Redis's even on a loaded machine
    // (a timed-out one would take a local permit); a stopped Redis refuses at once.
    let limiter = RedisRateLimiter::with_command_timeout(
        &redis.url(),
        "down",
        RateLimitOptions::per_minute(5),
        PATIENT,
    )
    .unwrap();
    assert!(limiter.try_acquire(None).await.is_ok());
    redis.stop();
    let started = Instant::now();
    let mut granted = 0;
    for _ in 0..10 {
        if limiter.try_acquire(None).await.is_ok() {
            granted += 1;
        }
    }
    assert_eq!(granted, 5, "the local limiter's own burst");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_shared_and_serves_stale_values_when_the_call_fails() {
    let redis = RedisServer::start();
    let writer: RedisCache<Vec<u32>> = RedisCache::new(
        &redis.url(),
        "prices",
        Duration::from_secs(60),
        Duration::from_millis(50),
    )
    .unwrap();
    let reader: RedisCache<Vec<u32>> = RedisCache::new(
        &redis.url(),
        "prices",
        Duration::from_secs(60),
        Duration::from_millis(50),
    )
    .unwrap();
    writer.put("sku-1", vec![12, 99]).await;
    let started = Instant::now();
    let cached = loop {
        if let Some(cached) = reader.get("sku-1").await {
            break cached;
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(cached.value, vec![12, 99]);
    assert!(cached.age < Duration::from_secs(1));

    let pipeline = Pipeline::builder()
        .strategy(
            StaleOnError::new(reader, StaleOnErrorOptions::new(Duration::from_secs(30))).unwrap(),
        )
        .build()
        .unwrap();
    let outcome = pipeline
        .execute_with(Context::new().with_key("sku-1"), |_| async {
            Err::<Vec<u32>, _>("catalogue down")
        })
        .await;
    assert_eq!(outcome, Ok(vec![12, 99]));
    // Foreign data under the key: no value, no panic.
    redis.cli(&["SET", "stormwall:cache:prices:sku-2", "garbage"]);
    assert!(writer.get("sku-2").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cache_answers_nothing_within_its_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache: RedisCache<u32> = RedisCache::new(
        &format!("redis://127.0.0.1:{port}"),
        "nowhere",
        Duration::from_secs(60),
        Duration::from_millis(50),
    )
    .unwrap();
    let started = Instant::now();
    assert!(cache.get("k").await.is_none());
    cache.put("k", 1).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    let e = RedisCache::<u32>::new(
        "redis://127.0.0.1:1",
        "x",
        Duration::ZERO,
        Duration::from_millis(50),
    )
    .unwrap_err();
    assert!(matches!(e, RedisStoreError::Config(_)), "{e}");
}
