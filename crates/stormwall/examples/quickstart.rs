//! A pipeline protecting a flaky, slow dependency, printing what each strategy did.
//!
//! `cargo run --release --example quickstart`

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall::fallback::FallbackOptions;
use stormwall::retry::{Jitter, RetryOptions};
use stormwall::telemetry::{Event, EventListener, EventSource};
use stormwall::{Error, Pipeline};
use tokio::time::{sleep, Instant};

/// Prints every event as it happens.
struct Print(Instant);

impl EventListener for Print {
    fn on_event(&self, _: &EventSource<'_>, event: &Event) {
        let at = self.0.elapsed().as_millis();
        match event {
            Event::Retry(r) => println!(
                "  {at:>5} ms  retry     attempt {} after {:?}",
                r.attempt, r.delay
            ),
            Event::Timeout(t) => println!("  {at:>5} ms  timeout   gave up after {:?}", t.timeout),
            Event::CircuitTransition(t) => {
                println!(
                    "  {at:>5} ms  breaker   {} -> {} ({:?})",
                    t.from, t.to, t.reason
                )
            }
            Event::CircuitRejected(r) => {
                println!(
                    "  {at:>5} ms  breaker   rejected, retry after {:?}",
                    r.retry_after
                )
            }
            Event::Fallback(f) => println!("  {at:>5} ms  fallback  replaced `{}`", f.outcome),
            Event::ExecutionCompleted(_) => {}
            other => println!("  {at:>5} ms  {other:?}"),
        }
    }
}

/// A payment service that is slow one call in four and fails one call in three.
async fn charge(call: u32) -> Result<&'static str, &'static str> {
    if call % 4 == 1 {
        sleep(Duration::from_millis(300)).await; // slower than the attempt timeout
    }
    if call.is_multiple_of(3) {
        return Err("503 service unavailable");
    }
    Ok("charged")
}

#[tokio::main]
async fn main() -> Result<(), stormwall::ConfigError> {
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::new()
            .failure_ratio(0.6)
            .minimum_throughput(8)
            .sampling_duration(Duration::from_secs(2))
            .break_duration(Duration::from_millis(500)),
    )?;
    let pipeline = Pipeline::builder()
        .name("payment")
        .listener(Arc::new(Print(Instant::now())))
        .fallback(FallbackOptions::value("queued for later"))
        .timeout(Duration::from_secs(2)) // total
        .retry(
            RetryOptions::exponential(Duration::from_millis(20))
                .max_retries(3)
                .jitter(Jitter::Full),
        )
        .circuit_breaker(breaker.clone())
        .timeout(Duration::from_millis(100)) // per attempt
        .build()?;

    let calls = AtomicU32::new(0);
    println!("Part 1: a flaky, slow payment service behind the pipeline");
    for order in 1..=4 {
        let outcome = pipeline
            .execute(|_ctx| charge(calls.fetch_add(1, Ordering::Relaxed)))
            .await;
        println!("order {order}: {outcome:?}");
    }

    println!("\nPart 2: the service goes down; the breaker opens and the fallback answers");
    for order in 5..=8 {
        let outcome: Result<&str, Error<&str>> = pipeline
            .execute(|_ctx| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err("connection refused") }
            })
            .await;
        println!("order {order}: {outcome:?} (breaker {})", breaker.state());
    }

    println!("\nPart 3: the service is back; after the break a probe closes the breaker");
    sleep(Duration::from_millis(600)).await;
    let outcome = pipeline
        .execute(|_ctx| async { Ok::<_, &str>("charged") })
        .await;
    println!("order 9: {outcome:?} (breaker {})", breaker.state());
    println!(
        "\n{} calls reached the payment service",
        calls.load(Ordering::Relaxed)
    );
    Ok(())
}
