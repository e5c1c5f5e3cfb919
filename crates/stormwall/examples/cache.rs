//! Stale-on-error: a product page keeps answering from the last good value (up to 60 s old)
//! while the catalogue service is down.
//!
//! Run: `cargo run -p stormwall --example cache`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use stormwall::cache::{MemoryCache, StaleOnError, StaleOnErrorOptions};
use stormwall::{Context, Pipeline};

#[tokio::main]
async fn main() -> Result<(), stormwall::ConfigError> {
    let cache = MemoryCache::new(10_000, Duration::from_secs(3600));
    let pipeline = Pipeline::builder()
        .strategy(StaleOnError::new(
            cache,
            StaleOnErrorOptions::new(Duration::from_secs(60)),
        )?)
        .build()?;
    let catalogue_up = AtomicBool::new(true);
    let price = |sku: &'static str| {
        let up = catalogue_up.load(Ordering::Relaxed);
        pipeline.execute_with(Context::new().with_key(sku), move |_| async move {
            if up {
                Ok(1299)
            } else {
                Err("catalogue unavailable")
            }
        })
    };
    println!("sku-1, catalogue up:   {:?}", price("sku-1").await);
    catalogue_up.store(false, Ordering::Relaxed);
    println!(
        "sku-1, catalogue down: {:?} (the last good value)",
        price("sku-1").await
    );
    println!(
        "sku-2, catalogue down: {:?} (never cached: the error)",
        price("sku-2").await
    );
    Ok(())
}
