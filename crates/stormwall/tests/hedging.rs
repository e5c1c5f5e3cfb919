//! Hedging: latency, fallback and parallel modes, losers cancelled, on a paused clock.

mod common;

use common::Recorder;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stormwall::hedging::{Hedging, HedgingOptions};
use stormwall::pipeline::Strategy;
use stormwall::{Error, Pipeline};
use tokio::time::{sleep, Instant};

/// Per attempt: how long it takes and whether it succeeds. Counts starts and drops.
#[derive(Default)]
struct Replicas {
    started: AtomicU32,
    cancelled: AtomicU32,
}

struct CancelGuard<'a>(&'a AtomicU32, bool);
impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn run<S: Strategy<&'static str, &'static str>>(
    p: &Pipeline<S>,
    replicas: &Replicas,
    plan: &[(u64, bool)],
) -> Result<&'static str, Error<&'static str>> {
    p.execute(|ctx| {
        replicas.started.fetch_add(1, Ordering::SeqCst);
        let (ms, ok) = plan[ctx.attempt() as usize];
        let names = ["primary", "hedge1", "hedge2", "hedge3"];
        let name = names[ctx.attempt() as usize];
        async move {
            let mut guard = CancelGuard(&replicas.cancelled, false);
            sleep(Duration::from_millis(ms)).await;
            guard.1 = true;
            if ok {
                Ok(name)
            } else {
                Err("failed")
            }
        }
    })
    .await
}

fn pipeline(
    options: HedgingOptions,
) -> (
    Pipeline<impl Strategy<&'static str, &'static str>>,
    Arc<Recorder>,
) {
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .hedging(options)
        .build()
        .unwrap();
    (p, recorder)
}

#[tokio::test(start_paused = true)]
async fn latency_mode_hedges_a_slow_primary_and_cancels_it() {
    let (p, recorder) = pipeline(HedgingOptions::latency(Duration::from_millis(100)));
    let replicas = Replicas::default();
    let start = Instant::now();
    let outcome = run(&p, &replicas, &[(10_000, true), (50, true)]).await;
    assert_eq!(outcome, Ok("hedge1"));
    assert_eq!(start.elapsed(), Duration::from_millis(150));
    assert_eq!(replicas.started.load(Ordering::SeqCst), 2);
    assert_eq!(
        replicas.cancelled.load(Ordering::SeqCst),
        1,
        "the primary was dropped"
    );
    assert_eq!(recorder.count("hedge_started"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fast_primary_needs_no_hedge() {
    let (p, recorder) = pipeline(HedgingOptions::latency(Duration::from_millis(100)));
    let replicas = Replicas::default();
    assert_eq!(
        run(&p, &replicas, &[(99, true), (1, true)]).await,
        Ok("primary")
    );
    assert_eq!(replicas.started.load(Ordering::SeqCst), 1);
    assert_eq!(recorder.count("hedge_started"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_starts_the_next_at_once() {
    let (p, _) = pipeline(HedgingOptions::latency(Duration::from_secs(10)).max_hedged_attempts(2));
    let replicas = Replicas::default();
    let start = Instant::now();
    let outcome = run(&p, &replicas, &[(10, false), (10, false), (10, true)]).await;
    assert_eq!(outcome, Ok("hedge2"));
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(30),
        "no waiting for the 10 s delay"
    );
}

#[tokio::test(start_paused = true)]
async fn fallback_mode_hedges_only_after_a_failure() {
    let (p, _) = pipeline(HedgingOptions::fallback());
    let replicas = Replicas::default();
    assert_eq!(
        run(&p, &replicas, &[(5_000, true), (1, true)]).await,
        Ok("primary")
    );
    assert_eq!(
        replicas.started.load(Ordering::SeqCst),
        1,
        "slow is not a failure"
    );
    let replicas = Replicas::default();
    assert_eq!(
        run(&p, &replicas, &[(10, false), (1, true)]).await,
        Ok("hedge1")
    );
}

#[tokio::test(start_paused = true)]
async fn parallel_mode_starts_all_and_the_first_acceptable_wins() {
    let (p, _) = pipeline(HedgingOptions::parallel().max_hedged_attempts(3));
    let replicas = Replicas::default();
    let start = Instant::now();
    let outcome = run(
        &p,
        &replicas,
        &[(40, true), (10, false), (20, true), (30, true)],
    )
    .await;
    assert_eq!(outcome, Ok("hedge2"));
    assert_eq!(start.elapsed(), Duration::from_millis(20));
    assert_eq!(replicas.started.load(Ordering::SeqCst), 4);
    assert_eq!(
        replicas.cancelled.load(Ordering::SeqCst),
        2,
        "the two losers still running"
    );
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_last_outcome_is_returned() {
    let (p, _) = pipeline(HedgingOptions::latency(Duration::from_millis(5)).max_hedged_attempts(2));
    let replicas = Replicas::default();
    let outcome = run(&p, &replicas, &[(10, false), (10, false), (10, false)]).await;
    assert_eq!(outcome, Err(Error::Inner("failed")));
    assert_eq!(replicas.started.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn hedged_execution_is_spawnable() {
    let p = Arc::new(
        Pipeline::builder()
            .hedging(HedgingOptions::latency(Duration::from_millis(1)))
            .build()
            .unwrap(),
    );
    let h = tokio::spawn(async move { p.execute(|_| async { Ok::<_, ()>(7) }).await });
    assert_eq!(h.await.unwrap(), Ok(7));
}

#[test]
fn invalid_options_are_rejected_naming_the_field() {
    let e = Hedging::new(HedgingOptions::default().max_hedged_attempts(0)).unwrap_err();
    assert_eq!(e.field, "hedging.max_hedged_attempts");
    let e = Hedging::new(HedgingOptions::latency(Duration::ZERO)).unwrap_err();
    assert_eq!(e.field, "hedging.delay");
}
