//! The durable queue on a real SQLite file: enqueue/lease/ack, idempotency, visibility
//! timeout, dead letters, breaker-aware workers, and a worker process killed mid-drain.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall_durable::{DurableQueue, QueueError, QueueOptions, Worker, WorkerOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stormwall-durable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_is_idempotent_and_a_lease_comes_back_after_its_visibility_timeout() {
    let queue = DurableQueue::open(db("basic"), QueueOptions::default()).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error() {
    let path = db("bad");
    let queue = DurableQueue::open(
        &path,
        QueueOptions {
            max_payload_bytes: 4,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        queue.enqueue("q", b"too big".to_vec(), None).await,
        Err(QueueError::PayloadTooLarge { size: 7, limit: 4 })
    ));
    drop(queue);
    let c = rusqlite_set_schema(&path, "99");
    drop(c);
    assert!(matches!(
        DurableQueue::open(&path, QueueOptions::default()),
        Err(QueueError::NewerSchema { found: 99, .. })
    ));
}

fn rusqlite_set_schema(path: &std::path::Path, version: &str) -> std::process::Output {
    std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c=sqlite3.connect('{}'); c.execute(\"UPDATE stormwall_meta SET value='{version}' WHERE key='schema_version'\"); c.commit()",
            path.display()
        ))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_lands_in_dead_letters_after_max_attempts() {
    let queue = DurableQueue::open(db("poison"), QueueOptions::default()).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_targets_breaker_is_open_the_worker_calls_nothing() {
    let queue = DurableQueue::open(db("breaker"), QueueOptions::default()).unwrap();
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

/// The target of the crash test: remembers each idempotency key it applied.
async fn target() -> (std::net::SocketAddr, Arc<Mutex<(HashSet<String>, u32)>>) {
    let seen = Arc::new(Mutex::new((HashSet::new(), 0u32)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(key)) = lines.next_line().await {
                    {
                        let mut s = state.lock().unwrap();
                        s.1 += 1;
                        s.0.insert(key);
                    }
                    if write.write_all(b"ok\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends each job's key to the target; `Ok` once it answered.
async fn apply(target: &str, job: &stormwall_durable::Job) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    let key = job.idempotency_key.clone().unwrap_or_default();
    stream
        .write_all(format!("{key}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    if answer.trim() == "ok" {
        Ok(())
    } else {
        Err("no answer".into())
    }
}

/// The child process of the crash test (a no-op when the harness runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let (Ok(path), Ok(target)) = (
        std::env::var("STORMWALL_QUEUE_DB"),
        std::env::var("STORMWALL_QUEUE_TARGET"),
    ) else {
        return;
    };
    let queue = DurableQueue::open(&path, QueueOptions::default()).unwrap();
    let enqueues = (0..1000).map(|i| {
        let queue = queue.clone();
        async move {
            queue
                .enqueue(
                    "orders",
                    format!("{i}").into_bytes(),
                    Some(&format!("order-{i}")),
                )
                .await
        }
    });
    for result in futures_util::future::join_all(enqueues).await {
        result.unwrap();
    }
    println!("ENQUEUED");
    let worker: Worker<stormwall::pipeline::OnError, stormwall::circuit_breaker::InMemoryStore> =
        Worker::new(
            queue,
            "orders",
            WorkerOptions {
                name: "child".into(),
                visibility: Duration::from_millis(300),
                ..Default::default()
            },
            None,
        );
    let target = target.as_str();
    worker
        .run_until(
            |job| async move { apply(target, &job).await },
            std::future::pending(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_drain_loses_nothing_and_every_effect_happens_once() {
    let path = db("crash");
    let (addr, seen) = target().await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("STORMWALL_QUEUE_DB", &path)
        .env("STORMWALL_QUEUE_TARGET", addr.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (as a crash would) once it is well into the queue.
    let started = Instant::now();
    while seen.lock().unwrap().1 < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the child made progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let applied_before = seen.lock().unwrap().0.len();
    assert!(
        applied_before < 1000,
        "killed mid-drain ({applied_before} applied)"
    );

    // A new worker finishes: the child's leased jobs come back after their visibility.
    let queue = DurableQueue::open(&path, QueueOptions::default()).unwrap();
    let worker: Worker<stormwall::pipeline::OnError, stormwall::circuit_breaker::InMemoryStore> =
        Worker::new(
            queue.clone(),
            "orders",
            WorkerOptions {
                name: "survivor".into(),
                idle: Duration::from_millis(20),
                ..Default::default()
            },
            None,
        );
    let target = addr.to_string();
    let target = target.as_str();
    let started = Instant::now();
    loop {
        worker
            .run_once(&|job| async move { apply(target, &job).await })
            .await
            .unwrap();
        let depth = queue.depth("orders").await.unwrap();
        if depth.done == 1000 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{depth:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (keys, calls) = {
        let s = seen.lock().unwrap();
        (s.0.clone(), s.1)
    };
    assert_eq!(keys.len(), 1000, "none lost");
    assert!((0..1000).all(|i| keys.contains(&format!("order-{i}"))));
    // At-least-once delivery: a job the child had applied but not acked ran again; the
    // target's deduplication by key makes its effect happen once.
    assert!(calls >= 1000);
    println!("crash test: {calls} deliveries for 1000 jobs, 1000 effects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_for_later_accepts_the_order_and_keeps_the_payment_durably() {
    use stormwall::fallback::FallbackOptions;
    use stormwall::pipeline::Properties;
    use stormwall::{Context, Pipeline};
    use stormwall_durable::{Deferred, QueueForLater};
    let queue = DurableQueue::open(db("later"), QueueOptions::default()).unwrap();
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
