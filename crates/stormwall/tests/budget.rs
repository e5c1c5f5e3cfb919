//! Retry budget and adaptive throttling, on a paused clock.

mod common;

use common::Recorder;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use stormwall::retry::{
    AdaptiveThrottle, AdaptiveThrottleOptions, RetryBudget, RetryBudgetOptions, RetryOptions,
};
use stormwall::{Error, Pipeline};

fn budget(percent: f64, min_per_second: u32) -> RetryBudget {
    RetryBudget::new(RetryBudgetOptions {
        percent_can_retry: percent,
        min_retries_per_second: min_per_second,
        ..Default::default()
    })
    .unwrap()
}

/// Runs `n` executions against a dependency that always fails; returns the calls it saw.
async fn calls_against_a_dead_dependency(retry: RetryOptions, n: u32) -> u32 {
    let p = Pipeline::builder().retry(retry).build().unwrap();
    let calls = AtomicU32::new(0);
    for _ in 0..n {
        let _ = p
            .execute(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>("down") }
            })
            .await;
    }
    calls.load(Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn budget_caps_retries_at_its_percent() {
    let retry = RetryOptions::constant(Duration::from_millis(1)).max_retries(3);
    let unbudgeted = calls_against_a_dead_dependency(retry.clone(), 1000).await;
    assert_eq!(unbudgeted, 4000, "3 retries each without a budget");
    let budgeted = calls_against_a_dead_dependency(retry.budget(budget(0.2, 0)), 1000).await;
    // 1000 first attempts plus at most 20 % of them as retries.
    assert!((1190..=1200).contains(&budgeted), "{budgeted}");
}

#[tokio::test(start_paused = true)]
async fn minimum_lets_a_quiet_client_retry() {
    // No percentage at all: only the floor of 1 retry per second over the 10 s ttl.
    let retry = RetryOptions::constant(Duration::from_millis(1))
        .max_retries(3)
        .budget(budget(0.0, 1));
    let calls = calls_against_a_dead_dependency(retry, 20).await;
    assert_eq!(calls, 20 + 10);
}

#[tokio::test(start_paused = true)]
async fn spent_retries_come_back_after_the_ttl() {
    let b = budget(0.0, 1);
    for _ in 0..10 {
        assert!(b.try_withdraw());
    }
    assert!(!b.try_withdraw(), "the floor of 10 is spent");
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(b.try_withdraw());
    assert!(b.balance() >= 8.0);
}

#[tokio::test(start_paused = true)]
async fn empty_budget_fails_with_budget_exhausted_and_an_event() {
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .retry(RetryOptions::constant(Duration::from_millis(1)).budget(budget(0.0, 0)))
        .build()
        .unwrap();
    let outcome = p.execute(|_| async { Err::<(), _>("down") }).await;
    assert_eq!(outcome, Err(Error::BudgetExhausted));
    assert_eq!(recorder.count("retry_budget_exhausted"), 1);
    assert_eq!(recorder.count("retry"), 0);
}

#[tokio::test(start_paused = true)]
async fn empty_budget_returns_an_ok_outcome_it_would_have_retried_as_it_is() {
    // A 503 answered as `Ok`, retried by the predicate: still the best answer there is.
    let p = Pipeline::builder()
        .retry(
            RetryOptions::constant(Duration::from_millis(1))
                .budget(budget(0.0, 0))
                .handle(|r: &Result<u16, Error<&str>>| matches!(r, Ok(503))),
        )
        .build()
        .unwrap();
    assert_eq!(p.execute(|_| async { Ok::<_, &str>(503) }).await, Ok(503));
}

#[tokio::test(start_paused = true)]
async fn an_outer_retry_does_not_retry_an_inner_budget_refusal() {
    // The budget said "no more load": the retry around it must not undo that.
    let calls = AtomicU32::new(0);
    let p = Pipeline::builder()
        .retry(RetryOptions::constant(Duration::from_millis(1)).max_retries(3))
        .retry(RetryOptions::constant(Duration::from_millis(1)).budget(budget(0.0, 0)))
        .build()
        .unwrap();
    let outcome = p
        .execute(|_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>("down") }
        })
        .await;
    assert_eq!(outcome, Err(Error::BudgetExhausted));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

/// Sends `n` calls through an adaptive throttle to a dependency that accepts a call when
/// `accept(i)`; returns (calls that reached it, calls throttled locally).
async fn through_throttle(n: u32, accept: impl Fn(u32) -> bool + Sync) -> (u32, u32) {
    let p = Pipeline::builder()
        .strategy(AdaptiveThrottle::new(AdaptiveThrottleOptions::default().seed(11)).unwrap())
        .build()
        .unwrap();
    let (reached, throttled) = (AtomicU32::new(0), AtomicU32::new(0));
    for i in 0..n {
        let outcome = p
            .execute(|_| {
                reached.fetch_add(1, Ordering::Relaxed);
                let ok = accept(i);
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("overloaded")
                    }
                }
            })
            .await;
        if outcome == Err(Error::Throttled) {
            throttled.fetch_add(1, Ordering::Relaxed);
        }
    }
    (
        reached.load(Ordering::Relaxed),
        throttled.load(Ordering::Relaxed),
    )
}

#[tokio::test(start_paused = true)]
async fn throttle_sheds_almost_everything_when_the_dependency_rejects_everything() {
    let (reached, throttled) = through_throttle(1000, |_| false).await;
    assert_eq!(reached + throttled, 1000);
    // p = n / (n + 1) with no accepts: about ln(1000) calls get through.
    assert!(
        reached < 50,
        "{reached} reached a dependency rejecting everything"
    );
}

#[tokio::test(start_paused = true)]
async fn throttle_never_rejects_while_at_least_half_are_accepted() {
    // k = 2: up to half the calls may fail before any local rejection.
    let (reached, throttled) = through_throttle(1000, |i| i % 2 == 0).await;
    assert_eq!((reached, throttled), (1000, 0));
}

#[tokio::test(start_paused = true)]
async fn throttle_sheds_most_but_not_all_when_most_are_rejected() {
    // The dependency rejects 80 % of what reaches it: below k's 50 %, so the throttle sheds
    // most calls, but the accepted fifth keeps more going than a dead dependency gets.
    let (reached, throttled) = through_throttle(2000, |i| i % 5 == 0).await;
    let (reached_dead, _) = through_throttle(2000, |_| false).await;
    assert_eq!(reached + throttled, 2000);
    assert!(throttled > 1000, "{throttled} throttled");
    assert!(
        reached > 2 * reached_dead,
        "{reached} reached vs {reached_dead} when dead"
    );
}

#[test]
fn invalid_options_are_rejected_naming_the_field() {
    let e = RetryBudget::new(RetryBudgetOptions {
        percent_can_retry: -1.0,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "retry_budget.percent_can_retry");
    let e = RetryBudget::new(RetryBudgetOptions {
        ttl: Duration::from_millis(10),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "retry_budget.ttl");
    let e = AdaptiveThrottle::new(AdaptiveThrottleOptions::default().k(0.5)).unwrap_err();
    assert_eq!(e.field, "adaptive_throttle.k");
}
