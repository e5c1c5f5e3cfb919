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

/// A queue with the default options on a fresh file `name`.
fn open(name: &str) -> DurableQueue {
    DurableQueue::open(db(name), QueueOptions::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_is_idempotent_and_a_lease_comes_back_after_its_visibility_timeout() {
    let queue = open("basic");
    common::enqueue_is_idempotent_and_a_lease_comes_back_after_its_visibility_timeout(queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_jobs_are_purged_after_their_retention_and_their_keys_free_again() {
    let queue = open("purge-done");
    common::done_jobs_are_purged_after_their_retention_and_their_keys_free_again(queue).await;
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
    common::a_poison_job_lands_in_dead_letters_after_max_attempts(open("poison")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_targets_breaker_is_open_the_worker_calls_nothing() {
    common::while_the_targets_breaker_is_open_the_worker_calls_nothing(open("breaker")).await;
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

/// The child process of the poison test: drains `orders` with the default batch (16) and
/// hangs in the job `poison` (after saying so in the calls log) until it is killed; exits
/// once nothing is ready or leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_child() {
    let Ok(path) = std::env::var("STORMWALL_POISON_DB") else {
        return;
    };
    let calls = std::path::PathBuf::from(format!("{path}.calls"));
    let queue = DurableQueue::open(&path, QueueOptions::default()).unwrap();
    let worker: Worker<stormwall::pipeline::OnError, stormwall::circuit_breaker::InMemoryStore> =
        Worker::new(
            queue.clone(),
            "orders",
            WorkerOptions {
                name: format!("child-{}", std::process::id()),
                visibility: Duration::from_millis(200),
                max_attempts: 3,
                ..Default::default()
            },
            None,
        );
    let handle = |job: stormwall_durable::Job| {
        let calls = calls.clone();
        async move {
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&calls)
                .unwrap();
            std::io::Write::write_all(&mut log, &job.payload).unwrap();
            std::io::Write::write_all(&mut log, b"\n").unwrap();
            log.sync_all().unwrap();
            if job.payload == b"poison" {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    };
    loop {
        if worker.run_once(&handle).await.unwrap() == 0 {
            let depth = queue.depth("orders").await.unwrap();
            if depth.ready + depth.leased == 0 {
                return;
            }
            // The poison job's lease has not run out yet.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_every_time_becomes_a_dead_letter() {
    let path = db("poison-crash");
    let calls = std::path::PathBuf::from(format!("{}.calls", path.display()));
    let _ = std::fs::remove_file(&calls);
    let queue = DurableQueue::open(&path, QueueOptions::default()).unwrap();
    // The poison job in the middle of one batch: five jobs before it in the batch, ten
    // after it.
    let innocent: Vec<String> = (1..=15).map(|i| format!("job-{i}")).collect();
    for job in innocent[..5]
        .iter()
        .map(String::as_str)
        .chain(["poison"])
        .chain(innocent[5..].iter().map(String::as_str))
    {
        queue.enqueue("orders", job, Some(job)).await.unwrap();
    }
    let poison_calls = || {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == "poison")
            .count()
    };
    let started = Instant::now();
    let mut killed = 0;
    loop {
        assert!(killed < 10, "the poison job stopped killing workers");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "poison_child", "--nocapture", "--test-threads=1"])
            .env("STORMWALL_POISON_DB", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill it (as a crash would) once it is inside the poison job; or it finishes.
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "the child failed: {status}");
                break true;
            }
            if poison_calls() > killed {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
                break false;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if finished {
            break;
        }
    }
    assert_eq!(killed, 3, "it ran max_attempts (3) times, then never again");
    let dead = queue.dead_letters("orders").await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1.as_deref(), Some("poison"));
    let error = dead[0].2.clone().unwrap_or_default();
    assert!(error.starts_with("lease expired 3 times"), "{error}");
    // The rest of its batch is done, not dead: after the first crash every job of the
    // batch is suspect and leased alone, so the poison job's attempts are its own. A job
    // that ran before the crash ran again (at least once), no job more than twice.
    let depth = queue.depth("orders").await.unwrap();
    assert_eq!((depth.done, depth.ready, depth.leased), (15, 0, 0));
    let log = std::fs::read_to_string(&calls).unwrap();
    for job in &innocent {
        let runs = log.lines().filter(|l| l == job).count();
        assert!((1..=2).contains(&runs), "{job} ran {runs} times");
    }
}

/// A database written before leases were counted (schema 1) is upgraded in place: its
/// jobs stay, and their expired leases start counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_upgraded_in_place() {
    let path = db("v1");
    let queue = DurableQueue::open(&path, QueueOptions::default()).unwrap();
    queue
        .enqueue("q", b"kept".to_vec(), Some("k"))
        .await
        .unwrap();
    drop(queue);
    // As version 1 made it: no index on `expired_leases`, no column.
    sqlite(&path, "DROP INDEX stormwall_jobs_suspect");
    sqlite(
        &path,
        "ALTER TABLE stormwall_jobs DROP COLUMN expired_leases",
    );
    sqlite(
        &path,
        "UPDATE stormwall_meta SET value = '1' WHERE key = 'schema_version'",
    );
    let queue = DurableQueue::open(
        &path,
        QueueOptions {
            max_attempts: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let leased = queue
        .lease("q", "w", 10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(leased[0].payload, b"kept");
    let started = Instant::now();
    while queue.dead_letters("q").await.unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        queue
            .lease("q", "w", 10, Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dead = queue.dead_letters("q").await.unwrap();
    assert!(
        dead[0]
            .2
            .as_deref()
            .unwrap_or_default()
            .starts_with("lease expired 1 time ("),
        "{dead:?}"
    );
}

/// Another connection holding the write lock (another process, on a shared file) makes
/// callers fail with the typed wait timeout within its bound, not hang; once it lets go,
/// the queue works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_fails_callers_within_the_wait_timeout() {
    use stormwall_durable::{StorageTimeouts, TimedOut};
    let path = db("locked");
    let wait = Duration::from_millis(300);
    let queue = DurableQueue::open(
        &path,
        QueueOptions {
            timeouts: StorageTimeouts {
                wait,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    queue.enqueue("q", b"before".to_vec(), None).await.unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    for attempt in ["enqueue", "lease"] {
        let started = Instant::now();
        let result = match attempt {
            "enqueue" => queue.enqueue("q", b"x".to_vec(), None).await.map(|_| ()),
            _ => queue
                .lease("q", "w", 10, Duration::from_secs(30))
                .await
                .map(|_| ()),
        };
        let elapsed = started.elapsed();
        assert!(
            matches!(result, Err(QueueError::Timeout { what: TimedOut::Wait, after }) if after == wait),
            "{attempt}: {result:?}"
        );
        assert!(
            elapsed >= wait && elapsed < wait + Duration::from_millis(1500),
            "{attempt}: {elapsed:?}"
        );
    }
    other.execute_batch("COMMIT").unwrap();
    queue.enqueue("q", b"after".to_vec(), None).await.unwrap();
    assert_eq!(queue.depth("q").await.unwrap().ready, 2);
}

/// The gauges a dashboard reads: `stormwall_queue_depth{queue,state}`.
fn ready_gauge(snapshotter: &metrics_util::debugging::Snapshotter) -> Option<f64> {
    use metrics_util::debugging::DebugValue;
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            let key = key.key();
            let ready = key.name() == "stormwall_queue_depth"
                && key
                    .labels()
                    .any(|l| l.key() == "state" && l.value() == "ready");
            match value {
                DebugValue::Gauge(g) if ready => Some(g.into_inner()),
                _ => None,
            }
        })
}

/// Without anyone calling `depth()`, a running worker keeps the depth gauges current.
#[tokio::test(flavor = "current_thread")]
async fn a_running_worker_keeps_the_queue_gauges_current() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let queue = open("gauges");
    for i in 0..3u8 {
        queue.enqueue("orders", vec![i], None).await.unwrap();
    }
    let worker: Worker<stormwall::pipeline::OnError, stormwall::circuit_breaker::InMemoryStore> =
        Worker::new(
            queue.clone(),
            "orders",
            WorkerOptions {
                batch: 1,
                metrics_every: Some(Duration::ZERO),
                ..Default::default()
            },
            None,
        );
    let handle = |_job| async { Ok(()) };
    for left in [2.0, 1.0, 0.0] {
        worker.run_once(&handle).await.unwrap();
        assert_eq!(ready_gauge(&snapshotter), Some(left));
    }
    // While a handler runs (here: until the test lets it finish), a running worker exports
    // the gauges on its timer: jobs enqueued behind its back show before the round ends.
    let timed: Worker<stormwall::pipeline::OnError, stormwall::circuit_breaker::InMemoryStore> =
        Worker::new(
            queue.clone(),
            "orders",
            WorkerOptions {
                batch: 1,
                metrics_every: Some(Duration::from_millis(20)),
                ..Default::default()
            },
            None,
        );
    queue.enqueue("orders", vec![9], None).await.unwrap();
    let (started, finish) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let slow = {
        let (started, finish) = (started.clone(), finish.clone());
        move |_job| {
            let (started, finish) = (started.clone(), finish.clone());
            async move {
                started.notify_one();
                finish.notified().await;
                Ok(())
            }
        }
    };
    let check = async {
        started.notified().await;
        for i in 0..2u8 {
            queue.enqueue("orders", vec![i], None).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while ready_gauge(&snapshotter) != Some(2.0) {
            assert!(
                Instant::now() < deadline,
                "the gauges stayed stale while the handler ran"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        finish.notify_one();
    };
    tokio::select! {
        result = timed.run_until(slow, std::future::pending()) => panic!("{result:?}"),
        () = check => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_lease_keeps_expiring_becomes_a_dead_letter() {
    common::a_job_whose_lease_keeps_expiring_becomes_a_dead_letter(
        DurableQueue::open(
            db("lease-expiry"),
            QueueOptions {
                max_attempts: 2,
                ..Default::default()
            },
        )
        .unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_probes_after_the_break_and_drains_when_the_target_is_back() {
    common::a_worker_probes_after_the_break_and_drains_when_the_target_is_back(open("probe")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_for_later_accepts_the_order_and_keeps_the_payment_durably() {
    common::queue_for_later_accepts_the_order_and_keeps_the_payment_durably(open("later")).await;
}

/// Options outside their documented ranges are refused, naming the option; none panics
/// (a `wait` past SQLite's 32-bit busy timeout used to panic inside rusqlite).
#[tokio::test]
async fn options_out_of_range_are_typed_errors_naming_the_option() {
    let path = db("options");
    let refused = |options: QueueOptions| match DurableQueue::open(&path, options) {
        Err(QueueError::InvalidOption(e)) => e.to_string(),
        other => panic!("{other:?}"),
    };
    let timeouts = stormwall_durable::StorageTimeouts::default();
    for (options, field) in [
        (
            QueueOptions {
                max_batch: 0,
                ..Default::default()
            },
            "QueueOptions::max_batch",
        ),
        (
            QueueOptions {
                max_attempts: 0,
                ..Default::default()
            },
            "QueueOptions::max_attempts",
        ),
        (
            QueueOptions {
                timeouts: stormwall_durable::StorageTimeouts {
                    wait: Duration::MAX,
                    ..timeouts
                },
                ..Default::default()
            },
            "QueueOptions::timeouts.wait",
        ),
        (
            QueueOptions {
                timeouts: stormwall_durable::StorageTimeouts {
                    statement: Duration::ZERO,
                    ..timeouts
                },
                ..Default::default()
            },
            "QueueOptions::timeouts.statement",
        ),
    ] {
        let message = refused(options);
        assert!(message.starts_with(field), "{message}");
    }
    let queue = DurableQueue::open(&path, QueueOptions::default()).unwrap();
    let worker: Worker<stormwall::pipeline::OnError, stormwall::circuit_breaker::InMemoryStore> =
        Worker::new(
            queue,
            "q",
            WorkerOptions {
                batch: 0,
                ..Default::default()
            },
            None,
        );
    match worker.run_once(&|_job| async { Ok(()) }).await {
        Err(QueueError::InvalidOption(e)) => assert_eq!(e.field, "WorkerOptions::batch"),
        other => panic!("{other:?}"),
    }
}
