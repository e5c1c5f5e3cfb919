//! Retry: every option, on a paused clock.

mod common;

use common::Recorder;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use stormwall::retry::{Backoff, Jitter, RetryOptions, RetryScheduled};
use stormwall::telemetry::Event;
use stormwall::{Error, Pipeline};
use tokio::time::Instant;

/// Runs an operation that fails `failures` times, recording when each attempt started.
async fn run<S: stormwall::pipeline::Strategy<u32, &'static str>>(
    pipeline: &Pipeline<S>,
    failures: u32,
) -> (Result<u32, Error<&'static str>>, Vec<Duration>) {
    let start = Instant::now();
    let starts = Mutex::new(vec![]);
    let outcome = pipeline
        .execute(|ctx| {
            starts.lock().unwrap().push(start.elapsed());
            let attempt = ctx.attempt();
            async move {
                if attempt < failures {
                    Err("transient")
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
    (outcome, starts.into_inner().unwrap())
}

fn ms(v: &[u64]) -> Vec<Duration> {
    v.iter().map(|&m| Duration::from_millis(m)).collect()
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_with_exponential_delays() {
    let pipeline = Pipeline::builder()
        .retry(RetryOptions::exponential(Duration::from_millis(100)).jitter(Jitter::None))
        .build()
        .unwrap();
    let (outcome, starts) = run(&pipeline, 3).await;
    assert_eq!(outcome, Ok(3));
    assert_eq!(starts, ms(&[0, 100, 300, 700]));
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retries_with_the_last_error() {
    let pipeline = Pipeline::builder()
        .retry(RetryOptions::linear(Duration::from_millis(10)).max_retries(2))
        .build()
        .unwrap();
    let (outcome, starts) = run(&pipeline, 10).await;
    assert_eq!(outcome, Err(Error::Inner("transient")));
    assert_eq!(starts, ms(&[0, 10, 30]));
}

#[tokio::test(start_paused = true)]
async fn unbounded_retries_stop_only_on_success() {
    let pipeline = Pipeline::builder()
        .retry(RetryOptions::constant(Duration::from_millis(1)).unbounded())
        .build()
        .unwrap();
    let (outcome, starts) = run(&pipeline, 50).await;
    assert_eq!(outcome, Ok(50));
    assert_eq!(starts.len(), 51);
}

#[tokio::test(start_paused = true)]
async fn max_delay_caps_the_backoff() {
    let pipeline = Pipeline::builder()
        .retry(
            RetryOptions::exponential(Duration::from_millis(100))
                .jitter(Jitter::None)
                .max_retries(4)
                .max_delay(Duration::from_millis(250)),
        )
        .build()
        .unwrap();
    let (_, starts) = run(&pipeline, 10).await;
    assert_eq!(starts, ms(&[0, 100, 300, 550, 800]));
}

#[tokio::test(start_paused = true)]
async fn full_jitter_delays_never_exceed_the_backoff() {
    let pipeline = Pipeline::builder()
        .retry(
            RetryOptions::exponential(Duration::from_millis(100))
                .jitter(Jitter::Full)
                .max_retries(5),
        )
        .build()
        .unwrap();
    let (_, starts) = run(&pipeline, 10).await;
    for (i, pair) in starts.windows(2).enumerate() {
        let delay = pair[1] - pair[0];
        assert!(
            delay <= Duration::from_millis(100 << i),
            "retry {i}: {delay:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn predicate_decides_what_is_retried() {
    let pipeline = Pipeline::builder()
        .retry(RetryOptions::constant(Duration::from_millis(5)).handle(
            |r: &Result<u32, Error<&'static str>>| matches!(r, Err(Error::Inner("transient"))),
        ))
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let outcome = pipeline
        .execute(|_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err::<u32, _>("permanent") }
        })
        .await;
    assert_eq!(outcome, Err(Error::Inner("permanent")));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn delay_generator_reads_the_outcome() {
    // A Retry-After carried by the error wins over the backoff.
    let pipeline = Pipeline::builder()
        .retry(
            RetryOptions::constant(Duration::from_millis(10)).delay_generator(
                |r: &Result<u32, Error<&'static str>>, _attempt| match r {
                    Err(Error::Inner("transient")) => Some(Duration::from_secs(2)),
                    _ => None,
                },
            ),
        )
        .build()
        .unwrap();
    let (outcome, starts) = run(&pipeline, 1).await;
    assert_eq!(outcome, Ok(1));
    assert_eq!(starts, ms(&[0, 2000]));
}

#[tokio::test(start_paused = true)]
async fn does_not_sleep_past_the_enclosing_deadline() {
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_millis(250))
        .retry(RetryOptions::constant(Duration::from_millis(100)).max_retries(10))
        .build()
        .unwrap();
    let start = Instant::now();
    let (outcome, starts) = run(&pipeline, 100).await;
    // Attempts at 0, 100, 200; a fourth at 300 would be past 250: the last error returns
    // at 200 instead of a timeout at 250.
    assert_eq!(outcome, Err(Error::Inner("transient")));
    assert_eq!(starts, ms(&[0, 100, 200]));
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_rejections_by_default() {
    let pipeline = Pipeline::builder()
        .retry(RetryOptions::constant(Duration::from_millis(1)))
        .circuit_breaker(stormwall::circuit_breaker::CircuitBreakerOptions::consecutive(1))
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let outcome = pipeline
        .execute(|_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>("down") }
        })
        .await;
    // First attempt fails and opens the breaker; the retry is rejected and not retried.
    assert!(matches!(outcome, Err(Error::CircuitOpen { .. })));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn raises_one_event_per_retry_with_attempt_and_delay() {
    let recorder = Recorder::new();
    let pipeline = Pipeline::builder()
        .name("orders")
        .listener(recorder.clone())
        .retry(RetryOptions::linear(Duration::from_millis(10)).max_retries(3))
        .build()
        .unwrap();
    let _ = run(&pipeline, 2).await;
    let retries: Vec<_> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Retry(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        vec![
            RetryScheduled {
                attempt: 1,
                delay: Duration::from_millis(10)
            },
            RetryScheduled {
                attempt: 2,
                delay: Duration::from_millis(20)
            },
        ]
    );
    let all_from_orders = recorder
        .events
        .lock()
        .unwrap()
        .iter()
        .all(|(p, _, _)| p == "orders");
    assert!(all_from_orders);
    assert_eq!(recorder.count("execution_completed"), 1);
}

#[test]
fn backoff_kind_is_configurable() {
    let o = RetryOptions::constant(Duration::from_millis(1)).backoff(Backoff::Exponential);
    assert_eq!(o.backoff, Backoff::Exponential);
}
