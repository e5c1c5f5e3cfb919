//! A breaker opening on a dead dependency, rejecting fast, and closing after a probe.
//!
//! `cargo run --example circuit_breaker`

use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall::Pipeline;
use tokio::time::sleep;

#[tokio::main]
async fn main() -> Result<(), stormwall::ConfigError> {
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::new()
            .failure_ratio(0.5)
            .minimum_throughput(4)
            .sampling_duration(Duration::from_secs(5))
            .break_duration(Duration::from_millis(200)),
    )?;
    let pipeline = Pipeline::builder()
        .circuit_breaker(breaker.clone())
        .build()?;
    for i in 0..6 {
        let outcome = pipeline
            .execute(|_| async { Err::<(), _>("connection refused") })
            .await;
        println!("call {i}: {outcome:?} — breaker {}", breaker.state());
    }
    sleep(Duration::from_millis(250)).await;
    let outcome = pipeline
        .execute(|_| async { Ok::<_, &str>("healthy again") })
        .await;
    println!("probe: {outcome:?} — breaker {}", breaker.state());

    // The permit API, for code that is not a closure.
    let permit = breaker.try_acquire().expect("closed breaker admits");
    permit.record_success();
    Ok(())
}
