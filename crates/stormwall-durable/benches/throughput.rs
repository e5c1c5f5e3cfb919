//! Durable jobs per second on this machine's disk: 1,000 concurrent enqueues (each durable
//! when it returns; group commit), then lease and ack them all. Goal: ≥ 10,000 jobs/s.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use stormwall_durable::{DurableQueue, QueueOptions};

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("stormwall-durable-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let queue = DurableQueue::open(dir.join("bench.db"), QueueOptions::default()).unwrap();
    let mut g = c.benchmark_group("durable queue");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(10);
    g.bench_function("enqueue 1000 (concurrent) -> lease -> ack", |b| {
        b.to_async(&rt).iter(|| {
            let queue = queue.clone();
            async move {
                let enqueues = (0..1000).map(|i| {
                    let queue = queue.clone();
                    async move {
                        queue
                            .enqueue("bench", vec![i as u8; 64], None)
                            .await
                            .unwrap()
                    }
                });
                futures_util::future::join_all(enqueues).await;
                loop {
                    let jobs = queue
                        .lease("bench", "w", 500, Duration::from_secs(30))
                        .await
                        .unwrap();
                    if jobs.is_empty() {
                        break;
                    }
                    assert_eq!(queue.ack_all(&jobs).await.unwrap(), jobs.len());
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
