//! Health checks: a registry of tagged checks (live / ready / startup) with timeouts; a
//! breaker check reports Degraded while the payment circuit is open.
//!
//! Run: `cargo run -p stormwall --example health`

use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall::health::{tags, BreakerCheck, CheckResult, HealthRegistry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let payment = CircuitBreaker::new(CircuitBreakerOptions::new().consecutive_failures(2))?;
    let registry = HealthRegistry::new()
        .check("process", &[tags::LIVE], Duration::from_secs(1), || async {
            CheckResult::healthy()
        })
        .check(
            "payment-breaker",
            &[tags::READY],
            Duration::from_secs(1),
            BreakerCheck::new(payment.clone()),
        );
    println!(
        "ready: {}",
        serde_json::to_string(&registry.report(Some(tags::READY)).await)?
    );
    for _ in 0..2 {
        if let Ok(permit) = payment.try_acquire() {
            permit.record_failure();
        }
    }
    println!(
        "after two payment failures (circuit {:?}):",
        payment.state()
    );
    println!(
        "ready: {}",
        serde_json::to_string(&registry.report(Some(tags::READY)).await)?
    );
    println!(
        "live:  {}",
        serde_json::to_string(&registry.report(Some(tags::LIVE)).await)?
    );
    Ok(())
}
