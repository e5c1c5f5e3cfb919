//! Feature switches on tokio's paused clock: bound to a breaker, overridden, by percentage.

mod common;

use common::Recorder;
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall::degrade::{Switch, SwitchReason, SwitchState, SwitchesCheck};
use stormwall::health::{HealthRegistry, HealthStatus};
use stormwall::telemetry::Event;
use tokio::time::advance;

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(
        CircuitBreakerOptions::new()
            .consecutive_failures(1)
            .break_duration(Duration::from_secs(5)),
    )
    .unwrap()
}

fn reasons(recorder: &Recorder) -> Vec<(bool, SwitchReason)> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::SwitchChanged(c) => Some((c.enabled, c.reason)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_bound_switch_goes_off_with_the_breaker_and_back_on_after_close_plus_hold() {
    let breaker = breaker();
    let recorder = Recorder::new();
    let switch =
        Switch::with_listener("RealTimePayments", SwitchState::On, Some(recorder.clone())).unwrap();
    switch.bind_to(&breaker, Duration::from_secs(10));
    assert!(switch.is_on());

    breaker.try_acquire().unwrap().record_failure();
    // The same step: the breaker opened, the switch is off.
    assert!(!switch.is_on());
    assert!(switch.is_degraded_by_breaker());

    // Half-open is not closed: still off.
    advance(Duration::from_secs(5)).await;
    let probe = breaker.try_acquire().unwrap();
    assert!(!switch.is_on());
    probe.record_success();
    // Closed, but the hold has not run: off.
    assert!(!switch.is_on());
    advance(Duration::from_secs(9)).await;
    assert!(!switch.is_on());
    advance(Duration::from_secs(1)).await;
    assert!(switch.is_on(), "closed for the whole hold: on again");
    assert!(!switch.is_degraded_by_breaker());
    assert_eq!(
        reasons(&recorder),
        vec![
            (false, SwitchReason::BreakerOpened),
            (true, SwitchReason::BreakerRecovered)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reopening_during_the_hold_keeps_the_switch_off() {
    let breaker = breaker();
    let switch = Switch::new("s", SwitchState::On).unwrap();
    switch.bind_to(&breaker, Duration::from_secs(10));
    breaker.try_acquire().unwrap().record_failure();
    breaker.close();
    advance(Duration::from_secs(5)).await;
    breaker.try_acquire().unwrap().record_failure(); // opens again within the hold
    advance(Duration::from_secs(6)).await;
    assert!(!switch.is_on(), "the hold starts again from the next close");
}

#[tokio::test(start_paused = true)]
async fn the_manual_override_wins_over_the_breaker_and_the_setting() {
    let breaker = breaker();
    let switch = Switch::new("s", SwitchState::Off).unwrap();
    switch.bind_to(&breaker, Duration::ZERO);
    switch.override_with(Some(true));
    assert!(switch.is_on());
    breaker.try_acquire().unwrap().record_failure();
    assert!(switch.is_on(), "forced on even with the breaker open");
    switch.override_with(Some(false));
    breaker.close();
    assert!(!switch.is_on());
    switch.override_with(None);
    assert!(!switch.is_on(), "back to the setting: off");
    switch.set(SwitchState::On).unwrap();
    assert!(switch.is_on());
}

#[test]
fn a_percentage_rollout_is_stable_per_key_and_within_one_percent() {
    let switch = Switch::new("NewCheckout", SwitchState::Percentage(25.0)).unwrap();
    let on = (0..100_000)
        .filter(|i| switch.is_on_for(&format!("user-{i}")))
        .count();
    let share = on as f64 / 100_000.0;
    assert!((share - 0.25).abs() <= 0.01, "{share}");
    for i in 0..1000 {
        let key = format!("user-{i}");
        assert_eq!(switch.is_on_for(&key), switch.is_on_for(&key));
    }
    // Raising the percentage only adds keys: nobody who had it loses it.
    let before: Vec<bool> = (0..1000)
        .map(|i| switch.is_on_for(&format!("user-{i}")))
        .collect();
    switch.set(SwitchState::Percentage(50.0)).unwrap();
    for (i, had) in before.into_iter().enumerate() {
        if had {
            assert!(switch.is_on_for(&format!("user-{i}")));
        }
    }
    assert!(
        !switch.is_on(),
        "without a key, a percentage below 100 is off"
    );
    assert!(Switch::new("x", SwitchState::Percentage(101.0)).is_err());
    assert_eq!(
        switch.set(SwitchState::Percentage(-1.0)).unwrap_err().field,
        "switch.percentage"
    );
}

#[tokio::test(start_paused = true)]
async fn health_is_degraded_while_a_switch_is_off_because_of_a_breaker() {
    let breaker = breaker();
    let switch = Switch::new("RealTimePayments", SwitchState::On).unwrap();
    switch.bind_to(&breaker, Duration::from_secs(1));
    let health = HealthRegistry::new().check(
        "switches",
        &["ready"],
        Duration::from_secs(1),
        SwitchesCheck::new([switch.clone()]),
    );
    assert_eq!(health.report(None).await.status, HealthStatus::Healthy);
    breaker.try_acquire().unwrap().record_failure();
    let report = health.report(None).await;
    assert_eq!(report.status, HealthStatus::Degraded);
    #[cfg(feature = "serde")]
    assert!(serde_json::to_string(&report)
        .unwrap()
        .contains("RealTimePayments"));
    // Switched off by hand is not a degradation by a breaker.
    breaker.close();
    advance(Duration::from_secs(1)).await;
    switch.set(SwitchState::Off).unwrap();
    assert_eq!(health.report(None).await.status, HealthStatus::Healthy);
}
