//! The metrics listener reports the documented names with the traffic's values.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use std::sync::Arc;
use std::time::Duration;
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::retry::RetryOptions;
use stormwall::telemetry::MetricsListener;
use stormwall::Pipeline;

/// (kind, name, sorted labels) → value, for everything recorded.
fn snapshot(recorder: &DebuggingRecorder) -> Vec<(MetricKind, String, Vec<String>, DebugValue)> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (kind, key.name().to_owned(), labels, value)
        })
        .collect()
}

#[test]
fn reports_events_durations_and_circuit_state_under_the_documented_names() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let p = Pipeline::builder()
                .name("payment")
                .listener(Arc::new(MetricsListener::new()))
                .retry(RetryOptions::constant(Duration::from_millis(10)).max_retries(2))
                .circuit_breaker(CircuitBreakerOptions::consecutive(3))
                .build()
                .unwrap();
            // 3 attempts, all failing: 2 retries, the breaker opens on the third failure.
            let _ = p.execute(|_| async { Err::<(), _>("down") }).await;
            let _ = p.execute(|_| async { Ok::<_, &str>(()) }).await; // rejected: open
        });
    });
    let snap = snapshot(&recorder);
    let find = |name: &str, labels: &[&str]| {
        snap.iter()
            .find(|(_, n, l, _)| n == name && labels.iter().all(|x| l.iter().any(|y| y == x)))
            .map(|(_, _, _, v)| v)
    };
    let counter = |strategy: &str, event: &str| match find(
        "stormwall_strategy_events_total",
        &[
            "pipeline=payment",
            &format!("strategy={strategy}"),
            &format!("event={event}"),
        ],
    ) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{strategy}/{event}: {other:?}"),
    };
    assert_eq!(counter("retry", "retry"), 2);
    assert_eq!(counter("circuit_breaker", "circuit_transition"), 1);
    assert_eq!(counter("circuit_breaker", "circuit_rejected"), 1);
    assert_eq!(counter("pipeline", "attempt_completed"), 3);
    assert_eq!(counter("pipeline", "execution_completed"), 2);
    match find("stormwall_attempt_duration_seconds", &["pipeline=payment"]) {
        Some(DebugValue::Histogram(v)) => assert_eq!(v.len(), 3),
        other => panic!("{other:?}"),
    }
    match find("stormwall_pipeline_duration_seconds", &["pipeline=payment"]) {
        Some(DebugValue::Histogram(v)) => {
            assert_eq!(v.len(), 2);
            // The first execution waited two 10 ms retry delays.
            assert!(
                v.iter().any(|d| (d.into_inner() - 0.02).abs() < 1e-6),
                "{v:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    match find("stormwall_circuit_state", &["pipeline=payment"]) {
        Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 1.0, "open"),
        other => panic!("{other:?}"),
    }
}
