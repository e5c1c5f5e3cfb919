//! The seeds' order saga: reserve stock → charge payment → ship, each step through a
//! stormwall pipeline (retry + timeout), persisted after every step in SQLite. Order 1
//! goes through; order 2's shipping fails, so its payment is refunded and its stock
//! released, in that order.
//!
//! `cargo run -p stormwall-saga --example order_saga`

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stormwall::retry::RetryOptions;
use stormwall::timeout::TimeoutOptions;
use stormwall::Pipeline;
use stormwall_saga::{
    Orchestrator, OrchestratorOptions, SagaDefinition, SagaEvent, SqliteStore, StepContext,
};

fn say(what: &'static str) -> impl Fn(StepContext) -> std::future::Ready<Result<Value, String>> {
    move |ctx| {
        println!("  {what:<22} key {}", ctx.idempotency_key);
        std::future::ready(Ok(json!(what)))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("stormwall-order-saga-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = SqliteStore::open(dir.join("sagas.db"))?;

    // The courier service is flaky for order 1 (one failure, retried) and down for order 2.
    let courier_failures = Arc::new(AtomicU32::new(1));
    let failures = courier_failures.clone();
    let order = SagaDefinition::new("order")
        .step("inventory", say("reserve stock"), say("release stock"))
        .step("payment", say("charge payment"), say("refund payment"))
        .step_without_compensation("shipping", move |ctx: StepContext| {
            let failures = failures.clone();
            async move {
                if failures.load(Ordering::SeqCst) > 0 {
                    failures.fetch_sub(1, Ordering::SeqCst);
                    println!(
                        "  {:<22} key {} -> courier unavailable",
                        "ship", ctx.idempotency_key
                    );
                    return Err("courier unavailable".to_string());
                }
                println!("  {:<22} key {}", "ship", ctx.idempotency_key);
                Ok(json!({"tracking": format!("TRK-{}", ctx.saga_id)}))
            }
        });

    let pipeline = Pipeline::builder()
        .retry(RetryOptions::exponential(Duration::from_millis(20)).max_retries(2))
        .timeout(TimeoutOptions::new(Duration::from_secs(2)))
        .build()?;
    let sagas = Orchestrator::new(store, pipeline, OrchestratorOptions::default())
        .register(order)?
        .on_event(|event| {
            if let SagaEvent::Finished { saga, status } = event {
                println!("  => saga {saga}: {status:?}");
            }
        });

    println!("order-1 (the courier fails once; the pipeline retries):");
    let one = sagas
        .start("order", "order-1", json!({"sku": "lamp", "amount": 30}))
        .await?;
    println!("order-2 (the courier is down: compensate in reverse):");
    courier_failures.store(100, Ordering::SeqCst);
    let two = sagas
        .start("order", "order-2", json!({"sku": "desk", "amount": 250}))
        .await?;

    println!();
    println!(
        "order-1 {:?}, completed steps {:?}",
        one.status,
        one.completed.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    println!(
        "order-2 {:?}, compensated {:?}, because {}",
        two.status,
        two.compensated,
        two.failure.unwrap_or_default()
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
