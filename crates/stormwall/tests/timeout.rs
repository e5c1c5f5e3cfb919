//! Timeout: total and attempt timeouts, cancellation, shared deadlines, on a paused clock.

mod common;

use common::Recorder;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use stormwall::retry::RetryOptions;
use stormwall::telemetry::Event;
use stormwall::timeout::TimedOut;
use stormwall::{Error, Pipeline};
use tokio::time::{sleep, Instant};

#[tokio::test(start_paused = true)]
async fn fast_operation_is_untouched() {
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let outcome = pipeline
        .execute(|_| async {
            sleep(Duration::from_millis(999)).await;
            Ok::<_, ()>(1)
        })
        .await;
    assert_eq!(outcome, Ok(1));
}

#[tokio::test(start_paused = true)]
async fn slow_operation_is_cancelled_at_the_deadline() {
    let recorder = Recorder::new();
    let pipeline = Pipeline::builder()
        .listener(recorder.clone())
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let outcome = pipeline
        .execute(|_| async {
            sleep(Duration::from_secs(60)).await;
            Ok::<_, ()>(1)
        })
        .await;
    assert_eq!(outcome, Err(Error::Timeout(Duration::from_secs(1))));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(recorder.events().contains(&Event::Timeout(TimedOut {
        timeout: Duration::from_secs(1)
    })));
}

/// Drops a flag when the operation's future is dropped: proves cancellation.
struct DropFlag<'a>(&'a AtomicU32);
impl Drop for DropFlag<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn timing_out_drops_the_operation() {
    let dropped = AtomicU32::new(0);
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_millis(10))
        .build()
        .unwrap();
    let _ = pipeline
        .execute(|_| {
            let flag = DropFlag(&dropped);
            async move {
                let _flag = flag;
                sleep(Duration::from_secs(10)).await;
                Ok::<_, ()>(())
            }
        })
        .await;
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_inside_retry_bounded_by_total() {
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_secs(30))
        .retry(RetryOptions::constant(Duration::from_secs(1)).max_retries(10))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let outcome = pipeline
        .execute(|ctx| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                // Each attempt sees the tighter of the two deadlines.
                assert!(ctx.remaining().unwrap() <= Duration::from_secs(10));
                sleep(Duration::from_secs(100)).await;
                Ok::<_, ()>(())
            }
        })
        .await;
    // Attempts at 0 and 11 time out after 10 s each (then 1 s delay); the third, at 22,
    // would time out at 32, so the total timeout (at 30) cuts it instead.
    assert_eq!(outcome, Err(Error::Timeout(Duration::from_secs(30))));
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn inner_timeout_later_than_outer_never_fires() {
    let recorder = Recorder::new();
    let pipeline = Pipeline::builder()
        .listener(recorder.clone())
        .timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let outcome = pipeline
        .execute(|ctx| async move {
            assert_eq!(ctx.remaining(), Some(Duration::from_secs(1)));
            sleep(Duration::from_secs(10)).await;
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(outcome, Err(Error::Timeout(Duration::from_secs(1))));
    assert_eq!(recorder.count("timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn context_has_no_deadline_without_a_timeout() {
    let pipeline = Pipeline::builder().build().unwrap();
    let remaining = pipeline
        .execute(|ctx| async move { Ok::<_, ()>(ctx.remaining()) })
        .await;
    assert_eq!(remaining, Ok(None));
}

#[tokio::test(start_paused = true)]
async fn nested_timeouts_share_one_timer_and_still_enforce_the_total() {
    // total 1 s → retry every 300 ms → attempt 600 ms: attempt 1 ends at 600 ms, the retry
    // sleeps to 900 ms, attempt 2 is capped by the total — whose own timer must fire.
    let p = Pipeline::builder()
        .timeout(Duration::from_secs(1))
        .retry(
            stormwall::retry::RetryOptions::constant(Duration::from_millis(300))
                .max_retries(10)
                .jitter(stormwall::retry::Jitter::None),
        )
        .timeout(Duration::from_millis(600))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let outcome = p
        .execute(|_| async {
            std::future::pending::<()>().await;
            Ok::<(), ()>(())
        })
        .await;
    assert!(matches!(outcome, Err(Error::Timeout(_))), "{outcome:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn an_outer_timeout_arms_once_the_inner_one_that_covered_it_is_gone() {
    let inner = Pipeline::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let outer = Pipeline::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let outcome = outer
        .execute(|_| async {
            // While this runs, the inner 100 ms timer covers the outer deadline...
            let _ = inner
                .execute(|_| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>(())
                })
                .await;
            // ...then nothing does: the outer timeout must arm its own timer.
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(outcome, Err(Error::Timeout(Duration::from_secs(1))));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// Strategies share one clock reading per poll of the pipeline (a deadline computed in the
/// first poll and one computed after a retry's delay are each exact): the reading never
/// outlives the poll it was taken in.
#[tokio::test(start_paused = true)]
async fn deadlines_are_computed_from_the_time_of_the_poll_they_start_in() {
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_secs(60))
        .retry(
            RetryOptions::constant(Duration::from_secs(1))
                .max_retries(2)
                .jitter(stormwall::retry::Jitter::None),
        )
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let deadlines = std::sync::Mutex::new(Vec::new());
    let outcome = pipeline
        .execute(|ctx| {
            deadlines.lock().unwrap().push(ctx.deadline().unwrap() - t0);
            async move {
                // Time passes inside an attempt, too.
                sleep(Duration::from_millis(300)).await;
                Err::<(), _>("fail")
            }
        })
        .await;
    assert!(outcome.is_err());
    // Attempt n starts at (n - 1) × (300 ms + 1 s); its deadline is 5 s after that.
    assert_eq!(
        *deadlines.lock().unwrap(),
        [
            Duration::from_millis(5_000),
            Duration::from_millis(6_300),
            Duration::from_millis(7_600)
        ]
    );
}
