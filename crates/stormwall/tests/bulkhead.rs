//! Bulkhead: concurrency bound, FIFO queue, queue timeout, cancellation, per-key isolation.

mod common;

use common::Recorder;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall::bulkhead::{
    Bulkhead, BulkheadOptions, BulkheadRejected, BulkheadRejection, KeyedBulkhead,
};
use stormwall::pipeline::Strategy as PipelineStrategy;
use stormwall::telemetry::Event;
use stormwall::{Context, Error, Pipeline};
use tokio::time::{advance, sleep};

/// Counts calls in flight and remembers the most seen at once.
#[derive(Default)]
struct Gauge {
    now: AtomicU32,
    peak: AtomicU32,
}

/// Counts a call out of the gauge when dropped (also on cancellation).
struct Leave<'a>(&'a AtomicU32);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gauge {
    fn enter(&self) -> Leave<'_> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        Leave(&self.now)
    }

    async fn hold(&self, d: Duration) {
        let _leave = self.enter();
        sleep(d).await;
    }
}

impl Gauge {
    /// Like `hold`, but yields `times` instead of sleeping (for the multi-thread runtime).
    async fn hold_yielding(&self, times: usize) {
        let _leave = self.enter();
        for _ in 0..times {
            tokio::task::yield_now().await;
        }
    }
}

/// Polls `fut` at most `polls` times, then drops it (a cancellation at that point).
async fn poll_at_most<F: std::future::Future>(fut: F, polls: usize) {
    let mut fut = std::pin::pin!(fut);
    let mut left = polls;
    std::future::poll_fn(|cx| {
        if left == 0 {
            return std::task::Poll::Ready(());
        }
        left -= 1;
        fut.as_mut().poll(cx).map(|_| ())
    })
    .await;
}

async fn run_for<S: PipelineStrategy<(), ()>>(
    p: &Pipeline<S>,
    gauge: &Gauge,
    d: Duration,
) -> Result<(), Error<()>> {
    p.execute(|_| async move {
        gauge.hold(d).await;
        Ok(())
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_concurrency_in_flight() {
    let p = Pipeline::builder()
        .bulkhead(BulkheadOptions::new(3).queue_limit(100))
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let calls: Vec<_> = (0..10)
        .map(|_| run_for(&p, &gauge, Duration::from_secs(1)))
        .collect();
    let started = tokio::time::Instant::now();
    let results = futures_join_all(calls).await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 3);
    // 10 calls of 1 s, 3 at a time: 4 rounds.
    assert_eq!(started.elapsed(), Duration::from_secs(4));
}

/// Joins futures on the current task (no spawn), in order.
async fn futures_join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in pinned.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test(start_paused = true)]
async fn queued_calls_run_first_come_first_served() {
    let bulkhead = Bulkhead::new(BulkheadOptions::new(1).queue_limit(10)).unwrap();
    let p = Arc::new(
        Pipeline::builder()
            .bulkhead(bulkhead.clone())
            .build()
            .unwrap(),
    );
    let order = Arc::new(Mutex::new(vec![]));
    let mut handles = vec![];
    for i in 0..5 {
        let (p, order) = (p.clone(), order.clone());
        handles.push(tokio::spawn(async move {
            p.execute(|_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(i);
                    sleep(Duration::from_millis(100)).await;
                    Ok::<_, ()>(())
                }
            })
            .await
        }));
        // Arrive in index order.
        tokio::task::yield_now().await;
    }
    assert_eq!(bulkhead.in_use(), 1);
    assert_eq!(bulkhead.queued(), 4);
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!((bulkhead.in_use(), bulkhead.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn full_queue_rejects_at_once_with_an_event() {
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .bulkhead(BulkheadOptions::new(1).queue_limit(1))
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let d = Duration::from_secs(1);
    let (a, b, c) = tokio::join!(run_for(&p, &gauge, d), run_for(&p, &gauge, d), async {
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let r = run_for(&p, &gauge, d).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "rejected without waiting"
        );
        r
    });
    assert_eq!((a, b, c), (Ok(()), Ok(()), Err(Error::BulkheadFull)));
    assert_eq!(
        recorder.events()[0],
        Event::BulkheadRejected(BulkheadRejected {
            reason: BulkheadRejection::Full,
            in_use: 1,
            queued: 1
        })
    );
    assert_eq!(recorder.count("bulkhead_rejected"), 1);
    assert_eq!(recorder.count("execution_completed"), 3);
}

#[tokio::test(start_paused = true)]
async fn no_queue_by_default() {
    let p = Pipeline::builder()
        .bulkhead(BulkheadOptions::new(1))
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let d = Duration::from_secs(1);
    let (a, b) = tokio::join!(run_for(&p, &gauge, d), run_for(&p, &gauge, d));
    assert_eq!((a, b), (Ok(()), Err(Error::BulkheadFull)));
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_rejects_after_waiting_that_long() {
    let recorder = Recorder::new();
    let bulkhead = Bulkhead::new(
        BulkheadOptions::new(1)
            .queue_limit(5)
            .queue_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(run_for(&p, &gauge, Duration::from_secs(1)), async {
        let r = run_for(&p, &gauge, Duration::from_secs(1)).await;
        (r, started.elapsed())
    });
    assert_eq!(a, Ok(()));
    assert_eq!(b, (Err(Error::BulkheadFull), Duration::from_millis(300)));
    assert_eq!(bulkhead.queued(), 0, "the timed-out caller left the queue");
    assert!(recorder.events().iter().any(|e| matches!(
        e,
        Event::BulkheadRejected(BulkheadRejected {
            reason: BulkheadRejection::QueueTimeout,
            ..
        })
    )));
}

#[tokio::test(start_paused = true)]
async fn cancelled_calls_free_their_slot_and_their_queue_place() {
    let bulkhead = Bulkhead::new(BulkheadOptions::new(1).queue_limit(1)).unwrap();
    let p = Arc::new(
        Pipeline::builder()
            .bulkhead(bulkhead.clone())
            .build()
            .unwrap(),
    );
    let gauge = Arc::new(Gauge::default());
    let spawn = |d| {
        let (p, gauge) = (p.clone(), gauge.clone());
        tokio::spawn(async move { run_for(&p, &gauge, d).await })
    };
    let running = spawn(Duration::from_secs(100));
    tokio::task::yield_now().await;
    let queued = spawn(Duration::from_secs(100));
    tokio::task::yield_now().await;
    assert_eq!((bulkhead.in_use(), bulkhead.queued()), (1, 1));
    queued.abort();
    let _ = queued.await;
    assert_eq!((bulkhead.in_use(), bulkhead.queued()), (1, 0));
    running.abort();
    let _ = running.await;
    assert_eq!((bulkhead.in_use(), bulkhead.queued()), (0, 0));
    // Both places are usable again.
    let (a, b) = tokio::join!(
        run_for(&p, &gauge, Duration::from_millis(1)),
        run_for(&p, &gauge, Duration::from_millis(1))
    );
    assert_eq!((a, b), (Ok(()), Ok(())));
}

#[tokio::test(start_paused = true)]
async fn keyed_bulkheads_isolate_tenants_and_bound_memory() {
    let keyed = KeyedBulkhead::new(BulkheadOptions::new(1), 2).unwrap();
    let p = Pipeline::builder().bulkhead(keyed.clone()).build().unwrap();
    let gauge = Gauge::default();
    let call = |key: &'static str, d| {
        let (p, gauge) = (&p, &gauge);
        async move {
            p.execute_with(Context::new().with_key(key), |_| async move {
                gauge.hold(d).await;
                Ok::<_, ()>(())
            })
            .await
        }
    };
    let long = Duration::from_secs(1);
    // Tenant a is saturated; b still gets through; a third tenant finds no idle key to evict.
    let (a1, a2, b, c) = tokio::join!(call("a", long), call("a", long), call("b", long), async {
        tokio::task::yield_now().await;
        call("c", long).await
    });
    assert_eq!(
        (a1, a2, b, c),
        (
            Ok(()),
            Err(Error::BulkheadFull),
            Ok(()),
            Err(Error::BulkheadFull)
        )
    );
    assert_eq!(keyed.keys(), 2);
    // Now a and b are idle: c evicts them.
    assert_eq!(call("c", long).await, Ok(()));
    assert!(keyed.keys() <= 2);
}

#[test]
fn invalid_options_are_rejected() {
    let e = Bulkhead::new(BulkheadOptions::new(0)).unwrap_err();
    assert_eq!(e.field, "bulkhead.max_concurrency");
    let e = Bulkhead::new(BulkheadOptions::new(1).queue_timeout(Duration::ZERO)).unwrap_err();
    assert_eq!(e.field, "bulkhead.queue_timeout");
    let e = KeyedBulkhead::new(BulkheadOptions::new(1), 0).unwrap_err();
    assert_eq!(e.field, "bulkhead.max_keys");
}

#[derive(Debug, Clone)]
enum Op {
    Start { millis: u64 },
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..50).prop_map(|millis| Op::Start { millis }),
        2 => any::<usize>().prop_map(Op::Cancel),
        3 => (1u64..40).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Under random arrivals, durations, cancellations (running or queued) and time steps,
    /// no more than `max` calls ever run, and every slot comes back.
    #[test]
    fn never_more_than_max_in_flight_under_random_cancellation(
        max in 1u32..4,
        queue in 0u32..4,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let bulkhead = Bulkhead::new(BulkheadOptions::new(max).queue_limit(queue)).unwrap();
            let p = Arc::new(Pipeline::builder().bulkhead(bulkhead.clone()).build().unwrap());
            let gauge = Arc::new(Gauge::default());
            let mut tasks = vec![];
            for op in ops {
                match op {
                    Op::Start { millis } => {
                        let (p, gauge) = (p.clone(), gauge.clone());
                        tasks.push(tokio::spawn(async move {
                            run_for(&p, &gauge, Duration::from_millis(millis)).await
                        }));
                    }
                    Op::Cancel(i) if !tasks.is_empty() => {
                        let t = tasks.swap_remove(i % tasks.len());
                        t.abort();
                        let _ = t.await;
                    }
                    Op::Cancel(_) => {}
                    Op::Advance(ms) => advance(Duration::from_millis(ms)).await,
                }
                tokio::task::yield_now().await;
                prop_assert!(gauge.peak.load(Ordering::SeqCst) <= max);
                prop_assert!(bulkhead.in_use() <= max);
                prop_assert!(bulkhead.queued() <= queue);
            }
            for t in tasks {
                let _ = t.await;
            }
            prop_assert_eq!((bulkhead.in_use(), bulkhead.queued()), (0, 0));
            Ok(())
        })?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_bulkhead_holds_its_bound_and_returns_every_slot() {
    let bulkhead = Bulkhead::new(BulkheadOptions::new(4).queue_limit(8)).unwrap();
    let p = Arc::new(
        Pipeline::builder()
            .bulkhead(bulkhead.clone())
            .build()
            .unwrap(),
    );
    let gauge = Arc::new(Gauge::default());
    let mut handles = vec![];
    for task in 0..16u64 {
        let (p, gauge) = (p.clone(), gauge.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(task);
            for _ in 0..500 {
                let call = p.execute(|_| async {
                    // Counted out even when the call is cancelled mid-way.
                    gauge.hold_yielding(3).await;
                    Ok::<_, ()>(())
                });
                if rng.bool() {
                    // Cancel some calls at whatever point they reached.
                    poll_at_most(call, rng.usize(0..6)).await;
                } else {
                    let _ = call.await;
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert!(gauge.peak.load(Ordering::SeqCst) <= 4);
    assert_eq!((bulkhead.in_use(), bulkhead.queued()), (0, 0));
}
