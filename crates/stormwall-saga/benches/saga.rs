//! Throughput of the saga crate on SQLite (synchronous = FULL: each commit fsynced):
//! a three-step saga end to end, an event append, an aggregate load (snapshot + tail),
//! and an idempotent replay through the tower layer.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use criterion::{criterion_group, criterion_main, Criterion};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stormwall::Pipeline;
use stormwall_saga::{
    Aggregate, EventStore, ExpectedVersion, IdempotencyLayer, IdempotencyOptions, Orchestrator,
    OrchestratorOptions, SagaDefinition, SqliteStore,
};
use tower::ServiceExt;

fn store(name: &str) -> SqliteStore {
    let dir = std::env::temp_dir().join(format!("stormwall-saga-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    SqliteStore::open(path).unwrap()
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Counter(i64);

impl Aggregate for Counter {
    type Event = i64;
    fn apply(&mut self, e: &i64) {
        self.0 += e;
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("saga (SQLite)");

    let order = SagaDefinition::new("order")
        .step(
            "inventory",
            |_| async { Ok(Value::Null) },
            |_| async { Ok(Value::Null) },
        )
        .step(
            "payment",
            |_| async { Ok(Value::Null) },
            |_| async { Ok(Value::Null) },
        )
        .step_without_compensation("shipping", |_| async { Ok(Value::Null) });
    let sagas = Orchestrator::new(
        store("sagas"),
        Pipeline::builder().build().unwrap(),
        OrchestratorOptions::default(),
    )
    .register(order)
    .unwrap();
    let next = AtomicU64::new(0);
    g.bench_function("three-step saga, persisted after each step", |b| {
        b.iter(|| {
            let id = format!("o-{}", next.fetch_add(1, Ordering::Relaxed));
            rt.block_on(sagas.start("order", &id, Value::Null)).unwrap()
        })
    });

    let events = EventStore::new(store("events")).snapshot_every(100);
    g.bench_function("append one event (any version)", |b| {
        b.iter(|| {
            rt.block_on(events.append("counter", ExpectedVersion::Any, &[1i64]))
                .unwrap()
        })
    });
    let loaded = rt.block_on(events.load::<Counter>("acct")).unwrap();
    let mut loaded = Some(loaded);
    for _ in 0..250 {
        loaded = Some(
            rt.block_on(events.commit("acct", loaded.take().unwrap(), vec![1]))
                .unwrap(),
        );
    }
    g.bench_function(
        "load an aggregate of 250 events (snapshot at 200 + 50)",
        |b| b.iter(|| rt.block_on(events.load::<Counter>("acct")).unwrap()),
    );

    let app = axum::Router::new()
        .route("/orders", axum::routing::post(|| async { "created" }))
        .layer(IdempotencyLayer::new(
            store("idempotency"),
            IdempotencyOptions::default(),
        ));
    let request = || {
        http::Request::post("/orders")
            .header("idempotency-key", "k-1")
            .header("authorization", "Bearer client-1")
            .body(axum::body::Body::from("2 lamps"))
            .unwrap()
    };
    rt.block_on(app.clone().oneshot(request())).unwrap();
    g.bench_function("Idempotency-Key repeat answered from the store", |b| {
        b.iter(|| rt.block_on(app.clone().oneshot(request())).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = saga;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = benches
}
criterion_main!(saga);
