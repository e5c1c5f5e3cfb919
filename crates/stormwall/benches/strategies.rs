//! Criterion benchmarks: every strategy's success path, the composite, the open breaker,
//! two threads on one breaker, and the peers (tower-resilience, recloser, failsafe, tower)
//! measured in the same run. Policies are built outside the timed loops.
//!
//! Run with `cargo bench -p stormwall`.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use criterion::measurement::WallTime;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall::clock::Clock;
use stormwall::fallback::FallbackOptions;
use stormwall::pipeline::Strategy;
use stormwall::retry::RetryOptions;
use stormwall::Pipeline;
use tokio::runtime::Runtime;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A current-thread runtime with the timer, as an async caller would have.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Times `iters` runs of `$body` (an expression that may `.await`) inside one `block_on`.
macro_rules! timed {
    ($b:expr, $rt:expr, $body:expr) => {
        $b.iter_custom(|iters| {
            $rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let _ = black_box($body);
                }
                start.elapsed()
            })
        })
    };
}

#[inline(never)]
async fn op() -> Result<u64, std::io::Error> {
    Ok(black_box(1))
}

/// Benchmarks one execution of the bare operation through `pipeline`.
fn bench_pipeline<S: Strategy<u64, std::io::Error>>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    pipeline: Pipeline<S>,
) {
    g.bench_function(name, |b| timed!(b, rt, pipeline.execute(|_| op()).await));
}

fn breaker_options() -> CircuitBreakerOptions {
    CircuitBreakerOptions::new()
        .failure_ratio(0.5)
        .minimum_throughput(10)
        .sampling_duration(Duration::from_secs(10))
}

fn success_paths(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("success");

    g.bench_function("bare call", |b| timed!(b, rt, op().await));

    bench_pipeline(
        &mut g,
        &rt,
        "stormwall empty pipeline",
        Pipeline::builder().build().unwrap(),
    );

    bench_pipeline(
        &mut g,
        &rt,
        "stormwall breaker (time window)",
        Pipeline::builder()
            .circuit_breaker(breaker_options())
            .build()
            .unwrap(),
    );
    bench_pipeline(
        &mut g,
        &rt,
        "stormwall breaker (time window, tokio clock)",
        Pipeline::builder()
            .circuit_breaker(breaker_options().clock(Clock::Tokio))
            .build()
            .unwrap(),
    );
    bench_pipeline(
        &mut g,
        &rt,
        "stormwall breaker (time window, fast clock)",
        Pipeline::builder()
            .circuit_breaker(breaker_options().clock(stormwall::clock::Clock::Fast))
            .build()
            .unwrap(),
    );
    bench_pipeline(
        &mut g,
        &rt,
        "stormwall breaker (count window)",
        Pipeline::builder()
            .circuit_breaker(breaker_options().count_window(100))
            .build()
            .unwrap(),
    );
    bench_pipeline(
        &mut g,
        &rt,
        "stormwall breaker (consecutive)",
        Pipeline::builder()
            .circuit_breaker(CircuitBreakerOptions::consecutive(5))
            .build()
            .unwrap(),
    );
    bench_pipeline(
        &mut g,
        &rt,
        "stormwall retry",
        Pipeline::builder()
            .retry(RetryOptions::exponential(Duration::from_millis(200)))
            .build()
            .unwrap(),
    );
    bench_pipeline(
        &mut g,
        &rt,
        "stormwall timeout",
        Pipeline::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    bench_pipeline(
        &mut g,
        &rt,
        "stormwall fallback",
        Pipeline::builder()
            .fallback(FallbackOptions::value(0))
            .build()
            .unwrap(),
    );

    bench_pipeline(
        &mut g,
        &rt,
        "stormwall bulkhead",
        Pipeline::builder()
            .bulkhead(stormwall::bulkhead::BulkheadOptions::new(100))
            .build()
            .unwrap(),
    );

    bench_pipeline(
        &mut g,
        &rt,
        "stormwall rate limiter",
        Pipeline::builder()
            .rate_limit(stormwall::rate_limit::RateLimitOptions::per_second(
                u32::MAX,
            ))
            .build()
            .unwrap(),
    );

    bench_pipeline(
        &mut g,
        &rt,
        "stormwall hedging (primary answers)",
        Pipeline::builder()
            .hedging(stormwall::hedging::HedgingOptions::latency(
                Duration::from_secs(2),
            ))
            .build()
            .unwrap(),
    );

    // Peers.
    let mut svc = ServiceBuilder::new()
        .concurrency_limit(100)
        .service(tower::service_fn(|_: ()| op()));
    g.bench_function("tower ConcurrencyLimit", |b| {
        timed!(b, rt, svc.ready().await.unwrap().call(()).await)
    });
    let mut svc = ServiceBuilder::new()
        .layer(
            tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(100)
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(|_: ()| op()));
    g.bench_function("tower-resilience bulkhead", |b| {
        timed!(b, rt, svc.ready().await.unwrap().call(()).await)
    });
    let recloser = recloser::AsyncRecloser::from(recloser::Recloser::custom().build());
    g.bench_function("recloser breaker", |b| {
        timed!(b, rt, recloser.call(op()).await)
    });
    let failsafe = failsafe::Config::new().build();
    g.bench_function("failsafe breaker", |b| {
        timed!(
            b,
            rt,
            failsafe::futures::CircuitBreaker::call(&failsafe, op()).await
        )
    });
    let mut svc = ServiceBuilder::new()
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(|_: ()| op()));
    g.bench_function("tower-resilience breaker", |b| {
        timed!(b, rt, svc.ready().await.unwrap().call(()).await)
    });
    let mut svc = ServiceBuilder::new()
        .layer(
            tower_resilience::retry::RetryLayer::<(), u64, std::io::Error>::builder()
                .max_attempts(4)
                .exponential_backoff(Duration::from_millis(200))
                .build(),
        )
        .service(tower::service_fn(|_: ()| op()));
    g.bench_function("tower-resilience retry", |b| {
        timed!(b, rt, svc.ready().await.unwrap().call(()).await)
    });
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(10))
        .service(tower::service_fn(|_: ()| op()));
    g.bench_function("tower timeout", |b| {
        timed!(b, rt, svc.ready().await.unwrap().call(()).await)
    });
    g.finish();
}

fn rate_limit_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate limiter check (sync)");
    let limiter = stormwall::rate_limit::RateLimiter::new(
        stormwall::rate_limit::RateLimitOptions::per_second(u32::MAX),
    )
    .unwrap();
    g.bench_function("stormwall GCRA try_acquire (default clock)", |b| {
        b.iter(|| black_box(limiter.try_acquire()))
    });
    let tokio_clock = stormwall::rate_limit::RateLimiter::new(
        stormwall::rate_limit::RateLimitOptions::per_second(u32::MAX).clock(Clock::Tokio),
    )
    .unwrap();
    g.bench_function("stormwall GCRA try_acquire (tokio clock)", |b| {
        b.iter(|| black_box(tokio_clock.try_acquire()))
    });
    let fast = stormwall::rate_limit::RateLimiter::new(
        stormwall::rate_limit::RateLimitOptions::per_second(u32::MAX)
            .clock(stormwall::clock::Clock::Fast),
    )
    .unwrap();
    g.bench_function("stormwall GCRA try_acquire (fast clock)", |b| {
        b.iter(|| black_box(fast.try_acquire()))
    });
    let quota = governor::Quota::per_second(std::num::NonZeroU32::MAX);
    let governor = governor::RateLimiter::direct(quota);
    g.bench_function("governor direct check", |b| {
        b.iter(|| black_box(governor.check()))
    });
    // Like for like with the tokio clock (`clock_gettime`): governor on std's `Instant`.
    let governor_std =
        governor::RateLimiter::direct_with_clock(quota, governor::clock::MonotonicClock);
    g.bench_function("governor direct check (std clock)", |b| {
        b.iter(|| black_box(governor_std.check()))
    });
    g.finish();
}

/// The composite the goals name: fallback → total timeout → retry → breaker → attempt
/// timeout; with the metrics listener when `metrics`; breaker window and pipeline timing on
/// `clock`.
fn composite_pipeline(metrics: bool, clock: Clock) -> Pipeline<impl Strategy<u64, std::io::Error>> {
    let listener: Option<Arc<dyn stormwall::telemetry::EventListener>> =
        metrics.then(|| Arc::new(stormwall::telemetry::MetricsListener::new()) as _);
    composite_with(listener, clock)
}

/// A listener that ignores every event: what observing costs the pipeline itself.
struct Ignore;

impl stormwall::telemetry::EventListener for Ignore {
    fn on_event(
        &self,
        _: &stormwall::telemetry::EventSource<'_>,
        event: &stormwall::telemetry::Event,
    ) {
        black_box(event);
    }
}

fn composite_with(
    listener: Option<Arc<dyn stormwall::telemetry::EventListener>>,
    clock: Clock,
) -> Pipeline<impl Strategy<u64, std::io::Error>> {
    let mut builder = Pipeline::builder().clock(clock);
    if let Some(listener) = listener {
        builder = builder.listener(listener);
    }
    builder
        .fallback(FallbackOptions::value(0))
        .timeout(Duration::from_secs(30))
        .retry(RetryOptions::exponential(Duration::from_millis(200)).max_retries(3))
        .circuit_breaker(breaker_options().clock(clock))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn composite(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("composite");
    let variants = [
        (
            "stormwall total timeout > retry > breaker > attempt timeout > fallback",
            false,
            Clock::Auto,
        ),
        // With the metrics listener attached (to the `metrics` no-op recorder: the cost
        // measured is stormwall's, not an exporter's).
        (
            "stormwall composite with the metrics listener",
            true,
            Clock::Auto,
        ),
        ("stormwall composite, tokio clock", false, Clock::Tokio),
        (
            "stormwall composite with the metrics listener, tokio clock",
            true,
            Clock::Tokio,
        ),
        // The pair on the fast clock (breaker window and pipeline timing): the listener's
        // overhead without the cost of `clock_gettime`.
        ("stormwall composite, fast clock", false, Clock::Fast),
        (
            "stormwall composite with the metrics listener, fast clock",
            true,
            Clock::Fast,
        ),
    ];
    for (name, metrics, clock) in variants {
        bench_pipeline(&mut g, &rt, name, composite_pipeline(metrics, clock));
    }
    bench_pipeline(
        &mut g,
        &rt,
        "stormwall composite with a listener that ignores events",
        composite_with(Some(Arc::new(Ignore)), Clock::Auto),
    );
    let mut svc = ServiceBuilder::new()
        .layer(
            tower_resilience::retry::RetryLayer::<
                (),
                u64,
                tower_resilience::circuitbreaker::CircuitBreakerError<
                    tower_resilience::timelimiter::TimeLimiterError<std::io::Error>,
                >,
            >::builder()
            .max_attempts(4)
            .exponential_backoff(Duration::from_millis(200))
            .build(),
        )
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .build()
                .unwrap(),
        )
        .layer(tower_resilience::timelimiter::TimeLimiterLayer::standard().build())
        .service(tower::service_fn(|_: ()| op()));
    g.bench_function("tower-resilience retry > breaker > time limiter", |b| {
        timed!(b, rt, svc.ready().await.unwrap().call(()).await)
    });
    g.finish();
}

fn open_rejection(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("open");
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::consecutive(1).break_duration(Duration::from_secs(86_400)),
    )
    .unwrap();
    breaker.isolate();
    let isolated = Pipeline::builder()
        .circuit_breaker(breaker)
        .build()
        .unwrap();
    g.bench_function("stormwall isolated rejection", |b| {
        timed!(b, rt, isolated.execute(|_| op()).await.is_err())
    });
    for (name, clock) in [
        ("stormwall open rejection", Clock::Auto),
        ("stormwall open rejection (tokio clock)", Clock::Tokio),
    ] {
        let breaker = CircuitBreaker::new(
            CircuitBreakerOptions::consecutive(1)
                .break_duration(Duration::from_secs(86_400))
                .clock(clock),
        )
        .unwrap();
        breaker.try_acquire().unwrap().record_failure();
        let open = Pipeline::builder()
            .circuit_breaker(breaker)
            .build()
            .unwrap();
        g.bench_function(name, |b| {
            timed!(b, rt, open.execute(|_| op()).await.is_err())
        });
    }
    let recloser = recloser::AsyncRecloser::from(
        recloser::Recloser::custom()
            .closed_len(1)
            .open_wait(Duration::from_secs(86_400))
            .build(),
    );
    rt.block_on(async {
        for _ in 0..3 {
            let _ = recloser.call(async { Err::<(), _>(()) }).await;
        }
    });
    g.bench_function("recloser open rejection", |b| {
        timed!(b, rt, recloser.call(op()).await.is_err())
    });
    g.finish();
}

/// Runs `per_thread` on two threads at once, `iters` times each; returns the wall time.
fn two_threads(iters: u64, per_thread: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                barrier.wait();
                for _ in 0..iters {
                    per_thread();
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("two threads, one breaker");
    for (name, options) in [
        ("stormwall (time window)", breaker_options()),
        (
            "stormwall (time window, tokio clock)",
            breaker_options().clock(Clock::Tokio),
        ),
        (
            "stormwall (time window, fast clock)",
            breaker_options().clock(stormwall::clock::Clock::Fast),
        ),
        (
            "stormwall (count window)",
            breaker_options().count_window(100),
        ),
        (
            "stormwall (consecutive)",
            CircuitBreakerOptions::consecutive(5),
        ),
    ] {
        let breaker = Arc::new(CircuitBreaker::new(options).unwrap());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                two_threads(iters, || breaker.try_acquire().unwrap().record_success())
            })
        });
    }
    let recloser = recloser::Recloser::custom().build();
    g.bench_function("recloser", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let _ = black_box(recloser.call(|| Ok::<_, ()>(1)));
            })
        })
    });
    let failsafe = failsafe::Config::new().build();
    g.bench_function("failsafe", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let _ = black_box(failsafe::CircuitBreaker::call(&failsafe, || Ok::<_, ()>(1)));
            })
        })
    });
    g.finish();
}

/// What one reading of each clock costs here: the floor under every row that reads one.
fn clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock reading");
    let counter = quanta::Clock::new();
    g.bench_function("CPU counter (quanta raw, rdtsc)", |b| {
        b.iter(|| black_box(counter.raw()))
    });
    g.bench_function("std Instant::now (clock_gettime)", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = success_paths, rate_limit_check, composite, open_rejection, contention, clocks
}
criterion_main!(benches);
