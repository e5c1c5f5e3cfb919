//! A fallback answering "queued" when the payment call times out.
//!
//! `cargo run --example fallback`

use std::time::Duration;
use stormwall::fallback::FallbackOptions;
use stormwall::{Error, Pipeline};
use tokio::time::sleep;

#[tokio::main]
async fn main() -> Result<(), stormwall::ConfigError> {
    let pipeline = Pipeline::builder()
        .fallback(FallbackOptions::with(
            |outcome: Result<String, Error<String>>| async move {
                let why = outcome.err().map(|e| e.kind()).unwrap_or("ok");
                Ok(format!("PaymentPending (real-time payment failed: {why})"))
            },
        ))
        .timeout(Duration::from_millis(100))
        .build()?;
    let outcome = pipeline
        .execute(|_| async {
            sleep(Duration::from_secs(2)).await;
            Ok::<String, String>("Paid".into())
        })
        .await;
    println!("{outcome:?}");
    Ok(())
}
