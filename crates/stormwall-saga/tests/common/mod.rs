//! The behaviour every backend must have: each function gets a fresh, empty store.
#![allow(dead_code)]

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall::retry::RetryOptions;
use stormwall::Pipeline;
use stormwall_saga::{
    Aggregate, EventStore, ExpectedVersion, IdempotencyLayer, IdempotencyOptions, IdempotencyScope,
    Orchestrator, OrchestratorOptions, Projection, RecordedEvent, SagaDefinition, SagaError,
    SagaEvent, SagaStatus, Store,
};
use tower::ServiceExt;

fn order_app<S: Store>(store: S, options: IdempotencyOptions, calls: Arc<AtomicU32>) -> Router {
    Router::new()
        .route(
            "/orders",
            post(move |body: String| {
                let calls = calls.clone();
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    (StatusCode::CREATED, format!("order #{n} for {body}"))
                }
            }),
        )
        .layer(IdempotencyLayer::new(store, options))
}

async fn send(app: &Router, key: &str, body: &str) -> (StatusCode, String, bool) {
    send_as(app, "Bearer client-a", key, body).await
}

/// A request from the client whose `Authorization` is `client`.
async fn send_as(app: &Router, client: &str, key: &str, body: &str) -> (StatusCode, String, bool) {
    let request = Request::post("/orders")
        .header("idempotency-key", key)
        .header("authorization", client)
        .body(Body::from(body.to_owned()))
        .unwrap();
    answer(app, request).await
}

/// The status, body and whether it was a replay.
async fn answer(app: &Router, request: Request<Body>) -> (StatusCode, String, bool) {
    let response = app.clone().oneshot(request).await.unwrap();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        replayed,
    )
}

/// 100 concurrent requests with one key: the handler runs once and all get its response;
/// another payload with the key: 422; a repeat while running (no wait): 409; after the
/// expiry the key runs again.
pub async fn idempotency_keys(store: impl Store) {
    let now = Arc::new(AtomicI64::new(1_000_000));
    let clock = now.clone();
    let calls = Arc::new(AtomicU32::new(0));
    let waiting = order_app(
        store.clone(),
        IdempotencyOptions {
            in_flight_wait: Duration::from_secs(30),
            clock: Arc::new(move || clock.load(Ordering::SeqCst)),
            ..Default::default()
        },
        calls.clone(),
    );
    let all =
        futures_util::future::join_all((0..100).map(|_| send(&waiting, "k-1", "2 lamps"))).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler ran once: {:?}",
        all[0]
    );
    for (status, body, _) in &all {
        assert_eq!(
            (*status, body.as_str()),
            (StatusCode::CREATED, "order #1 for 2 lamps")
        );
    }
    assert_eq!(all.iter().filter(|(_, _, replayed)| *replayed).count(), 99);

    let (status, body, _) = send(&waiting, "k-1", "3 lamps").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("k-1"), "{body}");

    // Without waiting: a repeat while the first runs is told so. (On the same clock: one
    // store, one time — a layer on the real clock would purge the test clock's keys.)
    let clock = now.clone();
    let eager = order_app(
        store.clone(),
        IdempotencyOptions {
            clock: Arc::new(move || clock.load(Ordering::SeqCst)),
            ..Default::default()
        },
        calls.clone(),
    );
    let (first, second) = tokio::join!(send(&eager, "k-2", "a chair"), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        send(&eager, "k-2", "a chair").await
    });
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(second.0, StatusCode::CONFLICT);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // 24 h later the record has expired: the key runs again.
    now.fetch_add(24 * 3600 * 1000 - 1, Ordering::SeqCst);
    assert!(
        send(&waiting, "k-1", "2 lamps").await.2,
        "still replayed just before expiry"
    );
    now.fetch_add(1, Ordering::SeqCst);
    let (status, body, replayed) = send(&waiting, "k-1", "2 lamps").await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false));
    assert_eq!(body, "order #3 for 2 lamps");

    // A caller that gives up (its future dropped mid-handler) releases the key: the
    // retry runs instead of meeting 409 until the key expires.
    let dropped =
        tokio::time::timeout(Duration::from_millis(10), send(&eager, "k-3", "a desk")).await;
    assert!(dropped.is_err());
    let mut retry = send(&eager, "k-3", "a desk").await;
    for _ in 0..100 {
        if retry.0 != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        retry = send(&eager, "k-3", "a desk").await;
    }
    assert_eq!(retry.0, StatusCode::CREATED, "{retry:?}");
}

/// Two clients that pick the same key (and payload) each run their own request and get
/// their own response — never the other's, nor a 422 for a key they never used; a request
/// without the scope's header is refused; scoping by a request extension (the
/// authenticated principal) works the same; the global scope collides, as documented.
pub async fn keys_are_scoped_per_client(store: impl Store) {
    let calls = Arc::new(AtomicU32::new(0));
    let app = order_app(store.clone(), IdempotencyOptions::default(), calls.clone());
    let alice = send_as(&app, "Bearer alice", "order-1", "2 lamps").await;
    let bob = send_as(&app, "Bearer bob", "order-1", "2 lamps").await;
    assert_eq!(
        alice,
        (StatusCode::CREATED, "order #1 for 2 lamps".into(), false)
    );
    assert_eq!(
        bob,
        (StatusCode::CREATED, "order #2 for 2 lamps".into(), false)
    );
    // Each replay is the client's own response.
    assert_eq!(
        send_as(&app, "Bearer alice", "order-1", "2 lamps").await,
        (StatusCode::CREATED, "order #1 for 2 lamps".into(), true)
    );
    assert_eq!(
        send_as(&app, "Bearer bob", "order-1", "2 lamps").await,
        (StatusCode::CREATED, "order #2 for 2 lamps".into(), true)
    );
    // Another payload under another client's key is a new request, not a 422.
    let carol = send_as(&app, "Bearer carol", "order-1", "a sofa").await;
    assert_eq!(
        carol,
        (StatusCode::CREATED, "order #3 for a sofa".into(), false)
    );
    assert_eq!(
        send_as(&app, "Bearer carol", "order-1", "a chair").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // No Authorization: refused, saying what is missing; the handler did not run.
    let request = Request::post("/orders")
        .header("idempotency-key", "order-1")
        .body(Body::from("2 lamps"))
        .unwrap();
    let (status, body, _) = answer(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("authorization"), "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Scoped by the principal an authentication layer put in the request's extensions.
    #[derive(Clone)]
    struct Principal(String);
    let principal = order_app(
        store.clone(),
        IdempotencyOptions {
            scope: IdempotencyScope::Custom(Arc::new(|parts: &http::request::Parts| {
                parts.extensions.get::<Principal>().map(|p| p.0.clone())
            })),
            ..Default::default()
        },
        calls.clone(),
    );
    let as_principal = |who: &str| {
        let mut request = Request::post("/orders")
            .header("idempotency-key", "order-9")
            .body(Body::from("a desk"))
            .unwrap();
        request.extensions_mut().insert(Principal(who.into()));
        request
    };
    assert!(!answer(&principal, as_principal("dave")).await.2);
    assert!(!answer(&principal, as_principal("erin")).await.2);
    assert!(answer(&principal, as_principal("erin")).await.2);
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    // The global scope: the second client gets the first one's response.
    let global = order_app(
        store.clone(),
        IdempotencyOptions {
            scope: IdempotencyScope::Global,
            ..Default::default()
        },
        calls.clone(),
    );
    send_as(&global, "Bearer alice", "g-1", "a lamp").await;
    let (_, body, replayed) = send_as(&global, "Bearer bob", "g-1", "a lamp").await;
    assert!(replayed && body == "order #6 for a lamp", "{body}");
}

/// A response over `max_body_bytes` reaches its client whole; it is not kept, and its
/// repeats are told so (409) — the handler never runs twice.
pub async fn a_response_too_large_to_keep_runs_once(store: impl Store) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let app = Router::new()
        .route(
            "/orders",
            post(move || {
                let calls = counted.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Streamed in 10 chunks of 100 bytes.
                    let chunks = (0..10u8)
                        .map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a' + i; 100])));
                    (
                        StatusCode::CREATED,
                        [("x-order", "7")],
                        Body::from_stream(futures_util::stream::iter(chunks)),
                    )
                }
            }),
        )
        .layer(IdempotencyLayer::new(
            store,
            IdempotencyOptions {
                max_body_bytes: 250,
                ..Default::default()
            },
        ));
    let (status, body, replayed) = send(&app, "big-1", "report").await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false));
    let expected: String = (0..10u8)
        .map(|i| String::from_utf8(vec![b'a' + i; 100]).unwrap())
        .collect();
    assert_eq!(
        body, expected,
        "the first client got all 1000 bytes, in order"
    );
    for _ in 0..2 {
        let (status, body, _) = send(&app, "big-1", "report").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            body.contains("completed (201 Created)") && body.contains("max_body_bytes (250 bytes)"),
            "{body}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
    // A different payload under that key is still a mismatch.
    assert_eq!(
        send(&app, "big-1", "another").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

/// The child of the crash test: sends one request whose handler logs `<clock ms>` and then
/// hangs until the process is killed; its claim lasts 1 s unless renewed.
pub async fn hang_inside_the_handler(store: impl Store, log: std::path::PathBuf) {
    let app = Router::new()
        .route(
            "/orders",
            post(move || {
                let log = log.clone();
                async move {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis();
                    std::fs::write(&log, now.to_string()).unwrap();
                    std::future::pending::<()>().await;
                }
            }),
        )
        .layer(IdempotencyLayer::new(
            store,
            IdempotencyOptions {
                claim_lease: Duration::from_secs(1),
                ..Default::default()
            },
        ));
    send(&app, "crash-1", "2 lamps").await;
    unreachable!("the handler hangs until the process is killed");
}

/// A process killed inside the handler: its key is not blocked for a day. While the dead
/// process's claim lasts, a retry is told 409; 2 s later a retry runs the request (once)
/// and its repeats are replays. `start_child` starts [`hang_inside_the_handler`] in a
/// child process writing `log`.
pub async fn a_claim_whose_holder_died_is_taken_over(
    store: impl Store,
    log: std::path::PathBuf,
    start_child: impl FnOnce() -> std::process::Child,
) {
    let _ = std::fs::remove_file(&log);
    let mut child = start_child();
    let started = std::time::Instant::now();
    let entered: i64 = loop {
        if let Some(at) = std::fs::read_to_string(&log)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break at;
        }
        assert!(child.try_wait().unwrap().is_none(), "the child died early");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the child reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();

    let now = Arc::new(AtomicI64::new(entered + 200));
    let clock = now.clone();
    let calls = Arc::new(AtomicU32::new(0));
    let app = order_app(
        store,
        IdempotencyOptions {
            claim_lease: Duration::from_secs(1),
            clock: Arc::new(move || clock.load(Ordering::SeqCst)),
            ..Default::default()
        },
        calls.clone(),
    );
    // 200 ms into the dead process's request its claim (1 s from its start) still holds.
    let (status, _, _) = send(&app, "crash-1", "2 lamps").await;
    assert_eq!(status, StatusCode::CONFLICT);
    // 2 s after it died: the claim ran out; the retry runs the request.
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now.store(real_now + 2000, Ordering::SeqCst);
    let retry = send(&app, "crash-1", "2 lamps").await;
    assert_eq!(
        retry,
        (StatusCode::CREATED, "order #1 for 2 lamps".into(), false)
    );
    assert_eq!(
        send(&app, "crash-1", "2 lamps").await,
        (StatusCode::CREATED, "order #1 for 2 lamps".into(), true)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the retry ran it once");
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
    pub entries: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Deposited(i64),
    Withdrew(i64),
}

impl Aggregate for Account {
    type Event = AccountEvent;
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited(n) => self.balance += n,
            AccountEvent::Withdrew(n) => self.balance -= n,
        }
        self.entries += 1;
    }
}

/// A read model: balance per stream.
#[derive(Debug, Default, PartialEq)]
pub struct Balances(pub std::collections::BTreeMap<String, i64>);

impl Projection for Balances {
    fn name(&self) -> &str {
        "balances"
    }
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), String> {
        let e: AccountEvent = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
        let balance = self.0.entry(event.stream.clone()).or_default();
        match e {
            AccountEvent::Deposited(n) => *balance += n,
            AccountEvent::Withdrew(n) => *balance -= n,
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.0.clear();
    }
}

/// Two writers racing on one stream: exactly one wins each version; the loser gets a
/// typed conflict and appends nothing. Projections catch up and rebuild to the same
/// read model.
pub async fn event_store(store: impl Store) {
    let events = EventStore::new(store).snapshot_every(5);
    let mut wins = 0;
    for round in 0..30i64 {
        let (a, b) = tokio::join!(
            events.append(
                "acct-1",
                ExpectedVersion::Exact(round),
                &[AccountEvent::Deposited(10)]
            ),
            events.append(
                "acct-1",
                ExpectedVersion::Exact(round),
                &[AccountEvent::Withdrew(1)]
            ),
        );
        let ok = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {a:?} {b:?}");
        let lost = if a.is_ok() { b } else { a };
        assert!(
            matches!(lost, Err(SagaError::Conflict { actual, expected: ExpectedVersion::Exact(e), .. }) if actual == round + 1 && e == round),
            "{lost:?}"
        );
        wins += 1;
    }
    let stream = events.read::<AccountEvent>("acct-1", 0).await.unwrap();
    assert_eq!(stream.len(), wins);
    assert!(stream
        .iter()
        .enumerate()
        .all(|(i, (v, _))| *v == i as i64 + 1));
    assert!(matches!(
        events
            .append(
                "acct-1",
                ExpectedVersion::NoStream,
                &[AccountEvent::Deposited(1)]
            )
            .await,
        Err(SagaError::Conflict { actual: 30, .. })
    ));

    // Aggregates through commit: snapshots every 5, loading equals replaying.
    let mut loaded = events.load::<Account>("acct-2").await.unwrap();
    for i in 0..12 {
        loaded = events
            .commit("acct-2", loaded, vec![AccountEvent::Deposited(i)])
            .await
            .unwrap();
    }
    assert_eq!(loaded.1, 12);
    assert_eq!(
        events
            .store()
            .snapshot_load("acct-2")
            .await
            .unwrap()
            .map(|s| s.0),
        Some(10)
    );
    assert_eq!(
        events.load::<Account>("acct-2").await.unwrap(),
        events.replay::<Account>("acct-2").await.unwrap()
    );
    assert_eq!(
        events.load::<Account>("acct-2").await.unwrap().0.balance,
        (0..12).sum::<i64>()
    );
    // A commit from a stale load is a conflict.
    let stale = (Account::default(), 3);
    assert!(matches!(
        events
            .commit("acct-2", stale, vec![AccountEvent::Withdrew(1)])
            .await,
        Err(SagaError::Conflict { actual: 12, .. })
    ));

    // The read model: caught up incrementally, then rebuilt from scratch, the same.
    let mut balances = Balances::default();
    let applied = events.catch_up(&mut balances).await.unwrap();
    assert_eq!(applied, 42);
    events
        .append(
            "acct-3",
            ExpectedVersion::Any,
            &[AccountEvent::Deposited(7)],
        )
        .await
        .unwrap();
    assert_eq!(
        events.catch_up(&mut balances).await.unwrap(),
        1,
        "only what is new"
    );
    let mut rebuilt = Balances::default();
    rebuilt.0.insert("garbage".into(), 1);
    events.rebuild(&mut rebuilt).await.unwrap();
    assert_eq!(rebuilt, balances);
    assert_eq!(balances.0["acct-3"], 7);
    assert_eq!(balances.0["acct-2"], (0..12).sum::<i64>());
}

/// Effects the saga's steps had, in order (a target that dedups by idempotency key).
#[derive(Clone, Default)]
pub struct Target {
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Target {
    pub fn record(&self, what: &str, key: &str) {
        let mut log = self.log.lock().unwrap();
        let entry = format!("{what} {key}");
        if !log.contains(&entry) {
            log.push(entry);
        }
    }
    pub fn entries(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

pub fn order_saga(target: &Target, fail_shipping: Arc<AtomicU32>) -> SagaDefinition {
    let (t1, t2, t3, c1, c2) = (
        target.clone(),
        target.clone(),
        target.clone(),
        target.clone(),
        target.clone(),
    );
    SagaDefinition::new("order")
        .step(
            "inventory",
            move |ctx| {
                let t = t1.clone();
                async move {
                    t.record("reserve", &ctx.idempotency_key);
                    Ok(json!({"reservation": "r-1"}))
                }
            },
            move |ctx| {
                let t = c1.clone();
                async move {
                    assert_eq!(ctx.outputs["inventory"], json!({"reservation": "r-1"}));
                    t.record("release", &ctx.idempotency_key);
                    Ok(Value::Null)
                }
            },
        )
        .step(
            "payment",
            move |ctx| {
                let t = t2.clone();
                async move {
                    t.record("charge", &ctx.idempotency_key);
                    Ok(json!({"charge": ctx.input["amount"]}))
                }
            },
            move |ctx| {
                let t = c2.clone();
                async move {
                    t.record("refund", &ctx.idempotency_key);
                    Ok(Value::Null)
                }
            },
        )
        .step_without_compensation("shipping", move |ctx| {
            let (t, fail) = (t3.clone(), fail_shipping.clone());
            async move {
                if fail.load(Ordering::SeqCst) > 0 {
                    fail.fetch_sub(1, Ordering::SeqCst);
                    return Err("no courier".to_string());
                }
                t.record("ship", &ctx.idempotency_key);
                Ok(Value::Null)
            }
        })
}

/// A failing third step compensates steps two and one, in that order, exactly once;
/// the pipeline's retries run first; unknown ids are typed errors.
pub async fn sagas(store: impl Store) {
    let target = Target::default();
    // Shipping fails 10 times: more than the pipeline's 2 retries.
    let fail = Arc::new(AtomicU32::new(10));
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let pipeline = Pipeline::builder()
        .retry(RetryOptions::constant(Duration::from_millis(1)).max_retries(2))
        .build()
        .unwrap();
    let sagas = Orchestrator::new(store.clone(), pipeline, OrchestratorOptions::default())
        .register(order_saga(&target, fail.clone()))
        .unwrap()
        .on_event(move |e| seen.lock().unwrap().push(e.clone()));
    let state = sagas
        .start("order", "o-1", json!({"amount": 30}))
        .await
        .unwrap();
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.compensated, ["payment", "inventory"]);
    assert_eq!(
        target.entries(),
        [
            "reserve o-1:inventory",
            "charge o-1:payment",
            "refund o-1:payment:compensate",
            "release o-1:inventory:compensate"
        ]
    );
    assert_eq!(
        fail.load(Ordering::SeqCst),
        7,
        "shipping tried 3 times (2 retries)"
    );
    assert!(state.failure.as_deref().unwrap().contains("no courier"));
    assert_eq!(sagas.status("o-1").await.unwrap(), state, "persisted");
    // Running it again does nothing more.
    assert_eq!(sagas.run("o-1").await.unwrap(), state);
    assert_eq!(target.entries().len(), 4);
    {
        let events = events.lock().unwrap();
        assert!(events.contains(&SagaEvent::Finished {
            saga: "o-1".into(),
            status: SagaStatus::Compensated
        }));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, SagaEvent::Compensated { .. }))
                .count(),
            2
        );
    }

    // Shipping works now: the next order completes.
    fail.store(0, Ordering::SeqCst);
    let state = sagas
        .start("order", "o-2", json!({"amount": 5}))
        .await
        .unwrap();
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(state.completed.len(), 3);
    assert_eq!(state.completed[1].1, json!({"charge": 5}));

    assert!(matches!(sagas.status("nope").await, Err(SagaError::UnknownSaga(id)) if id == "nope"));
    assert!(matches!(
        sagas.run("nope").await,
        Err(SagaError::UnknownSaga(_))
    ));
    assert!(matches!(
        sagas.start("refund", "o-3", Value::Null).await,
        Err(SagaError::UnknownDefinition { name, .. }) if name == "refund"
    ));
}

/// A compensation that keeps failing parks the saga for an operator; once fixed,
/// `retry_parked` finishes it.
pub async fn parked_sagas(store: impl Store) {
    let broken = Arc::new(AtomicU32::new(1));
    let tries = Arc::new(AtomicU32::new(0));
    let (b, t) = (broken.clone(), tries.clone());
    let definition = SagaDefinition::new("transfer")
        .step(
            "debit",
            |_| async { Ok(Value::Null) },
            move |_| {
                let (b, t) = (b.clone(), t.clone());
                async move {
                    t.fetch_add(1, Ordering::SeqCst);
                    if b.load(Ordering::SeqCst) == 1 {
                        Err("ledger down".to_string())
                    } else {
                        Ok(Value::Null)
                    }
                }
            },
        )
        .step_without_compensation("credit", |_| async { Err("account closed".to_string()) });
    let sagas = Orchestrator::new(
        store,
        Pipeline::builder().build().unwrap(),
        OrchestratorOptions {
            compensation_attempts: 3,
            compensation_backoff: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .register(definition)
    .unwrap();
    let state = sagas.start("transfer", "t-1", Value::Null).await.unwrap();
    assert_eq!(state.status, SagaStatus::Parked);
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    assert!(state
        .compensation_error
        .as_deref()
        .unwrap()
        .contains("ledger down"));
    assert!(
        sagas.resume_all().await.unwrap().is_empty(),
        "parked sagas wait for an operator"
    );
    broken.store(0, Ordering::SeqCst);
    let state = sagas.retry_parked("t-1").await.unwrap();
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.compensated, ["debit"]);
}

/// A process that stops between steps (its future dropped, as when killed): another
/// orchestrator with the same owner name resumes from the last persisted step; the
/// completed step is not run again.
pub async fn resume_after_interruption(store: impl Store) {
    let target = Target::default();
    let calls = Arc::new(AtomicU32::new(0));
    let hang = Arc::new(AtomicU32::new(1));
    let build = |target: &Target| {
        let (c, h) = (calls.clone(), hang.clone());
        let t = target.clone();
        SagaDefinition::new("signup")
            .step(
                "account",
                move |ctx| {
                    let (c, t) = (c.clone(), t.clone());
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        t.record("account", &ctx.idempotency_key);
                        Ok(Value::Null)
                    }
                },
                |_| async { Ok(Value::Null) },
            )
            .step_without_compensation("welcome", move |_| {
                let h = h.clone();
                async move {
                    while h.load(Ordering::SeqCst) == 1 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(json!("sent"))
                }
            })
    };
    let options = OrchestratorOptions {
        owner: "replica-1".into(),
        ..Default::default()
    };
    let first = Orchestrator::new(
        store.clone(),
        Pipeline::builder().build().unwrap(),
        options.clone(),
    )
    .register(build(&target))
    .unwrap();
    let interrupted = tokio::time::timeout(
        Duration::from_millis(200),
        first.start("signup", "s-1", Value::Null),
    )
    .await;
    assert!(interrupted.is_err(), "stopped in the second step");
    assert_eq!(
        first.status("s-1").await.unwrap().completed.len(),
        1,
        "step one persisted"
    );

    hang.store(0, Ordering::SeqCst);
    // Another process: a different owner waits for the lease...
    let other = Orchestrator::new(
        store.clone(),
        Pipeline::builder().build().unwrap(),
        OrchestratorOptions {
            owner: "replica-2".into(),
            ..Default::default()
        },
    )
    .register(build(&target))
    .unwrap();
    assert!(matches!(other.run("s-1").await, Err(SagaError::Busy(_))));
    // ...the restarted replica-1 takes it back at once.
    let restarted = Orchestrator::new(store, Pipeline::builder().build().unwrap(), options)
        .register(build(&target))
        .unwrap();
    let resumed = restarted.resume_all().await.unwrap();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].1.status, SagaStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "step one ran once");
}

/// Expired keys leave the store: on demand (`purge_expired`) and in the background of a
/// request once `purge_every` has passed; a key still within its expiry stays and replays.
/// `rows` counts the keys the backend holds.
pub async fn expired_keys_are_purged(store: impl Store, rows: impl Fn() -> usize) {
    const HOUR: i64 = 3_600_000;
    let t0 = 1_000_000;
    let now = Arc::new(AtomicI64::new(t0));
    let clock = now.clone();
    let options = |purge_every| IdempotencyOptions {
        ttl: Duration::from_secs(3600),
        purge_every,
        clock: Arc::new({
            let clock = clock.clone();
            move || clock.load(Ordering::SeqCst)
        }),
        ..Default::default()
    };
    let calls = Arc::new(AtomicU32::new(0));
    let app = order_app(store.clone(), options(None), calls.clone());
    let layer = IdempotencyLayer::new(store.clone(), options(None));
    for key in ["a", "b"] {
        assert_eq!(send(&app, key, "x").await.0, StatusCode::CREATED);
    }
    now.store(t0 + HOUR / 2, Ordering::SeqCst);
    assert_eq!(send(&app, "c", "x").await.0, StatusCode::CREATED);
    assert_eq!(layer.purge_expired().await.unwrap(), 0, "none expired yet");
    assert_eq!(rows(), 3);

    // a and b expire at t0 + 1 h exactly; c half an hour later.
    now.store(t0 + HOUR, Ordering::SeqCst);
    assert_eq!(layer.purge_expired().await.unwrap(), 2);
    assert_eq!(layer.purge_expired().await.unwrap(), 0);
    assert_eq!(rows(), 1);
    let (status, _, replayed) = send(&app, "c", "x").await;
    assert!(status == StatusCode::CREATED && replayed, "c is kept");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // In the background: the first request through a layer that purges takes the turn.
    let purging = order_app(
        store.clone(),
        options(Some(Duration::from_secs(60))),
        calls.clone(),
    );
    now.store(t0 + 2 * HOUR, Ordering::SeqCst);
    assert_eq!(send(&purging, "d", "x").await.0, StatusCode::CREATED);
    let started = std::time::Instant::now();
    // c (expired at t0 + 1.5 h) goes; d (just stored) stays.
    while rows() != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not purged: {} keys",
            rows()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, _, replayed) = send(&purging, "d", "x").await;
    assert!(replayed, "d is kept");
}
