//! Events per second end to end: appended in a transaction → (relay →) consumer group →
//! acknowledged, on PostgreSQL (the outbox table as the subscription) and on Redis
//! Streams (a SQLite outbox, its relay, a Redis consumer group). Each iteration appends
//! `EVENTS` events, one transaction each, and ends when the consumer has acknowledged the
//! last; the servers are real (started on free loopback ports).
//!
//! `cargo bench -p stormwall-saga --features postgres,redis --bench choreography -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stormwall::Pipeline;
use stormwall_saga::choreography::{
    Consumer, ConsumerOptions, Message, PostgresOutbox, PostgresSubscription, RedisStreams, Relay,
    SqliteOutbox, SqliteOutboxSource, Subscription,
};
use tokio::sync::Notify;

const EVENTS: u64 = 200;

/// A consumer in the background counting acknowledged events.
fn consume<S: Subscription + 'static>(
    runtime: &tokio::runtime::Runtime,
    subscription: S,
) -> (Arc<AtomicU64>, Arc<Notify>) {
    let (count, notify) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()));
    let (c, n) = (count.clone(), notify.clone());
    runtime.spawn(async move {
        let mut consumer = Consumer::new(
            subscription,
            Pipeline::builder().build().unwrap(),
            ConsumerOptions {
                batch: 100,
                ..Default::default()
            },
        );
        loop {
            let Ok(settled) = consumer
                .poll_once(&|_: Message| async { Ok::<(), String>(()) })
                .await
            else {
                return; // the server stopped (the bench is over)
            };
            c.fetch_add(settled as u64, Ordering::SeqCst);
            n.notify_one();
        }
    });
    (count, notify)
}

/// The benchmark group: 10 samples of `EVENTS` events each.
fn group(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("choreography");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    group.throughput(Throughput::Elements(EVENTS));
    group
}

/// `iters` times: `EVENTS` events appended one by one by `append`, then waits until the
/// consumer has acknowledged them; the time it all took.
fn timed(
    runtime: &tokio::runtime::Runtime,
    iters: u64,
    count: &AtomicU64,
    notify: &Notify,
    mut append: impl AsyncFnMut(Message),
) -> Duration {
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            let target = count.load(Ordering::SeqCst) + EVENTS;
            for i in 0..EVENTS {
                append(Message::new("tick", format!("key-{}", i % 16), &i).unwrap()).await;
            }
            until(count, notify, target).await;
        }
        started.elapsed()
    })
}

async fn until(count: &AtomicU64, notify: &Notify, target: u64) {
    while count.load(Ordering::SeqCst) < target {
        let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
    }
}

fn postgres(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let server = stormwall_testkit::PostgresServer::start();
    let url = server.database("bench");
    let mut client = runtime.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        PostgresOutbox::install(&mut client).await.unwrap();
        client
    });
    let subscription = runtime
        .block_on(PostgresSubscription::connect(&url, "bench"))
        .unwrap();
    let (count, notify) = consume(runtime, subscription);
    let mut group = group(c);
    group.bench_function("postgres: append tx -> SKIP LOCKED group -> ack", |b| {
        b.iter_custom(|iters| {
            timed(runtime, iters, &count, &notify, async |m| {
                let tx = client.transaction().await.unwrap();
                PostgresOutbox::append(&tx, &m).await.unwrap();
                tx.commit().await.unwrap();
            })
        })
    });
    group.finish();
}

fn redis(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let redis = stormwall_testkit::RedisServer::start();
    let dir = std::env::temp_dir().join(format!("stormwall-bench-choreo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("service.db");
    let mut db = rusqlite::Connection::open(&path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.pragma_update(None, "synchronous", "FULL").unwrap();
    SqliteOutbox::install(&db).unwrap();
    let streams = RedisStreams::new(&redis.url(), "bench").unwrap();
    let relay = Relay::new(
        SqliteOutboxSource::open(&path)
            .unwrap()
            .poll_interval(Duration::from_millis(2)),
        streams.clone(),
        Pipeline::builder().build().unwrap(),
    );
    runtime.spawn(async move { relay.run(std::future::pending()).await });
    let (count, notify) = consume(runtime, streams.subscribe("bench", "c1"));
    let mut group = group(c);
    group.bench_function(
        "redis: SQLite append tx -> relay -> XREADGROUP group -> XACK",
        |b| {
            b.iter_custom(|iters| {
                timed(runtime, iters, &count, &notify, async |m| {
                    let tx = db.transaction().unwrap();
                    SqliteOutbox::append(&tx, &m).unwrap();
                    tx.commit().unwrap();
                })
            })
        },
    );
    group.finish();
    std::fs::remove_dir_all(&dir).ok();
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    postgres(c, &runtime);
    redis(c, &runtime);
}

criterion_group!(choreography, benches);
criterion_main!(choreography);
