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
