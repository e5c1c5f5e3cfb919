//! The queue's behaviour, the same on every backend: each function gets a fresh queue.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall_durable::{DurableQueue, QueueError, Worker, WorkerOptions};

pub async fn enqueue_is_idempotent_and_a_lease_comes_back_after_its_visibility_timeout(
    queue: DurableQueue,
) {
    let first = queue
        .enqueue("payments", b"charge 7".to_vec(), Some("order-7"))
        .await
        .unwrap();
    let again = queue
        .enqueue("payments", b"charge 7".to_vec(), Some("order-7"))
        .await
        .unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.id, again.id);
    assert_eq!(queue.depth("payments").await.unwrap().ready, 1);

    let leased = queue
        .lease("payments", "w1", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].payload, b"charge 7");
    assert_eq!(leased[0].idempotency_key.as_deref(), Some("order-7"));
    // Invisible to others while leased...
    assert!(queue
        .lease("payments", "w2", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // ...and back once the lease expired (w1 crashed).
    let retaken = queue
        .lease("payments", "w2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(retaken.len(), 1);
    assert_eq!(retaken[0].attempts, 2);
    assert!(
        matches!(queue.ack(&leased[0]).await, Err(QueueError::NotLeased(_))),
        "w1 lost it"
    );
    queue.ack(&retaken[0]).await.unwrap();
    let depth = queue.depth("payments").await.unwrap();
    assert_eq!((depth.ready, depth.leased, depth.done), (0, 0, 1));
}

pub async fn a_poison_job_lands_in_dead_letters_after_max_attempts(queue: DurableQueue) {
    queue
        .enqueue("q", b"poison".to_vec(), Some("p"))
        .await
        .unwrap();
    queue
        .enqueue("q", b"fine".to_vec(), Some("f"))
        .await
        .unwrap();
    let options = WorkerOptions {
        max_attempts: 3,
        backoff: Duration::from_millis(1),
        idle: Duration::from_millis(5),
        ..Default::default()
    };
    let worker: Worker<stormwall::pipeline::OnError, stormwall::circuit_breaker::InMemoryStore> =
        Worker::new(queue.clone(), "q", options, None);
    let handle = |job: stormwall_durable::Job| async move {
        if job.payload == b"poison" {
            Err("cannot parse".to_string())
        } else {
            Ok(())
        }
    };
    for _ in 0..20 {
        worker.run_once(&handle).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dead = queue.dead_letters("q").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.as_deref(), Some("p"));
    assert_eq!(dead[0].2.as_deref(), Some("cannot parse"));
    assert_eq!(queue.depth("q").await.unwrap().done, 1);
    assert_eq!(queue.requeue_dead("q").await.unwrap(), 1);
    assert_eq!(queue.depth("q").await.unwrap().ready, 1);
    // Still poison: dead again after three more attempts, then purged.
    for _ in 0..20 {
        worker.run_once(&handle).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(queue.purge_dead("q").await.unwrap(), 1);
    assert!(queue.dead_letters("q").await.unwrap().is_empty());
}

pub async fn while_the_targets_breaker_is_open_the_worker_calls_nothing(queue: DurableQueue) {
    for i in 0..5 {
        queue.enqueue("q", vec![i], None).await.unwrap();
    }
    let breaker =
        CircuitBreaker::new(CircuitBreakerOptions::new().consecutive_failures(1)).unwrap();
    breaker.isolate();
    let calls = Arc::new(AtomicU32::new(0));
    let worker = Worker::new(
        queue.clone(),
        "q",
        WorkerOptions {
            idle: Duration::from_millis(5),
            ..Default::default()
        },
        Some(breaker.clone()),
    );
    let counted = calls.clone();
    let run = worker.run_until(
        move |_job| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        },
        tokio::time::sleep(Duration::from_millis(600)),
    );
    let closer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "no call while the circuit is open"
        );
        breaker.close();
    };
    let (ran, ()) = tokio::join!(run, closer);
    ran.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "every job ran once the circuit closed"
    );
}

pub async fn queue_for_later_accepts_the_order_and_keeps_the_payment_durably(queue: DurableQueue) {
    use stormwall::fallback::FallbackOptions;
    use stormwall::pipeline::Properties;
    use stormwall::{Context, Pipeline};
    use stormwall_durable::{Deferred, QueueForLater};
    let payments = Pipeline::builder()
        .fallback(FallbackOptions::action(QueueForLater::new(
            queue.clone(),
            "payments",
            "PaymentPending",
        )))
        .build()
        .unwrap();
    let work = |i: u32| {
        Context::new().with_properties(Properties::new().with(Deferred {
            payload: format!("charge order-{i}").into_bytes(),
            idempotency_key: Some(format!("order-{i}")),
        }))
    };
    // The payment service is down: both orders are accepted, their payments kept (the
    // repeated order-1 once).
    for i in [1, 2, 1] {
        let status = payments
            .execute_with(work(i), |_| async {
                Err::<&str, _>("payment service down")
            })
            .await;
        assert_eq!(status, Ok("PaymentPending"));
    }
    // Up: charged at once, nothing queued.
    assert_eq!(
        payments
            .execute_with(work(3), |_| async { Ok::<_, &str>("Charged") })
            .await,
        Ok("Charged")
    );
    // Without work attached, the failure stays a failure.
    assert!(payments
        .execute(|_| async { Err::<&str, _>("down") })
        .await
        .is_err());
    let jobs = queue
        .lease("payments", "w", 10, Duration::from_secs(30))
        .await
        .unwrap();
    let payloads: Vec<_> = jobs
        .iter()
        .map(|j| String::from_utf8_lossy(&j.payload).into_owned())
        .collect();
    assert_eq!(payloads, ["charge order-1", "charge order-2"]);
}

/// The worker's own failures open the breaker; it then waits, probes with one job when the
/// break ends, and drains everything once the target is back — no other traffic needed.
pub async fn a_worker_probes_after_the_break_and_drains_when_the_target_is_back(
    queue: DurableQueue,
) {
    for i in 0..20u8 {
        queue.enqueue("q", vec![i], None).await.unwrap();
    }
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::new()
            .consecutive_failures(2)
            .break_duration(Duration::from_millis(50)),
    )
    .unwrap();
    let opened = Arc::new(AtomicU32::new(0));
    let seen = opened.clone();
    breaker.on_transition(move |t| {
        if t.to == stormwall::circuit_breaker::CircuitState::Open {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let calls = Arc::new(AtomicU32::new(0));
    let down_until = std::time::Instant::now() + Duration::from_millis(300);
    let worker = Worker::new(
        queue.clone(),
        "q",
        WorkerOptions {
            idle: Duration::from_millis(5),
            backoff: Duration::from_millis(1),
            max_attempts: 100,
            ..Default::default()
        },
        Some(breaker.clone()),
    );
    let counted = calls.clone();
    let handle = move |_job| {
        counted.fetch_add(1, Ordering::SeqCst);
        let up = std::time::Instant::now() >= down_until;
        async move {
            if up {
                Ok(())
            } else {
                Err("down".to_string())
            }
        }
    };
    let drained = async {
        while queue.depth("q").await.unwrap().done < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let stop = async {
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .expect("the queue drains once the target is back");
    };
    worker.run_until(handle, stop).await.unwrap();
    assert!(
        opened.load(Ordering::SeqCst) >= 1,
        "the worker's failures opened the circuit"
    );
    // While down (300 ms): two failures open it, then one probe per 50 ms break — about a
    // dozen calls, not a call per job per millisecond.
    let calls = calls.load(Ordering::SeqCst);
    assert!((20..60).contains(&calls), "{calls} calls");
}

pub async fn done_jobs_are_purged_after_their_retention_and_their_keys_free_again(
    queue: DurableQueue,
) {
    let kept = queue.enqueue("q", b"a".to_vec(), Some("k1")).await.unwrap();
    queue.enqueue("q", b"b".to_vec(), Some("k2")).await.unwrap();
    queue
        .enqueue("other", b"c".to_vec(), Some("k1"))
        .await
        .unwrap();
    let leased = queue
        .lease("q", "w", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    let done = leased.iter().find(|j| j.id == kept.id).unwrap();
    queue.ack(done).await.unwrap();
    let other = queue
        .lease("other", "w", 10, Duration::from_secs(30))
        .await
        .unwrap();
    queue.ack(&other[0]).await.unwrap();

    // Younger than the retention: kept, and its key still deduplicates.
    assert_eq!(
        queue
            .purge_done("q", Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert!(
        queue
            .enqueue("q", b"a".to_vec(), Some("k1"))
            .await
            .unwrap()
            .duplicate
    );

    // Past it: only the done job of this queue goes; the leased one and the other queue's
    // done job stay.
    assert_eq!(queue.purge_done("q", Duration::ZERO).await.unwrap(), 1);
    let depth = queue.depth("q").await.unwrap();
    assert_eq!((depth.ready, depth.leased, depth.done), (0, 1, 0));
    assert_eq!(queue.depth("other").await.unwrap().done, 1);

    // The key is free again: the same enqueue now makes a new job.
    let again = queue.enqueue("q", b"a".to_vec(), Some("k1")).await.unwrap();
    assert!(!again.duplicate);
    assert_ne!(again.id, kept.id);
}

/// A queue opened with `max_attempts: 2`: a job leased twice and never acked or failed
/// (its worker died on it) is not leased a third time; its dead letter says why.
pub async fn a_job_whose_lease_keeps_expiring_becomes_a_dead_letter(queue: DurableQueue) {
    queue
        .enqueue("q", b"crash".to_vec(), Some("c"))
        .await
        .unwrap();
    let visibility = Duration::from_millis(50);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut leases = Vec::new();
    // Leased, then the lease runs out; leased again once it has.
    while leases.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "{leases:?}");
        let worker = format!("w{}", leases.len() + 1);
        leases.extend(queue.lease("q", &worker, 10, visibility).await.unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        leases.iter().map(|j| j.attempts).collect::<Vec<_>>(),
        [1, 2]
    );
    // The second lease runs out too: a dead letter, not a third lease.
    while queue.dead_letters("q").await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        assert!(queue
            .lease("q", "w3", 10, visibility)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead = queue.dead_letters("q").await.unwrap();
    let error = dead[0].2.clone().unwrap_or_default();
    assert!(
        error.starts_with("lease expired 2 times (attempt 2 was the last allowed): worker \"w2\""),
        "{error}"
    );
    // Requeued by hand, it runs again from attempt 1.
    assert_eq!(queue.requeue_dead("q").await.unwrap(), 1);
    let again = queue.lease("q", "w4", 10, visibility).await.unwrap();
    assert_eq!(again[0].attempts, 1);
    queue.ack(&again[0]).await.unwrap();
}
