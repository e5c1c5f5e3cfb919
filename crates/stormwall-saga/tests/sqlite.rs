//! The saga crate's suite on SQLite, plus what only a file shows: corrupt state and a
//! schema from a newer version.

use stormwall_saga::{SagaError, SqliteStore};

mod common;

fn store(name: &str) -> (SqliteStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("stormwall-saga-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    (SqliteStore::open(&path).unwrap(), path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_purged() {
    let (store, path) = store("purge");
    let db = rusqlite::Connection::open(&path).unwrap();
    common::expired_keys_are_purged(store, move || {
        db.query_row("SELECT COUNT(*) FROM stormwall_idempotency", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as usize
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys() {
    common::idempotency_keys(store("idempotency").0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_per_client() {
    common::keys_are_scoped_per_client(store("scoped").0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_too_large_to_keep_runs_once() {
    common::a_response_too_large_to_keep_runs_once(store("too-large").0).await;
}

/// The child of the claim crash test (a no-op when the harness runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_child() {
    let Ok(path) = std::env::var("STORMWALL_CLAIM_DB") else {
        return;
    };
    let store = SqliteStore::open(&path).unwrap();
    common::hang_inside_the_handler(store, format!("{path}.entered").into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_holder_died_is_taken_over() {
    let (store, path) = store("claim-crash");
    let log = std::path::PathBuf::from(format!("{}.entered", path.display()));
    common::a_claim_whose_holder_died_is_taken_over(store, log, || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "claim_child", "--nocapture", "--test-threads=1"])
            .env("STORMWALL_CLAIM_DB", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_store() {
    common::event_store(store("events").0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas() {
    common::sagas(store("sagas").0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sagas() {
    common::parked_sagas(store("parked").0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_interruption() {
    common::resume_after_interruption(store("resume").0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_and_a_newer_schema_are_typed_errors() {
    use stormwall::Pipeline;
    use stormwall_saga::{Orchestrator, OrchestratorOptions, SagaDefinition};
    let (store, path) = store("corrupt");
    let sagas = Orchestrator::new(
        store,
        Pipeline::builder().build().unwrap(),
        OrchestratorOptions::default(),
    )
    .register(
        SagaDefinition::new("s")
            .step_without_compensation("a", |_| async { Ok(serde_json::Value::Null) }),
    )
    .unwrap();
    sagas
        .start("s", "x", serde_json::Value::Null)
        .await
        .unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE stormwall_sagas SET state = '{not json' WHERE id = 'x'",
        [],
    )
    .unwrap();
    let err = sagas.status("x").await.unwrap_err();
    assert!(
        matches!(&err, SagaError::Corrupt { what: "saga state", id, .. } if id == "x"),
        "{err}"
    );
    raw.execute(
        "UPDATE stormwall_saga_meta SET value = '7' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(SagaError::NewerSchema {
            found: 7,
            supported: 2
        })
    ));
    raw.execute(
        "UPDATE stormwall_saga_meta SET value = 'seven' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(SagaError::Corrupt {
            what: "schema version",
            ..
        })
    ));
    // A directory is not a database: a typed error, no panic.
    assert!(matches!(
        SqliteStore::open(std::env::temp_dir()),
        Err(SagaError::Sqlite(_))
    ));
}

/// A database from before keys were scoped (schema 1) is migrated in place: its keys are
/// kept in the global scope, so a layer with `IdempotencyScope::Global` still replays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_keeps_its_keys_in_the_global_scope() {
    use http_body_util::BodyExt;
    use sha2::Digest;
    use tower::ServiceExt;
    let (store, path) = store("v1");
    drop(store);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let fingerprint: String = sha2::Sha256::digest(b"POST\n/orders\nold order")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    raw.execute_batch(&format!(
        "DROP TABLE stormwall_idempotency;
         CREATE TABLE stormwall_idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,
             status TEXT NOT NULL, response BLOB, expires_at INTEGER NOT NULL);
         INSERT INTO stormwall_idempotency VALUES
             ('old-1', '{fingerprint}', 'done', X'00C90000000073746F726564', 9000000000000000);
         UPDATE stormwall_saga_meta SET value = '1' WHERE key = 'schema_version';"
    ))
    .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let app = axum::Router::new()
        .route("/orders", axum::routing::post(|| async { "ran again" }))
        .layer(stormwall_saga::IdempotencyLayer::new(
            store,
            stormwall_saga::IdempotencyOptions {
                scope: stormwall_saga::IdempotencyScope::Global,
                ..Default::default()
            },
        ));
    let request = http::Request::post("/orders")
        .header("idempotency-key", "old-1")
        .body(axum::body::Body::from("old order"))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    if status != http::StatusCode::CREATED {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        panic!("{status}: {}", String::from_utf8_lossy(&body));
    }
    assert!(response.headers().contains_key("idempotent-replayed"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), b"stored");
}
