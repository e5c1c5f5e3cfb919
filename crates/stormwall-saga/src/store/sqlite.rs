//! The SQLite backend: one file (WAL, `synchronous = FULL`), one connection used from
//! blocking tasks; SQLite serialises writers, so every method's transaction is atomic.

use super::{
    pending_migrations, Begin, ClaimLease, NewEvent, RecordedEvent, SagaRow, ScopedKey, Store,
    SCHEMA_VERSION,
};
use crate::{ExpectedVersion, SagaError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};
use stormwall_durable::storage::{SqliteDeadline, StorageTimeouts};

/// The migrations, in order; the schema version is how many have been applied.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = ["
CREATE TABLE stormwall_idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    response BLOB,
    expires_at INTEGER NOT NULL
);
CREATE TABLE stormwall_sagas (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    owner TEXT,
    lease_until INTEGER
);
CREATE INDEX stormwall_sagas_status ON stormwall_sagas (status);
CREATE TABLE stormwall_events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (stream, version)
);
CREATE TABLE stormwall_snapshots (stream TEXT PRIMARY KEY, version INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE stormwall_checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
", "
CREATE TABLE stormwall_idempotency_scoped (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    response BLOB,
    expires_at INTEGER NOT NULL,
    owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, key)
);
INSERT INTO stormwall_idempotency_scoped (scope, key, fingerprint, status, response, expires_at)
    SELECT '', key, fingerprint, status, response, expires_at FROM stormwall_idempotency;
DROP TABLE stormwall_idempotency;
ALTER TABLE stormwall_idempotency_scoped RENAME TO stormwall_idempotency;
CREATE INDEX stormwall_idempotency_expiry ON stormwall_idempotency (expires_at);
"];

/// Sagas, idempotency records and events in one SQLite file. Clones share it.
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    deadline: SqliteDeadline,
    timeouts: StorageTimeouts,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and applies pending migrations; every
    /// operation bounded by the default [`StorageTimeouts`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SagaError> {
        Self::open_with_timeouts(path, StorageTimeouts::default())
    }

    /// [`open`](Self::open) with these bounds: another process holding the write lock
    /// longer than `wait`, or an operation not done within `wait + statement`, fails with
    /// [`SagaError::Timeout`].
    pub fn open_with_timeouts(
        path: impl AsRef<Path>,
        timeouts: StorageTimeouts,
    ) -> Result<Self, SagaError> {
        let (mut connection, deadline) =
            stormwall_durable::storage::open_sqlite(path.as_ref(), &timeouts)?;
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS stormwall_saga_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )?;
        let found: Option<String> = tx
            .query_row(
                "SELECT value FROM stormwall_saga_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let applied = pending_migrations(found)?;
        for migration in &MIGRATIONS[applied as usize..] {
            tx.execute_batch(migration)?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO stormwall_saga_meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )?;
        tx.commit()?;
        Ok(SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
            deadline,
            timeouts,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, SagaError> + Send + 'static,
    ) -> Result<T, SagaError> {
        run_blocking(&self.connection, &self.deadline, &self.timeouts, work).await
    }
}

/// Runs `work` on `connection` in a blocking task, bounded by `deadline`; SQLite's
/// timeouts become [`SagaError::Timeout`].
pub(crate) async fn run_blocking<T: Send + 'static>(
    connection: &Arc<Mutex<Connection>>,
    deadline: &SqliteDeadline,
    timeouts: &StorageTimeouts,
    work: impl FnOnce(&mut Connection) -> Result<T, SagaError> + Send + 'static,
) -> Result<T, SagaError> {
    let (connection, deadline, wait) = (connection.clone(), deadline.clone(), timeouts.wait);
    tokio::task::spawn_blocking(move || {
        let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
        deadline
            .bound(|| work(&mut connection))
            .map_err(|e| match e {
                SagaError::Sqlite(e) => match deadline.timed_out(&e, wait) {
                    Some((what, after)) => SagaError::Timeout { what, after },
                    None => SagaError::Sqlite(e),
                },
                other => other,
            })
    })
    .await
    .map_err(|e| SagaError::Unreachable(format!("the database task failed: {e}")))?
}

fn event(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordedEvent> {
    Ok(RecordedEvent {
        position: r.get(0)?,
        stream: r.get(1)?,
        version: r.get(2)?,
        kind: r.get(3)?,
        data: r.get(4)?,
    })
}

impl Store for SqliteStore {
    async fn idempotency_begin(
        &self,
        key: ScopedKey<'_>,
        fingerprint: &str,
        claim: ClaimLease<'_>,
        ttl_ms: i64,
    ) -> Result<Begin, SagaError> {
        let (scope, key) = (key.scope.to_owned(), key.key.to_owned());
        let (fingerprint, owner) = (fingerprint.to_owned(), claim.owner.to_owned());
        let now_ms = claim.now_ms;
        let lease_until = now_ms.saturating_add(claim.lease_ms);
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // fingerprint, status, response, expires_at, lease_until
            type Found = (String, String, Option<Vec<u8>>, i64, i64);
            let found: Option<Found> = tx
                .query_row(
                    "SELECT fingerprint, status, response, expires_at, lease_until
                       FROM stormwall_idempotency WHERE scope = ?1 AND key = ?2",
                    params![scope, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let begin = match found {
                Some((stored, status, response, expires, leased)) if expires > now_ms => {
                    if stored != fingerprint {
                        Begin::Mismatch
                    } else if status == "done" {
                        Begin::Completed(response.unwrap_or_default())
                    } else if status == "unstored" {
                        Begin::CompletedUnstored(response.unwrap_or_default())
                    } else if leased > now_ms {
                        Begin::InProgress
                    } else {
                        // Its holder died (or hung past its lease): this request takes over.
                        tx.execute(
                            "UPDATE stormwall_idempotency SET owner = ?3, lease_until = ?4
                              WHERE scope = ?1 AND key = ?2",
                            params![scope, key, owner, lease_until],
                        )?;
                        Begin::Started
                    }
                }
                _ => {
                    tx.execute(
                        "INSERT OR REPLACE INTO stormwall_idempotency
                             (scope, key, fingerprint, status, response, expires_at, owner, lease_until)
                         VALUES (?1, ?2, ?3, 'running', NULL, ?4, ?5, ?6)",
                        params![scope, key, fingerprint, now_ms.saturating_add(ttl_ms), owner, lease_until],
                    )?;
                    Begin::Started
                }
            };
            tx.commit()?;
            Ok(begin)
        })
        .await
    }

    async fn idempotency_renew(
        &self,
        key: ScopedKey<'_>,
        claim: ClaimLease<'_>,
    ) -> Result<bool, SagaError> {
        let (scope, key, owner) = (
            key.scope.to_owned(),
            key.key.to_owned(),
            claim.owner.to_owned(),
        );
        let lease_until = claim.now_ms.saturating_add(claim.lease_ms);
        self.run(move |c| {
            Ok(c.execute(
                "UPDATE stormwall_idempotency SET lease_until = ?4
                  WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND status = 'running'",
                params![scope, key, owner, lease_until],
            )? == 1)
        })
        .await
    }

    async fn idempotency_complete(
        &self,
        key: ScopedKey<'_>,
        owner: &str,
        response: Vec<u8>,
        replayable: bool,
    ) -> Result<bool, SagaError> {
        let (scope, key, owner) = (key.scope.to_owned(), key.key.to_owned(), owner.to_owned());
        let status = if replayable { "done" } else { "unstored" };
        self.run(move |c| {
            Ok(c.execute(
                "UPDATE stormwall_idempotency SET status = ?4, response = ?5, owner = NULL
                  WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND status = 'running'",
                params![scope, key, owner, status, response],
            )? == 1)
        })
        .await
    }

    async fn idempotency_abandon(&self, key: ScopedKey<'_>, owner: &str) -> Result<(), SagaError> {
        let (scope, key, owner) = (key.scope.to_owned(), key.key.to_owned(), owner.to_owned());
        self.run(move |c| {
            c.execute(
                "DELETE FROM stormwall_idempotency
                  WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND status = 'running'",
                params![scope, key, owner],
            )?;
            Ok(())
        })
        .await
    }

    async fn idempotency_purge_expired(&self, now_ms: i64) -> Result<usize, SagaError> {
        self.run(move |c| {
            Ok(c.execute(
                "DELETE FROM stormwall_idempotency WHERE expires_at <= ?1",
                params![now_ms],
            )?)
        })
        .await
    }

    async fn saga_create(
        &self,
        row: SagaRow,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<bool, SagaError> {
        let owner = owner.to_owned();
        self.run(move |c| {
            let added = c.execute(
                "INSERT OR IGNORE INTO stormwall_sagas (id, name, status, state, version, owner, lease_until)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![row.id, row.name, row.status, row.state, row.version, owner, lease_until_ms],
            )?;
            Ok(added == 1)
        })
        .await
    }

    async fn saga_load(&self, id: &str) -> Result<Option<SagaRow>, SagaError> {
        let id = id.to_owned();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT id, name, status, state, version FROM stormwall_sagas WHERE id = ?1",
                params![id],
                |r| {
                    Ok(SagaRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        status: r.get(2)?,
                        state: r.get(3)?,
                        version: r.get(4)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn saga_claim(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, SagaError> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.run(move |c| {
            let claimed = c.execute(
                "UPDATE stormwall_sagas SET owner = ?2, lease_until = ?3 + ?4
                  WHERE id = ?1 AND (owner IS NULL OR owner = ?2 OR lease_until < ?3)",
                params![id, owner, now_ms, lease_ms],
            )?;
            Ok(claimed == 1)
        })
        .await
    }

    async fn saga_save(&self, row: SagaRow, owner: &str, release: bool) -> Result<bool, SagaError> {
        let owner = owner.to_owned();
        self.run(move |c| {
            let saved = c.execute(
                "UPDATE stormwall_sagas
                    SET status = ?2, state = ?3, version = ?4,
                        owner = CASE WHEN ?6 THEN NULL ELSE owner END,
                        lease_until = CASE WHEN ?6 THEN NULL ELSE lease_until END
                  WHERE id = ?1 AND version = ?4 - 1 AND owner = ?5",
                params![row.id, row.status, row.state, row.version, owner, release],
            )?;
            Ok(saved == 1)
        })
        .await
    }

    async fn saga_unfinished(&self) -> Result<Vec<String>, SagaError> {
        self.run(|c| {
            let mut s = c.prepare(
                "SELECT id FROM stormwall_sagas WHERE status IN ('running', 'compensating') ORDER BY rowid",
            )?;
            let ids = s.query_map([], |r| r.get(0))?;
            Ok(ids.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<i64, SagaError> {
        let stream = stream.to_owned();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let actual: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM stormwall_events WHERE stream = ?1",
                params![stream],
                |r| r.get(0),
            )?;
            if !expected.admits(actual) {
                return Err(SagaError::Conflict {
                    stream,
                    expected,
                    actual,
                });
            }
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO stormwall_events (stream, version, kind, data) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (i, e) in events.iter().enumerate() {
                    insert.execute(params![stream, actual + 1 + i as i64, e.kind, e.data])?;
                }
            }
            tx.commit()?;
            Ok(actual + events.len() as i64)
        })
        .await
    }

    async fn read_stream(&self, stream: &str, after: i64) -> Result<Vec<RecordedEvent>, SagaError> {
        let stream = stream.to_owned();
        self.run(move |c| {
            let mut s = c.prepare_cached(
                "SELECT position, stream, version, kind, data FROM stormwall_events
                  WHERE stream = ?1 AND version > ?2 ORDER BY version",
            )?;
            let rows = s.query_map(params![stream, after], event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn read_all(&self, after: i64, limit: usize) -> Result<Vec<RecordedEvent>, SagaError> {
        self.run(move |c| {
            let mut s = c.prepare_cached(
                "SELECT position, stream, version, kind, data FROM stormwall_events
                  WHERE position > ?1 ORDER BY position LIMIT ?2",
            )?;
            let rows = s.query_map(params![after, limit as i64], event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn snapshot_save(
        &self,
        stream: &str,
        version: i64,
        state: String,
    ) -> Result<(), SagaError> {
        let stream = stream.to_owned();
        self.run(move |c| {
            c.execute(
                "INSERT INTO stormwall_snapshots (stream, version, state) VALUES (?1, ?2, ?3)
                 ON CONFLICT (stream) DO UPDATE SET version = excluded.version, state = excluded.state
                 WHERE excluded.version > stormwall_snapshots.version",
                params![stream, version, state],
            )?;
            Ok(())
        })
        .await
    }

    async fn snapshot_load(&self, stream: &str) -> Result<Option<(i64, String)>, SagaError> {
        let stream = stream.to_owned();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT version, state FROM stormwall_snapshots WHERE stream = ?1",
                params![stream],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }

    async fn checkpoint_load(&self, name: &str) -> Result<i64, SagaError> {
        let name = name.to_owned();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT position FROM stormwall_checkpoints WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
        })
        .await
    }

    async fn checkpoint_save(&self, name: &str, position: i64) -> Result<(), SagaError> {
        let name = name.to_owned();
        self.run(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO stormwall_checkpoints (name, position) VALUES (?1, ?2)",
                params![name, position],
            )?;
            Ok(())
        })
        .await
    }
}
