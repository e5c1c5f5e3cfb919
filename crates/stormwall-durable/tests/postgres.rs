//! The durable queue on a real PostgreSQL server (started here on a free loopback port):
//! the same suite as SQLite, plus what only many replicas show — two workers never run
//! the same job at once, concurrent duplicate enqueues add one job — and bad input.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall_durable::{
    DurableQueue, Job, QueueError, QueueOptions, StorageTimeouts, TimedOut, Worker, WorkerOptions,
};
use stormwall_testkit::PostgresServer;

mod common;

async fn connect(url: &str) -> DurableQueue {
    DurableQueue::connect_postgres(url, QueueOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_suite_passes_on_postgres() {
    let server = PostgresServer::start();
    common::enqueue_is_idempotent_and_a_lease_comes_back_after_its_visibility_timeout(
        connect(&server.database("basic")).await,
    )
    .await;
    common::a_poison_job_lands_in_dead_letters_after_max_attempts(
        connect(&server.database("poison")).await,
    )
    .await;
    common::while_the_targets_breaker_is_open_the_worker_calls_nothing(
        connect(&server.database("breaker")).await,
    )
    .await;
    common::queue_for_later_accepts_the_order_and_keeps_the_payment_durably(
        connect(&server.database("later")).await,
    )
    .await;
    common::a_worker_probes_after_the_break_and_drains_when_the_target_is_back(
        connect(&server.database("probe")).await,
    )
    .await;
    common::done_jobs_are_purged_after_their_retention_and_their_keys_free_again(
        connect(&server.database("purge_done")).await,
    )
    .await;
    common::a_job_whose_lease_keeps_expiring_becomes_a_dead_letter(
        DurableQueue::connect_postgres(
            &server.database("lease_expiry"),
            QueueOptions {
                max_attempts: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_two_replicas_never_run_the_same_job_at_the_same_time() {
    let server = PostgresServer::start();
    let url = server.database("drain");
    // Two replicas: each its own pool, as two processes would have.
    let (a, b) = (connect(&url).await, connect(&url).await);
    const JOBS: u32 = 400;
    for i in 0..JOBS {
        let queue = if i % 2 == 0 { &a } else { &b };
        queue
            .enqueue(
                "orders",
                i.to_be_bytes().to_vec(),
                Some(&format!("job-{i}")),
            )
            .await
            .unwrap();
    }
    let running = Arc::new(Mutex::new(HashSet::<i64>::new()));
    let runs = Arc::new(Mutex::new(HashMap::<i64, u32>::new()));
    let overlaps = Arc::new(AtomicU32::new(0));
    let by_worker = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let options = |name: &str| WorkerOptions {
        name: name.into(),
        batch: 8,
        visibility: Duration::from_secs(60),
        idle: Duration::from_millis(5),
        ..Default::default()
    };
    let workers = [
        Worker::<stormwall::pipeline::OnError, stormwall::circuit_breaker::InMemoryStore>::new(
            a.clone(),
            "orders",
            options("w1"),
            None,
        ),
        Worker::new(b.clone(), "orders", options("w2"), None),
    ];
    let handle = |job: Job| {
        let (running, runs, overlaps, by_worker) = (
            running.clone(),
            runs.clone(),
            overlaps.clone(),
            by_worker.clone(),
        );
        async move {
            if !running.lock().unwrap().insert(job.id) {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            *runs.lock().unwrap().entry(job.id).or_default() += 1;
            *by_worker
                .lock()
                .unwrap()
                .entry(job.worker.clone())
                .or_default() += 1;
            // Hold the job a moment so that the other worker has every chance to take it.
            tokio::time::sleep(Duration::from_millis(1)).await;
            running.lock().unwrap().remove(&job.id);
            Ok(())
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_done = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|done| *done).await;
        }
    };
    let drained = async {
        let wait = async {
            while a.depth("orders").await.unwrap().done < u64::from(JOBS) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let finished = tokio::time::timeout(Duration::from_secs(60), wait).await;
        stop.send_replace(true);
        finished.expect("the queue drains");
    };
    let (first, second, ()) = tokio::join!(
        workers[0].run_until(handle, until_done()),
        workers[1].run_until(handle, until_done()),
        drained
    );
    first.unwrap();
    second.unwrap();
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "a job ran twice at once"
    );
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len() as u32, JOBS);
    assert!(runs.values().all(|&n| n == 1), "every job ran exactly once");
    let by_worker = by_worker.lock().unwrap();
    assert!(
        by_worker.get("w1").copied().unwrap_or(0) > 0
            && by_worker.get("w2").copied().unwrap_or(0) > 0,
        "both workers drained: {by_worker:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_enqueues_on_two_replicas_add_one_job() {
    let server = PostgresServer::start();
    let url = server.database("dups");
    let (a, b) = (connect(&url).await, connect(&url).await);
    let enqueues = (0..40).map(|i| {
        let queue = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            queue
                .enqueue("pay", b"charge".to_vec(), Some("order-1"))
                .await
        }
    });
    let results: Vec<_> = futures_util::future::join_all(enqueues)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results.iter().all(|r| r.id == results[0].id));
    assert_eq!(a.depth("pay").await.unwrap().ready, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_an_unreachable_database_are_typed_errors() {
    let mut server = PostgresServer::start();
    let url = server.database("bad");
    let queue = DurableQueue::connect_postgres(
        &url,
        QueueOptions {
            max_payload_bytes: 4,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        queue.enqueue("q", b"too big".to_vec(), None).await,
        Err(QueueError::PayloadTooLarge { size: 7, limit: 4 })
    ));
    assert!(matches!(
        DurableQueue::connect_postgres("postgres://x:-1/", QueueOptions::default()).await,
        Err(QueueError::InvalidUrl { .. })
    ));
    let nobody = format!(
        "postgres://postgres@127.0.0.1:{}/x",
        stormwall_testkit::free_port()
    );
    assert!(matches!(
        DurableQueue::connect_postgres(&nobody, QueueOptions::default()).await,
        Err(QueueError::Unreachable(_))
    ));

    // The server goes away: enqueue fails with a typed error, nothing is claimed done;
    // back, the same queue works again and holds exactly what was acknowledged.
    queue.enqueue("q", b"1".to_vec(), Some("a")).await.unwrap();
    server.stop();
    assert!(queue.enqueue("q", b"2".to_vec(), Some("b")).await.is_err());
    server.restart();
    let mut back = Err(QueueError::Closed);
    for _ in 0..50 {
        back = queue.enqueue("q", b"3".to_vec(), Some("c")).await;
        if back.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    back.unwrap();
    assert_eq!(queue.depth("q").await.unwrap().ready, 2);

    // A schema from a newer stormwall, or a corrupt one, is refused by name.
    server.psql(
        "bad",
        "UPDATE stormwall_meta SET value = '99' WHERE key = 'schema_version'",
    );
    assert!(matches!(
        DurableQueue::connect_postgres(&url, QueueOptions::default()).await,
        Err(QueueError::NewerSchema { found: 99, .. })
    ));
    server.psql(
        "bad",
        "UPDATE stormwall_meta SET value = 'x' WHERE key = 'schema_version'",
    );
    let corrupt = DurableQueue::connect_postgres(&url, QueueOptions::default()).await;
    assert!(
        matches!(&corrupt, Err(QueueError::CorruptSchema(v)) if v == "x"),
        "{corrupt:?}"
    );
}

/// A listener that accepts connections and never answers: a blackholed server.
async fn blackhole() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// Whether `result` is the timeout `what` of `after`, reached within `after` plus a
/// margin for a loaded machine.
fn timed_out<T: std::fmt::Debug>(
    result: Result<T, QueueError>,
    what: TimedOut,
    after: Duration,
    elapsed: Duration,
) {
    match result {
        Err(QueueError::Timeout { what: w, after: a }) if w == what && a == after => {}
        other => panic!("expected a {what} timeout of {after:?}, got {other:?}"),
    }
    assert!(
        elapsed >= after && elapsed < after + Duration::from_millis(1500),
        "the {what} timeout of {after:?} fired after {elapsed:?}"
    );
}

/// A database that stops answering makes callers fail with a typed timeout within the
/// configured bound — connecting, waiting for the pool, running a statement — instead of
/// hanging; when it answers again, the same queue works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_database_fails_callers_within_the_configured_bounds() {
    let timeouts = StorageTimeouts {
        connect: Duration::from_secs(1),
        wait: Duration::from_millis(400),
        statement: Duration::from_secs(2),
    };
    let options = QueueOptions {
        connections: 1,
        timeouts,
        ..Default::default()
    };
    // A server that accepts the connection and never answers its startup.
    let silent = blackhole().await;
    let started = std::time::Instant::now();
    let connected =
        DurableQueue::connect_postgres(&format!("postgres://postgres@{silent}/x"), options.clone())
            .await;
    timed_out(
        connected,
        TimedOut::Connect,
        timeouts.connect,
        started.elapsed(),
    );

    // A real server behind `stormwall chaos`, then a `timeout` toxic: nothing passes.
    let server = PostgresServer::start();
    let chaos = stormwall_chaos::ChaosServer::new();
    let proxy = chaos
        .create(stormwall_chaos::ProxySpec::new(
            "postgres",
            format!("127.0.0.1:{}", server.port()),
        ))
        .await
        .unwrap();
    server.database("blackholed");
    let url = format!("postgres://postgres@{}/blackholed", proxy.listen);
    let queue = DurableQueue::connect_postgres(&url, options).await.unwrap();
    queue
        .enqueue("q", b"before".to_vec(), Some("a"))
        .await
        .unwrap();
    let toxic = chaos
        .add_toxic(
            "postgres",
            stormwall_chaos::Toxic::new(stormwall_chaos::ToxicKind::Timeout { timeout: 0 }),
        )
        .unwrap();

    // One connection in the pool: the first enqueue holds it, waiting for an answer that
    // never comes; the second waits for the pool.
    let started = std::time::Instant::now();
    let (first, second) = tokio::join!(
        async {
            let r = queue.enqueue("q", b"held".to_vec(), Some("b")).await;
            (r, started.elapsed())
        },
        async {
            tokio::task::yield_now().await;
            let r = queue.enqueue("q", b"waits".to_vec(), Some("c")).await;
            (r, started.elapsed())
        }
    );
    timed_out(first.0, TimedOut::Statement, timeouts.statement, first.1);
    timed_out(second.0, TimedOut::Wait, timeouts.wait, second.1);
    // The connection that timed out is closed, not reused: the next call opens a new one
    // through the blackhole, and gives up connecting.
    let started = std::time::Instant::now();
    let leased = queue.lease("q", "w", 10, Duration::from_secs(30)).await;
    timed_out(
        leased,
        TimedOut::Connect,
        timeouts.connect,
        started.elapsed(),
    );

    // The database answers again: the same queue works, and holds what was acknowledged.
    chaos.remove_toxic("postgres", &toxic.name).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let leased = loop {
        match queue.lease("q", "w", 10, Duration::from_secs(30)).await {
            Ok(jobs) => break jobs,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
    };
    let payloads: HashSet<Vec<u8>> = leased.into_iter().map(|j| j.payload).collect();
    assert!(payloads.contains(b"before".as_slice()), "{payloads:?}");
    assert!(!payloads.contains(b"waits".as_slice()), "never sent");
}
