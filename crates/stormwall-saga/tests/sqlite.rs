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
            supported: 1
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
