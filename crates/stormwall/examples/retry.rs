//! Retry with exponential backoff and full jitter against an operation that fails twice.
//!
//! `cargo run --example retry`

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use stormwall::retry::{Jitter, RetryOptions};
use stormwall::Pipeline;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), stormwall::ConfigError> {
    let pipeline = Pipeline::builder()
        .retry(
            RetryOptions::exponential(Duration::from_millis(50))
                .max_retries(4)
                .max_delay(Duration::from_secs(1))
                .jitter(Jitter::Full),
        )
        .build()?;
    let start = Instant::now();
    let calls = AtomicU32::new(0);
    let outcome = pipeline
        .execute(|ctx| {
            calls.fetch_add(1, Ordering::Relaxed);
            println!("attempt {} at {:?}", ctx.attempt(), start.elapsed());
            async move {
                if ctx.attempt() < 2 {
                    Err("503")
                } else {
                    Ok("done")
                }
            }
        })
        .await;
    println!("{outcome:?} after {} calls", calls.load(Ordering::Relaxed));
    Ok(())
}
