//! Health registry: aggregation, tags, timeouts, concurrency, breaker checks, JSON.

use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall::health::{tags, BreakerCheck, CheckResult, HealthRegistry, HealthStatus};
use tokio::time::sleep;

fn registry() -> HealthRegistry {
    HealthRegistry::new()
        .check("process", &[tags::LIVE], Duration::from_secs(1), || async {
            CheckResult::healthy()
        })
        .check("cache", &[tags::READY], Duration::from_secs(1), || async {
            sleep(Duration::from_millis(800)).await;
            CheckResult::degraded("serving stale entries")
        })
        .check(
            "warmup",
            &[tags::STARTUP, tags::READY],
            Duration::from_secs(1),
            || async {
                sleep(Duration::from_millis(800)).await;
                CheckResult::healthy()
            },
        )
}

#[tokio::test(start_paused = true)]
async fn the_worst_status_of_the_selected_checks_wins() {
    let r = registry();
    assert_eq!(
        r.report(Some(tags::LIVE)).await.status,
        HealthStatus::Healthy
    );
    assert_eq!(
        r.report(Some(tags::STARTUP)).await.status,
        HealthStatus::Healthy
    );
    let ready = r.report(Some(tags::READY)).await;
    assert_eq!(ready.status, HealthStatus::Degraded);
    assert_eq!(
        ready.entries.keys().collect::<Vec<_>>(),
        ["cache", "warmup"]
    );
    assert_eq!(r.report(None).await.entries.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn checks_run_concurrently() {
    let report = registry().report(Some(tags::READY)).await;
    // Two checks of 800 ms each: 800 ms together, not 1.6 s.
    assert!(
        (report.total_duration_seconds - 0.8).abs() < 1e-6,
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_check_past_its_timeout_is_unhealthy() {
    let r = HealthRegistry::new().check(
        "slow",
        &[tags::READY],
        Duration::from_millis(200),
        || async {
            sleep(Duration::from_secs(60)).await;
            CheckResult::healthy()
        },
    );
    let report = r.report(None).await;
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(
        report.entries["slow"].description.as_deref(),
        Some("timed out after 200ms")
    );
    assert!((report.total_duration_seconds - 0.2).abs() < 1e-6);
}

#[tokio::test(start_paused = true)]
async fn breaker_check_follows_the_circuit() {
    let breaker = CircuitBreaker::new(CircuitBreakerOptions::consecutive(1)).unwrap();
    let r = HealthRegistry::new()
        .check(
            "payment",
            &[tags::READY],
            Duration::from_secs(1),
            BreakerCheck::new(breaker.clone()),
        )
        .check(
            "payment-critical",
            &["critical"],
            Duration::from_secs(1),
            BreakerCheck::new(breaker.clone()).critical(),
        );
    assert_eq!(r.report(None).await.status, HealthStatus::Healthy);
    breaker.try_acquire().unwrap().record_failure();
    let report = r.report(Some(tags::READY)).await;
    assert_eq!(report.status, HealthStatus::Degraded);
    assert_eq!(
        report.entries["payment"].description.as_deref(),
        Some("circuit open")
    );
    assert_eq!(
        r.report(Some("critical")).await.status,
        HealthStatus::Unhealthy
    );
    breaker.close();
    assert_eq!(r.report(None).await.status, HealthStatus::Healthy);
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn report_serialises_like_an_aspnet_health_report() {
    let report = registry().report(Some(tags::READY)).await;
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["status"], "Degraded");
    assert_eq!(json["entries"]["cache"]["status"], "Degraded");
    assert_eq!(
        json["entries"]["cache"]["description"],
        "serving stale entries"
    );
    assert_eq!(
        json["entries"]["warmup"]["tags"],
        serde_json::json!(["startup", "ready"])
    );
    assert!(json["entries"]["warmup"].get("description").is_none());
    assert!(json["total_duration_seconds"].as_f64().unwrap() > 0.0);
}
