//! Circuit breaker through the pipeline and the permit API, on a paused clock.

mod common;

use common::Recorder;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use stormwall::circuit_breaker::{
    CircuitBreaker, CircuitBreakerOptions, CircuitState, CircuitTransition, TransitionReason,
};
use stormwall::pipeline::{Identity, Stack};
use stormwall::telemetry::Event;
use stormwall::{Error, Pipeline};
use tokio::time::{advance, sleep};

fn transitions(recorder: &Recorder) -> Vec<(CircuitState, CircuitState, TransitionReason)> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::CircuitTransition(CircuitTransition {
                from, to, reason, ..
            }) => Some((from, to, reason)),
            _ => None,
        })
        .collect()
}

/// A breaker with `options`, and a pipeline holding only that breaker.
fn guarded<P>(
    options: CircuitBreakerOptions<P>,
) -> (
    CircuitBreaker<P>,
    Pipeline<Stack<Identity, CircuitBreaker<P>>>,
)
where
    P: Clone,
{
    let breaker = CircuitBreaker::new(options).unwrap();
    let pipeline = Pipeline::builder()
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    (breaker, pipeline)
}

async fn call<S: stormwall::pipeline::Strategy<(), &'static str>>(
    p: &Pipeline<S>,
    fail: bool,
) -> Result<(), Error<&'static str>> {
    p.execute(|_| async move {
        if fail {
            Err("boom")
        } else {
            Ok(())
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn opens_after_failure_ratio_reached_with_minimum_throughput() {
    let (breaker, p) = guarded(
        CircuitBreakerOptions::new()
            .failure_ratio(0.5)
            .minimum_throughput(4)
            .sampling_duration(Duration::from_secs(10)),
    );
    // 3 failures, but under the minimum throughput: stays closed.
    for _ in 0..3 {
        let _ = call(&p, true).await;
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    let _ = call(&p, false).await; // 4 calls, 3/4 failed, but the last was a success
    assert_eq!(breaker.state(), CircuitState::Closed);
    let _ = call(&p, true).await; // 5 calls, 4 failed: trips
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn failures_older_than_the_sampling_duration_are_forgotten() {
    let (breaker, p) = guarded(
        CircuitBreakerOptions::new()
            .failure_ratio(0.5)
            .minimum_throughput(2)
            .sampling_duration(Duration::from_secs(1)),
    );
    let _ = call(&p, true).await;
    advance(Duration::from_millis(1100)).await;
    let _ = call(&p, true).await; // the first failure is out of the window
    assert_eq!(breaker.state(), CircuitState::Closed);
    let _ = call(&p, true).await;
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[test]
fn fast_clock_breaker_trips_on_the_failure_ratio() {
    // Real time, no sleeping: everything happens well within one bucket.
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::new()
            .failure_ratio(0.5)
            .minimum_throughput(4)
            .sampling_duration(Duration::from_secs(60))
            .clock(stormwall::clock::Clock::Fast),
    )
    .unwrap();
    breaker.try_acquire().unwrap().record_success();
    breaker.try_acquire().unwrap().record_success();
    breaker.try_acquire().unwrap().record_failure();
    assert_eq!(breaker.state(), CircuitState::Closed);
    breaker.try_acquire().unwrap().record_failure();
    assert_eq!(breaker.state(), CircuitState::Open);
    let retry_after = breaker.try_acquire().unwrap_err().retry_after.unwrap();
    assert!(retry_after > Duration::from_secs(4) && retry_after <= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn count_window_considers_only_the_last_n_calls() {
    let (breaker, p) = guarded(
        CircuitBreakerOptions::new()
            .failure_ratio(0.5)
            .minimum_throughput(4)
            .count_window(4),
    );
    for fail in [true, false, false, false, false, true] {
        let _ = call(&p, fail).await;
    }
    // Last four: false, false, false, true → 25 %.
    assert_eq!(breaker.state(), CircuitState::Closed);
    let _ = call(&p, true).await; // false, false, true, true → 50 %
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_after_consecutive_failures_and_success_resets_the_run() {
    let (breaker, p) = guarded(CircuitBreakerOptions::consecutive(3));
    for fail in [true, true, false, true, true] {
        let _ = call(&p, fail).await;
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    let _ = call(&p, true).await;
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_on_slow_call_ratio() {
    let recorder = Recorder::new();
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::new()
            .minimum_throughput(2)
            .slow_call(Duration::from_millis(500), 0.5),
    )
    .unwrap();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    let slow = |ms| {
        let p = &p;
        async move {
            p.execute(|_| async move {
                sleep(Duration::from_millis(ms)).await;
                Ok::<_, ()>(())
            })
            .await
        }
    };
    slow(10).await.unwrap();
    slow(600).await.unwrap(); // succeeded, but slowly: 1 of 2 slow → trips
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(
        transitions(&recorder),
        vec![(
            CircuitState::Closed,
            CircuitState::Open,
            TransitionReason::SlowCallRatio
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn open_rejects_fast_with_time_until_half_open_then_probe_closes() {
    let recorder = Recorder::new();
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::consecutive(1).break_duration(Duration::from_secs(30)),
    )
    .unwrap();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let counted = |fail: bool| {
        let (p, calls) = (&p, &calls);
        async move {
            p.execute(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if fail {
                        Err("boom")
                    } else {
                        Ok(())
                    }
                }
            })
            .await
        }
    };
    let _ = counted(true).await;
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        counted(false).await,
        Err(Error::CircuitOpen {
            retry_after: Some(Duration::from_secs(20))
        })
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "rejected call must not run"
    );
    advance(Duration::from_secs(20)).await;
    assert_eq!(counted(false).await, Ok(()));
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(
        transitions(&recorder),
        vec![
            (
                CircuitState::Closed,
                CircuitState::Open,
                TransitionReason::ConsecutiveFailures
            ),
            (
                CircuitState::Open,
                CircuitState::HalfOpen,
                TransitionReason::BreakElapsed
            ),
            (
                CircuitState::HalfOpen,
                CircuitState::Closed,
                TransitionReason::ProbesSucceeded
            ),
        ]
    );
    assert_eq!(recorder.count("circuit_rejected"), 1);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_permitted_probes_and_needs_success_threshold() {
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::consecutive(1)
            .break_duration(Duration::from_secs(1))
            .permitted_calls_in_half_open(2)
            .success_threshold(3),
    )
    .unwrap();
    breaker.try_acquire().unwrap().record_failure();
    advance(Duration::from_secs(1)).await;
    let a = breaker.try_acquire().unwrap();
    let b = breaker.try_acquire().unwrap();
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    let third = breaker.try_acquire().err().unwrap();
    assert_eq!(third.state, CircuitState::HalfOpen);
    a.record_success();
    b.record_success();
    assert_eq!(breaker.state(), CircuitState::HalfOpen, "2 of 3 successes");
    breaker.try_acquire().unwrap().record_success();
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn failed_probe_reopens_for_a_generated_longer_break() {
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::consecutive(1).break_duration_generator(|args| {
            Duration::from_secs(10 * u64::from(args.consecutive_opens))
        }),
    )
    .unwrap();
    breaker.try_acquire().unwrap().record_failure();
    assert_eq!(
        breaker.try_acquire().err().unwrap().retry_after,
        Some(Duration::from_secs(10))
    );
    advance(Duration::from_secs(10)).await;
    breaker.try_acquire().unwrap().record_failure();
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(
        breaker.try_acquire().err().unwrap().retry_after,
        Some(Duration::from_secs(20))
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_gives_back_its_slot() {
    let (breaker, p) =
        guarded(CircuitBreakerOptions::consecutive(1).break_duration(Duration::from_secs(1)));
    let _ = call(&p, true).await;
    advance(Duration::from_secs(1)).await;
    // The probe hangs and its caller gives up: the future is dropped mid-call.
    let hung = p.execute(|_| async {
        sleep(Duration::from_secs(3600)).await;
        Ok::<_, &str>(())
    });
    assert!(tokio::time::timeout(Duration::from_millis(10), hung)
        .await
        .is_err());
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    // Without the slot back, this probe would be rejected.
    assert_eq!(call(&p, false).await, Ok(()));
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn late_outcome_of_a_call_admitted_before_the_trip_is_ignored() {
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::consecutive(1).break_duration(Duration::from_secs(1)),
    )
    .unwrap();
    let early = breaker.try_acquire().unwrap();
    breaker.try_acquire().unwrap().record_failure();
    advance(Duration::from_secs(1)).await;
    let probe = breaker.try_acquire().unwrap();
    early.record_success(); // admitted while closed: not a probe
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    probe.record_success();
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn manual_isolate_close_and_disable() {
    let recorder = Recorder::new();
    let breaker = CircuitBreaker::new(CircuitBreakerOptions::consecutive(1)).unwrap();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    breaker.isolate();
    assert_eq!(
        call(&p, false).await,
        Err(Error::CircuitOpen { retry_after: None })
    );
    advance(Duration::from_secs(3600)).await;
    assert_eq!(
        breaker.state(),
        CircuitState::Isolated,
        "isolation does not time out"
    );
    breaker.close();
    assert_eq!(call(&p, false).await, Ok(()));
    breaker.disable();
    for _ in 0..5 {
        assert_eq!(call(&p, true).await, Err(Error::Inner("boom")));
    }
    assert_eq!(
        breaker.state(),
        CircuitState::Disabled,
        "disabled counts nothing"
    );
    breaker.close();
    assert_eq!(
        transitions(&recorder),
        vec![
            (
                CircuitState::Closed,
                CircuitState::Isolated,
                TransitionReason::Manual
            ),
            (
                CircuitState::Isolated,
                CircuitState::Closed,
                TransitionReason::Manual
            ),
            (
                CircuitState::Closed,
                CircuitState::Disabled,
                TransitionReason::Manual
            ),
            (
                CircuitState::Disabled,
                CircuitState::Closed,
                TransitionReason::Manual
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn predicate_decides_what_counts_as_failure() {
    let (breaker, p) = guarded(
        CircuitBreakerOptions::consecutive(1)
            .handle(|r: &Result<(), Error<&'static str>>| matches!(r, Err(Error::Inner("fatal")))),
    );
    let _ = p.execute(|_| async { Err::<(), _>("not found") }).await;
    assert_eq!(breaker.state(), CircuitState::Closed);
    let _ = p.execute(|_| async { Err::<(), _>("fatal") }).await;
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn transition_sequence_numbers_have_no_gaps() {
    let recorder = Recorder::new();
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::consecutive(1).break_duration(Duration::from_millis(10)),
    )
    .unwrap();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .circuit_breaker(breaker)
        .build()
        .unwrap();
    for i in 0..20 {
        let _ = call(&p, i % 3 != 0).await;
        advance(Duration::from_millis(7)).await;
    }
    let sequences: Vec<u64> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::CircuitTransition(t) => Some(t.sequence),
            _ => None,
        })
        .collect();
    assert!(sequences.len() > 3);
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
}
