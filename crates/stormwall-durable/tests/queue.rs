//! The durable queue on a real SQLite file: enqueue/lease/ack, idempotency, visibility
//! timeout, dead letters, breaker-aware workers, and a worker process killed mid-drain.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stormwall_durable::{DurableQueue, QueueError, QueueOptions, Worker, WorkerOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod common;

fn db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stormwall-durable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_is_idempotent_and_a_lease_comes_back_after_its_visibility_timeout() {
    common::enqueue_is_idempotent_and_a_lease_comes_back_after_its_visibility_timeout(
        DurableQueue::open(db("basic"), QueueOptions::default()).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_jobs_are_purged_after_their_retention_and_their_keys_free_again() {
    common::done_jobs_are_purged_after_their_retention_and_their_keys_free_again(
        DurableQueue::open(db("purge-done"), QueueOptions::default()).unwrap(),
    )
    .await;
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
    // A row another program wrote wrong is a dead letter that says why; the queue's other
    // jobs still run.
    queue.enqueue("q", b"ok".to_vec(), None).await.unwrap();
    sqlite(
        &path,
        "INSERT INTO stormwall_jobs (queue, payload, run_at, created_at) VALUES ('q', 42, 0, 0)",
    );
    let jobs = queue
        .lease("q", "w", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].payload, b"ok");
    let dead = queue.dead_letters("q").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].2.as_deref(),
        Some("corrupt row: payload is Integer")
    );
    drop(queue);
    let c = rusqlite_set_schema(&path, "99");
    drop(c);
    assert!(matches!(
        DurableQueue::open(&path, QueueOptions::default()),
        Err(QueueError::NewerSchema { found: 99, .. })
    ));
}

fn rusqlite_set_schema(path: &std::path::Path, version: &str) -> std::process::Output {
    sqlite(
        path,
        &format!("UPDATE stormwall_meta SET value='{version}' WHERE key='schema_version'"),
    )
}

/// Runs `sql` on the database as another program would (Python's sqlite3).
fn sqlite(path: &std::path::Path, sql: &str) -> std::process::Output {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, sys; c=sqlite3.connect('{}'); c.execute(sys.argv[1]); c.commit()",
            path.display()
        ))
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_lands_in_dead_letters_after_max_attempts() {
    common::a_poison_job_lands_in_dead_letters_after_max_attempts(
        DurableQueue::open(db("poison"), QueueOptions::default()).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_targets_breaker_is_open_the_worker_calls_nothing() {
    common::while_the_targets_breaker_is_open_the_worker_calls_nothing(
        DurableQueue::open(db("breaker"), QueueOptions::default()).unwrap(),
    )
    .await;
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
async fn a_worker_probes_after_the_break_and_drains_when_the_target_is_back() {
    common::a_worker_probes_after_the_break_and_drains_when_the_target_is_back(
        DurableQueue::open(db("probe"), QueueOptions::default()).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_for_later_accepts_the_order_and_keeps_the_payment_durably() {
    common::queue_for_later_accepts_the_order_and_keeps_the_payment_durably(
        DurableQueue::open(db("later"), QueueOptions::default()).unwrap(),
    )
    .await;
}
