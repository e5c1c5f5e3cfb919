//! The success path with the Redis store against the local store, in one run (goal ≤ 1.2×),
//! and the Redis commands a success-only loop issues (goal 0, from `INFO commandstats`).
#![allow(missing_docs)] // criterion_group! generates an undocumented function

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall_redis::{RedisStateStore, RedisStoreOptions};

fn commands_processed(redis: &common::RedisServer) -> u64 {
    redis
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn success_path(c: &mut Criterion) {
    let redis = common::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("breaker success path");
    for (label, options) in [
        (
            "consecutive failures",
            CircuitBreakerOptions::new().consecutive_failures(5),
        ),
        (
            "failure ratio, time window",
            CircuitBreakerOptions::new()
                .failure_ratio(0.5)
                .minimum_throughput(10)
                .sampling_duration(Duration::from_secs(10)),
        ),
    ] {
        let local = CircuitBreaker::new(options.clone()).unwrap();
        let store = rt
            .block_on(RedisStateStore::connect(
                &redis.url(),
                label,
                &options,
                RedisStoreOptions::default(),
            ))
            .unwrap();
        let shared = CircuitBreaker::with_store(options, store).unwrap();
        g.bench_function(format!("local store, {label}"), |b| {
            b.iter(|| black_box(local.try_acquire()).map(|p| p.record_success()))
        });
        g.bench_function(format!("Redis store, {label}"), |b| {
            b.iter(|| black_box(shared.try_acquire()).map(|p| p.record_success()))
        });
        // Commands a fixed loop issues: the flushes (one script per 100 ms), none per call.
        let before = commands_processed(&redis);
        let started = std::time::Instant::now();
        for _ in 0..1_000_000 {
            let _ = black_box(shared.try_acquire()).map(|p| p.record_success());
        }
        let elapsed = started.elapsed();
        // `INFO` itself is one command.
        let issued = commands_processed(&redis) - before - 1;
        println!(
            "Redis commands during 1,000,000 successes in {elapsed:?} ({label}): {issued} \
             (flushes every 100 ms; {:.6} per call)",
            issued as f64 / 1e6
        );
    }
    g.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
