//! Chaos strategies: inject faults and latency into a share of calls, seeded so a run can be
//! replayed, and turned off at runtime — to prove the retry around them works.
//!
//! Run: `cargo run -p stormwall --example chaos`

use std::time::Duration;
use stormwall::chaos::{Chaos, ChaosOptions, Fault};
use stormwall::retry::RetryOptions;
use stormwall::{Context, Error, Pipeline};

#[tokio::main]
async fn main() -> Result<(), stormwall::ConfigError> {
    let chaos = Chaos::new(
        ChaosOptions::rate(0.5).seed(7),
        Fault(|_: &Context| Error::Inner("injected fault")),
    )?;
    let control = chaos.control();
    let pipeline = Pipeline::builder()
        .retry(RetryOptions::constant(Duration::from_millis(1)).max_retries(5))
        .strategy(chaos)
        .build()?;
    let mut delivered = 0;
    for _ in 0..20 {
        if pipeline
            .execute(|_| async { Ok::<_, &str>(()) })
            .await
            .is_ok()
        {
            delivered += 1;
        }
    }
    println!("half the calls fail by injection; with retries {delivered}/20 succeed");
    control.disable();
    println!(
        "chaos off: {:?}",
        pipeline.execute(|_| async { Ok::<_, &str>("clean") }).await
    );
    Ok(())
}
