//! AWS's backoff experiment ("Exponential Backoff And Jitter"): N clients contend for a
//! resource that serves one call per millisecond — calls landing in the same millisecond
//! all fail — and each retries (up to 40 times) until it succeeds. How many calls, how many
//! clients get through, and how long it takes, for each jitter? Runs on tokio's paused clock: no real time passes.
//!
//! `cargo run --release --example backoff_simulation`

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use stormwall::retry::{Jitter, RetryOptions};
use stormwall::Pipeline;
use tokio::time::{sleep, Instant};

const CLIENTS: u32 = 100;

/// Runs the contest once; returns (total calls, time until the last client finished,
/// clients that succeeded within 40 retries).
async fn contest(jitter: Jitter) -> (u64, Duration, u32) {
    let pipeline = Arc::new(
        Pipeline::builder()
            .retry(
                RetryOptions::exponential(Duration::from_millis(2))
                    .jitter(jitter)
                    .max_delay(Duration::from_secs(1))
                    .max_retries(40),
            )
            .build()
            .expect("valid options"),
    );
    let start = Instant::now();
    // Calls per millisecond slot.
    let slots: Arc<Mutex<HashMap<u128, u32>>> = Arc::default();
    let calls: Arc<Mutex<u64>> = Arc::default();
    let succeeded: Arc<Mutex<u32>> = Arc::default();
    let local = tokio::task::LocalSet::new();
    for _ in 0..CLIENTS {
        let (pipeline, slots, calls) = (pipeline.clone(), slots.clone(), calls.clone());
        let succeeded = succeeded.clone();
        local.spawn_local(async move {
            let outcome = pipeline
                .execute(|_| {
                    let slot = start.elapsed().as_millis();
                    *slots.lock().unwrap().entry(slot).or_default() += 1;
                    *calls.lock().unwrap() += 1;
                    let slots = slots.clone();
                    async move {
                        // The call takes the rest of its millisecond; it succeeds alone.
                        sleep(Duration::from_millis(1)).await;
                        if slots.lock().unwrap()[&slot] == 1 {
                            Ok(())
                        } else {
                            Err("conflict")
                        }
                    }
                })
                .await;
            if outcome.is_ok() {
                *succeeded.lock().unwrap() += 1;
            }
        });
    }
    local.await;
    let total = *calls.lock().unwrap();
    let succeeded = *succeeded.lock().unwrap();
    (total, start.elapsed(), succeeded)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tokio::time::pause();
    println!(
        "{CLIENTS} clients, one call per ms served, exponential backoff from 2 ms capped at 1 s:"
    );
    println!(
        "| jitter | total calls | clients done (of {CLIENTS}) | time until the last finished |"
    );
    println!("|---|---|---|---|");
    for (name, jitter) in [
        ("none", Jitter::None),
        ("full", Jitter::Full),
        ("equal", Jitter::Equal),
        ("decorrelated (AWS)", Jitter::Decorrelated),
        ("decorrelated v2 (Polly)", Jitter::DecorrelatedV2),
    ] {
        let (calls, took, done) = contest(jitter).await;
        println!("| {name} | {calls} | {done} | {} ms |", took.as_millis());
    }
}
