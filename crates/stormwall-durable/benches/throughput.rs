//! Durable jobs per second on this machine's disk. Two shapes, one run:
//! - batch: 1,000 concurrent enqueues (each durable when it returns; group commit), then
//!   lease and ack them 500 at a time;
//! - `Worker`: 1,000 concurrent enqueues while a `Worker` with the default options (batch
//!   16) drains them end to end — enqueue → handler → ack — what users run.
//!
//! SQLite always; PostgreSQL too with `--features postgres` (a server started on a free
//! loopback port). Goal: ≥ 10,000 jobs/s on SQLite.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use stormwall::circuit_breaker::InMemoryStore;
use stormwall::pipeline::OnError;
use stormwall_durable::{DurableQueue, QueueOptions, Worker, WorkerOptions};

const JOBS: usize = 1000;

/// Enqueues `JOBS` concurrently (spawned: they commit while the caller goes on).
fn enqueue_all(queue: &DurableQueue, name: &'static str) -> tokio::task::JoinHandle<()> {
    let queue = queue.clone();
    tokio::spawn(async move {
        let enqueues = (0..JOBS).map(|i| {
            let queue = queue.clone();
            async move { queue.enqueue(name, vec![i as u8; 64], None).await.unwrap() }
        });
        futures_util::future::join_all(enqueues).await;
    })
}

fn bench_backend(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    backend: &str,
    queue: DurableQueue,
) {
    g.bench_function(
        format!("{backend}: enqueue 1000 (concurrent) -> lease 500 -> ack"),
        |b| {
            b.to_async(rt).iter(|| {
                let queue = queue.clone();
                async move {
                    enqueue_all(&queue, "batch").await.unwrap();
                    loop {
                        let jobs = queue
                            .lease("batch", "w", 500, Duration::from_secs(30))
                            .await
                            .unwrap();
                        if jobs.is_empty() {
                            break;
                        }
                        assert_eq!(queue.ack_all(&jobs).await.unwrap(), jobs.len());
                    }
                }
            })
        },
    );
    let worker: Worker<OnError, InMemoryStore> = Worker::new(
        queue.clone(),
        "worker",
        WorkerOptions {
            metrics_every: None,
            ..Default::default()
        },
        None,
    );
    let handle = |_job| async { Ok(()) };
    g.bench_function(
        format!("{backend}: Worker (batch 16), enqueue 1000 concurrently -> run -> ack"),
        |b| {
            b.to_async(rt).iter(|| {
                let (queue, worker) = (queue.clone(), &worker);
                async move {
                    let enqueued = enqueue_all(&queue, "worker");
                    let mut done = 0;
                    while done < JOBS {
                        match worker.run_once(&handle).await.unwrap() {
                            0 => tokio::task::yield_now().await,
                            ran => done += ran,
                        }
                    }
                    enqueued.await.unwrap();
                }
            })
        },
    );
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("stormwall-durable-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = c.benchmark_group("durable queue");
    g.throughput(Throughput::Elements(JOBS as u64));
    g.sample_size(10);
    let sqlite = DurableQueue::open(dir.join("bench.db"), QueueOptions::default()).unwrap();
    bench_backend(&mut g, &rt, "SQLite", sqlite);
    #[cfg(feature = "postgres")]
    {
        let server = stormwall_testkit::PostgresServer::start();
        let url = server.database("bench");
        let postgres = rt
            .block_on(DurableQueue::connect_postgres(
                &url,
                QueueOptions::default(),
            ))
            .unwrap();
        bench_backend(&mut g, &rt, "PostgreSQL", postgres);
    }
    g.finish();
    std::fs::remove_dir_all(&dir).ok();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
