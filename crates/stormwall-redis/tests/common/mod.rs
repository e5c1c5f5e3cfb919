//! A real `redis-server` on a free loopback port, stopped when dropped.
#![allow(dead_code, unused_imports)]

pub use stormwall_testkit::{free_port, RedisServer};

/// `n` replicas of the breaker `name`: separate stores and connections, same options.
pub async fn replicas(
    redis: &RedisServer,
    name: &str,
    options: &stormwall::circuit_breaker::CircuitBreakerOptions,
    n: usize,
) -> Vec<
    stormwall::circuit_breaker::CircuitBreaker<
        stormwall::pipeline::OnError,
        stormwall_redis::RedisStateStore,
    >,
> {
    let mut breakers = Vec::new();
    for _ in 0..n {
        let store = stormwall_redis::RedisStateStore::connect(
            &redis.url(),
            name,
            options,
            stormwall_redis::RedisStoreOptions::default(),
        )
        .await
        .unwrap();
        assert!(store.is_connected());
        breakers.push(
            stormwall::circuit_breaker::CircuitBreaker::with_store(options.clone(), store).unwrap(),
        );
    }
    breakers
}

/// The sum of the counts of `kind` (`t` calls, `f` failures, `s` slow calls) in the shared
/// time window of breaker `name`.
pub fn window_sum(redis: &RedisServer, name: &str, kind: char) -> u64 {
    let all = redis.cli(&["HGETALL", &format!("stormwall:{{{name}}}:window")]);
    let lines: Vec<&str> = all.lines().collect();
    let suffix = format!(":{kind}");
    lines
        .chunks(2)
        .filter(|pair| pair[0].ends_with(&suffix))
        .map(|pair| pair.get(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0))
        .sum()
}

/// Waits (up to 10 s, polling) until `done`; how long it took.
pub async fn eventually(mut done: impl FnMut() -> bool) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "timed out"
        );
        tokio::time::sleep(std::time::Duration::from_micros(500)).await;
    }
    started.elapsed()
}
