//! Every strategy's options over their whole range — 0, 1 ns, the validators' maxima,
//! `Duration::MAX`, `u32::MAX` counts, NaN ratios — through real pipelines on tokio's
//! paused clock: `build()` refuses a value with an error naming the field and the value,
//! or the pipeline runs (an answer or a typed error), and nothing panics.

use proptest::prelude::*;
use std::future::Future;
use std::time::Duration;
use stormwall::bulkhead::{BulkheadOptions, KeyedBulkhead};
#[cfg(feature = "cache")]
use stormwall::cache::{MemoryCache, StaleOnError, StaleOnErrorOptions};
use stormwall::chaos::{Chaos, ChaosOptions, Latency};
use stormwall::circuit_breaker::{CircuitBreakerOptions, SamplingWindow, SlowCallOptions};
use stormwall::hedging::{HedgingMode, HedgingOptions};
use stormwall::pipeline::{Context, Strategy as Stage};
use stormwall::rate_limit::{KeyedRateLimiter, RateLimitAlgorithm, RateLimitOptions};
use stormwall::retry::{
    AdaptiveThrottleOptions, Backoff, Jitter, RetryBudget, RetryBudgetOptions, RetryOptions,
};
use stormwall::{ConfigError, Error, Pipeline, PipelineBuilder};

const DAY: Duration = Duration::from_secs(86_400);

/// Durations at and around every boundary a validator or the clock arithmetic has.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_millis(1)),
        Just(Duration::from_millis(10)),
        Just(Duration::from_secs(1)),
        Just(DAY),
        Just(DAY + Duration::from_nanos(1)),
        Just(Duration::from_secs(u64::MAX / 2)),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_nanos),
        any::<u32>().prop_map(|s| Duration::from_secs(u64::from(s))),
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(2),
        Just(10),
        Just(30_000),
        Just(30_001),
        Just(1_000_000),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn ratio() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-1.0),
        Just(f64::MIN_POSITIVE),
        Just(0.5),
        Just(1.0),
        Just(1.0 + f64::EPSILON),
        Just(10.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        any::<f64>(),
    ]
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        Just(Jitter::DecorrelatedV2),
    ]
}

fn backoff() -> impl Strategy<Value = Backoff> {
    prop_oneof![
        Just(Backoff::Constant),
        Just(Backoff::Linear),
        Just(Backoff::Exponential),
    ]
}

/// A refusal names the field and the value in its message.
fn check_refusal(e: &ConfigError) {
    assert!(!e.field.is_empty(), "{e:?}");
    assert!(!e.value.is_empty(), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains(&e.field) && message.contains(&e.value),
        "{message}"
    );
}

/// Builds `builder`; refused: the error must name what was wrong; built: runs calls that
/// succeed, fail twice then succeed, take a second, and carry a key — on a paused clock.
fn build_and_run<S>(builder: PipelineBuilder<S>)
where
    S: Stage<u32, &'static str>,
{
    match builder.build() {
        Err(e) => check_refusal(&e),
        Ok(pipeline) => run(&pipeline),
    }
}

fn run<S: Stage<u32, &'static str>>(pipeline: &Pipeline<S>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..3 {
            let _ = pipeline.execute(|_| async { Ok(round) }).await;
            let _ = pipeline
                .execute(|ctx| async move {
                    if ctx.attempt() < 2 {
                        Err("transient")
                    } else {
                        Ok(1)
                    }
                })
                .await;
            let _ = pipeline
                .execute(|_| async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(2)
                })
                .await;
            let _ = pipeline
                .execute_with(Context::new().with_key("tenant"), |ctx| async move {
                    if ctx.attempt() == 0 {
                        Err("once")
                    } else {
                        Ok(3)
                    }
                })
                .await;
            // Fails five attempts in a row (bounded, so an unbounded retry ends too).
            let _ = pipeline
                .execute(|ctx| async move {
                    if ctx.attempt() < 5 {
                        Err("down")
                    } else {
                        Ok(4)
                    }
                })
                .await;
        }
    });
}

/// A delay generator answering `delay` for every outcome (a `Retry-After` of any size).
fn generating(
    delay: Option<Duration>,
) -> impl Fn(&Result<u32, Error<&'static str>>, u32) -> Option<Duration> + Send + Sync + Copy {
    move |_, _| delay
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn retry_inside_a_timeout_never_panics(
        max_retries in count(),
        backoff in backoff(),
        jitter in jitter(),
        delay in duration(),
        max_delay in proptest::option::of(duration()),
        generated in proptest::option::of(duration()),
        timeout in duration(),
    ) {
        let options = RetryOptions {
            max_retries,
            backoff,
            jitter,
            delay,
            max_delay,
            ..RetryOptions::default()
        }
        .delay_generator(generating(generated));
        build_and_run(Pipeline::builder().timeout(timeout).retry(options.clone()));
        // And without a deadline: the delays are slept in full (on the paused clock).
        build_and_run(Pipeline::builder().retry(options));
    }

    #[test]
    fn retry_budget_and_adaptive_throttle_never_panic(
        ttl in duration(),
        min_retries_per_second in count(),
        percent_can_retry in ratio(),
        k in ratio(),
        window in duration(),
    ) {
        let budget = RetryBudget::new(RetryBudgetOptions {
            ttl,
            min_retries_per_second,
            percent_can_retry,
            ..RetryBudgetOptions::default()
        });
        match budget {
            Err(e) => check_refusal(&e),
            Ok(budget) => build_and_run(
                Pipeline::builder().retry(
                    RetryOptions::constant(Duration::from_millis(1)).max_retries(3).budget(budget),
                ),
            ),
        }
        build_and_run(Pipeline::builder().strategy(AdaptiveThrottleOptions {
            k,
            window,
            ..AdaptiveThrottleOptions::default()
        }));
    }

    #[test]
    fn timeout_never_panics(timeout in duration(), inner in duration()) {
        build_and_run(Pipeline::builder().timeout(timeout).timeout(inner));
    }

    #[test]
    fn circuit_breaker_never_panics(
        failure_ratio in proptest::option::of(ratio()),
        minimum_throughput in count(),
        sampling_duration in duration(),
        count_window in proptest::option::of(count()),
        consecutive_failures in proptest::option::of(count()),
        slow in proptest::option::of((duration(), ratio())),
        break_duration in duration(),
        generated_break in proptest::option::of(duration()),
        permitted_calls_in_half_open in count(),
        success_threshold in count(),
    ) {
        let mut options = CircuitBreakerOptions {
            failure_ratio,
            minimum_throughput,
            sampling_duration,
            sampling_window: count_window.map_or(SamplingWindow::Time, SamplingWindow::Count),
            consecutive_failures,
            slow_call: slow.map(|(duration_threshold, ratio)| SlowCallOptions { duration_threshold, ratio }),
            break_duration,
            permitted_calls_in_half_open,
            success_threshold,
            ..CircuitBreakerOptions::default()
        };
        if let Some(generated) = generated_break {
            options = options.break_duration_generator(move |_| generated);
        }
        build_and_run(Pipeline::builder().circuit_breaker(options));
    }

    #[test]
    fn bulkhead_and_keyed_bulkhead_never_panic(
        max_concurrency in count(),
        queue_limit in count(),
        queue_timeout in proptest::option::of(duration()),
        max_keys in prop_oneof![Just(0usize), Just(1), Just(usize::MAX)],
    ) {
        let options = BulkheadOptions { max_concurrency, queue_limit, queue_timeout };
        build_and_run(Pipeline::builder().bulkhead(options));
        match KeyedBulkhead::new(options, max_keys) {
            Err(e) => check_refusal(&e),
            Ok(keyed) => build_and_run(Pipeline::builder().bulkhead(keyed)),
        }
    }

    #[test]
    fn rate_limiters_never_panic(
        permits in count(),
        period in duration(),
        burst in count(),
        algorithm in prop_oneof![
            Just(RateLimitAlgorithm::Gcra),
            Just(RateLimitAlgorithm::TokenBucket),
            Just(RateLimitAlgorithm::FixedWindow),
            count().prop_map(|segments| RateLimitAlgorithm::SlidingWindow { segments }),
        ],
        max_keys in prop_oneof![Just(0usize), Just(1), Just(usize::MAX)],
    ) {
        let options = RateLimitOptions { permits, period, burst: Some(burst), algorithm, ..RateLimitOptions::default() };
        build_and_run(Pipeline::builder().rate_limit(options));
        match KeyedRateLimiter::new(options, max_keys) {
            Err(e) => check_refusal(&e),
            Ok(keyed) => build_and_run(Pipeline::builder().rate_limit(keyed)),
        }
    }

    #[test]
    fn hedging_never_panics(
        max_hedged_attempts in count(),
        mode in prop_oneof![
            duration().prop_map(HedgingMode::Latency),
            Just(HedgingMode::Parallel),
            Just(HedgingMode::Fallback),
        ],
    ) {
        build_and_run(Pipeline::builder().hedging(HedgingOptions {
            max_hedged_attempts,
            mode,
            ..HedgingOptions::default()
        }));
    }

    #[test]
    fn chaos_and_stale_on_error_never_panic(
        injection_rate in ratio(),
        latency in duration(),
        max_staleness in duration(),
        time_to_live in duration(),
        max_entries in prop_oneof![Just(0u64), Just(1), Just(u64::MAX)],
    ) {
        match Chaos::new(ChaosOptions::rate(injection_rate).seed(1), Latency(latency)) {
            Err(e) => check_refusal(&e),
            Ok(chaos) => build_and_run(Pipeline::builder().strategy(chaos)),
        }
        #[cfg(feature = "cache")]
        {
            let cache = block_on(async { MemoryCache::new(max_entries, time_to_live) });
            match StaleOnError::new(cache, StaleOnErrorOptions::new(max_staleness)) {
                Err(e) => check_refusal(&e),
                Ok(stale) => build_and_run(Pipeline::builder().strategy(stale)),
            }
        }
        #[cfg(not(feature = "cache"))]
        let _ = (max_staleness, time_to_live, max_entries);
    }
}

#[test]
fn the_reported_panics_are_gone() {
    // HedgingOptions::latency(Duration::MAX) used to pass validation, then overflow
    // `Instant`; now it is refused by name.
    let refused = Pipeline::builder()
        .hedging(HedgingOptions::latency(Duration::MAX))
        .build()
        .unwrap_err();
    assert_eq!(refused.field, "hedging.delay");
    // A delay generator answering Duration::MAX inside a timeout: the retry gives up at
    // once with the real outcome instead of computing `now + Duration::MAX`.
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_secs(10))
        .retry(RetryOptions::default().delay_generator(generating(Some(Duration::MAX))))
        .build()
        .unwrap();
    let outcome = block_on(pipeline.execute(|_| async { Err::<u32, _>("down") }));
    assert_eq!(outcome, Err(Error::Inner("down")));
}
