//! Many tasks on many threads hammering one breaker: every transition raised exactly once,
//! in a consistent chain, and every call accounted for.

mod common;

use common::Recorder;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, CircuitState};
use stormwall::telemetry::Event;
use stormwall::{Error, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_breaker_raises_each_transition_exactly_once() {
    let recorder = Recorder::new();
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::new()
            .failure_ratio(0.5)
            .minimum_throughput(20)
            .consecutive_failures(8)
            .sampling_duration(Duration::from_millis(50))
            .break_duration(Duration::from_micros(200))
            .permitted_calls_in_half_open(3)
            .success_threshold(2),
    )
    .unwrap();
    let pipeline = Arc::new(
        Pipeline::builder()
            .listener(recorder.clone())
            .circuit_breaker(breaker.clone())
            .build()
            .unwrap(),
    );
    let ran = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    const TASKS: u64 = 16;
    const CALLS: u64 = 5_000;
    let mut handles = vec![];
    for task in 0..TASKS {
        let (pipeline, ran, rejected, failed) = (
            pipeline.clone(),
            ran.clone(),
            rejected.clone(),
            failed.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(task);
            for i in 0..CALLS {
                // Phases of mostly-failing and mostly-succeeding traffic drive the breaker
                // round its whole cycle many times.
                let failing_phase = (i / 500) % 2 == 0;
                let fail = rng.f64() < if failing_phase { 0.8 } else { 0.05 };
                let outcome = pipeline
                    .execute(|_| {
                        ran.fetch_add(1, Ordering::Relaxed);
                        async move {
                            tokio::task::yield_now().await;
                            if fail {
                                Err("boom")
                            } else {
                                Ok(())
                            }
                        }
                    })
                    .await;
                match outcome {
                    Ok(()) => {}
                    Err(Error::CircuitOpen { .. }) => {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::Inner(_)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let (ran, rejected) = (
        ran.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
    );
    assert_eq!(
        ran + rejected,
        TASKS * CALLS,
        "every call either ran or was rejected"
    );
    assert_eq!(
        recorder.count("circuit_rejected") as u64,
        rejected,
        "one rejection event per rejected call"
    );

    let mut transitions: Vec<_> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::CircuitTransition(t) => Some(t),
            _ => None,
        })
        .collect();
    assert!(
        transitions.len() >= 6,
        "the breaker cycled: {}",
        transitions.len()
    );
    transitions.sort_by_key(|t| t.sequence);
    let sequences: Vec<u64> = transitions.iter().map(|t| t.sequence).collect();
    assert_eq!(
        sequences,
        (1..=transitions.len() as u64).collect::<Vec<_>>(),
        "each transition raised exactly once, numbered without gaps"
    );
    let mut state = CircuitState::Closed;
    for t in &transitions {
        assert_eq!(t.from, state, "chain broken at {t:?}");
        assert_ne!(t.from, t.to);
        state = t.to;
    }
    assert_eq!(state, breaker.state());
}
