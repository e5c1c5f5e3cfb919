//! Bulkhead: at most 2 calls at once, 2 more waiting; the rest rejected at once, so one slow
//! dependency cannot take every connection the service has.
//!
//! Run: `cargo run -p stormwall --example bulkhead`

use std::time::Duration;
use stormwall::bulkhead::BulkheadOptions;
use stormwall::{Error, Pipeline};

#[tokio::main]
async fn main() -> Result<(), stormwall::ConfigError> {
    let pipeline = Pipeline::builder()
        .bulkhead(BulkheadOptions::new(2).queue_limit(2))
        .build()?;
    let slow_report = || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>("report")
    };
    let calls = (0..6).map(|_| pipeline.execute(|_| slow_report()));
    let outcomes = futures_join(calls).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(r) => println!("call {i}: {r}"),
            Err(Error::BulkheadFull) => println!("call {i}: rejected at once (bulkhead full)"),
            Err(e) => println!("call {i}: {e}"),
        }
    }
    Ok(())
}

/// Runs the futures concurrently on this task, in order of their results' positions.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<_> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        for (slot, output) in handles.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                if let std::task::Poll::Ready(v) = future.as_mut().poll(cx) {
                    *output = Some(v);
                    *slot = None;
                }
            }
        }
        if handles.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
