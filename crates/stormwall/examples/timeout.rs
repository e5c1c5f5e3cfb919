//! A total timeout around retries, and an attempt timeout around each try.
//!
//! `cargo run --example timeout`

use std::time::Duration;
use stormwall::retry::RetryOptions;
use stormwall::Pipeline;
use tokio::time::{sleep, Instant};

#[tokio::main]
async fn main() -> Result<(), stormwall::ConfigError> {
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_millis(500)) // total
        .retry(RetryOptions::constant(Duration::from_millis(20)).max_retries(10))
        .timeout(Duration::from_millis(100)) // per attempt
        .build()?;
    let start = Instant::now();
    let outcome = pipeline
        .execute(|ctx| async move {
            println!(
                "attempt {} with {:?} left",
                ctx.attempt(),
                ctx.remaining().unwrap()
            );
            sleep(Duration::from_secs(1)).await; // a dependency that hangs
            Ok::<_, ()>(())
        })
        .await;
    println!("{outcome:?} after {:?}", start.elapsed());
    Ok(())
}
