//! Retry amplification through three service layers against a failing backend, with plain
//! retries and with a retry budget per layer (Google SRE, "Handling Overload").
//!
//! Each layer retries twice. With plain retries one request at the top becomes 3³ = 27
//! calls at the backend; with a 10 % retry budget per layer it stays near 1.1³.
//! Runs on tokio's paused clock, so it takes no real time.
//!
//! `cargo run --release --example retry_amplification`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stormwall::pipeline::Strategy;
use stormwall::retry::{RetryBudget, RetryBudgetOptions, RetryOptions};
use stormwall::Pipeline;

const REQUESTS: u64 = 1_000;

fn retry(budget: bool) -> RetryOptions {
    let retry = RetryOptions::constant(Duration::from_millis(1)).max_retries(2);
    if !budget {
        return retry;
    }
    let budget = RetryBudget::new(RetryBudgetOptions {
        percent_can_retry: 0.1,
        min_retries_per_second: 0,
        ..Default::default()
    })
    .expect("valid budget");
    retry.budget(budget)
}

/// One layer: calls `inner` through its pipeline, turning errors into strings.
async fn layer<S, F, Fut>(p: &Pipeline<S>, inner: F) -> Result<(), String>
where
    S: Strategy<(), String>,
    F: Fn() -> Fut + Sync,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    p.execute(|_| inner()).await.map_err(|e| e.to_string())
}

async fn run(budget: bool) -> u64 {
    let backend_calls = AtomicU64::new(0);
    let build = || {
        Pipeline::builder()
            .retry(retry(budget))
            .build()
            .expect("valid")
    };
    let (a, b, c) = (build(), build(), build());
    for _ in 0..REQUESTS {
        let _ = layer(&a, || {
            layer(&b, || {
                layer(&c, || async {
                    backend_calls.fetch_add(1, Ordering::Relaxed);
                    Err::<(), _>("503".to_owned())
                })
            })
        })
        .await;
    }
    backend_calls.load(Ordering::Relaxed)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tokio::time::pause();
    let plain = run(false).await;
    let budgeted = run(true).await;
    println!("{REQUESTS} requests through 3 layers, each retrying twice, backend always failing:");
    println!("| retries | backend calls | amplification |");
    println!("|---|---|---|");
    for (name, calls) in [("plain", plain), ("10 % budget per layer", budgeted)] {
        println!(
            "| {name} | {calls} | {:.2}× |",
            calls as f64 / REQUESTS as f64
        );
    }
}
