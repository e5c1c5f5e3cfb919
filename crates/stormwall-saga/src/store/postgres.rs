//! The PostgreSQL backend: a connection pool; each method one transaction. Appends take
//! one advisory lock so that global positions commit in order (a projection never skips
//! an event that commits late).

use super::{
    pending_migrations, Begin, ClaimLease, NewEvent, RecordedEvent, SagaRow, ScopedKey, Store,
    SCHEMA_VERSION,
};
use crate::{ExpectedVersion, SagaError};
use stormwall_durable::storage::{PgPool, StorageTimeouts};

const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = ["
CREATE TABLE stormwall_idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    response BYTEA,
    expires_at BIGINT NOT NULL
);
CREATE TABLE stormwall_sagas (
    seq BIGSERIAL,
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    owner TEXT,
    lease_until BIGINT
);
CREATE INDEX stormwall_sagas_status ON stormwall_sagas (status);
CREATE TABLE stormwall_events (
    position BIGSERIAL PRIMARY KEY,
    stream TEXT NOT NULL,
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (stream, version)
);
CREATE TABLE stormwall_snapshots (stream TEXT PRIMARY KEY, version BIGINT NOT NULL, state TEXT NOT NULL);
CREATE TABLE stormwall_checkpoints (name TEXT PRIMARY KEY, position BIGINT NOT NULL);
", "
ALTER TABLE stormwall_idempotency ADD COLUMN scope TEXT NOT NULL DEFAULT '';
ALTER TABLE stormwall_idempotency ADD COLUMN owner TEXT;
ALTER TABLE stormwall_idempotency ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE stormwall_idempotency DROP CONSTRAINT stormwall_idempotency_pkey;
ALTER TABLE stormwall_idempotency ADD PRIMARY KEY (scope, key);
CREATE INDEX stormwall_idempotency_expiry ON stormwall_idempotency (expires_at);
"];

/// Arbitrary constants: the advisory locks for migrations and for appends.
const MIGRATION_LOCK: i64 = 0x5354_4f52_4d53_4147;
const APPEND_LOCK: i64 = 0x5354_4f52_4d45_5654;

/// Sagas, idempotency records and events in PostgreSQL. Clones share one pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn event(r: &tokio_postgres::Row) -> RecordedEvent {
    RecordedEvent {
        position: r.get(0),
        stream: r.get(1),
        version: r.get(2),
        kind: r.get(3),
        data: r.get(4),
    }
}

impl PostgresStore {
    /// Connects (`postgres://user@host:port/db`), with up to `connections` in the pool,
    /// and applies pending migrations; every operation bounded by the default
    /// [`StorageTimeouts`] (connect 5 s, pool wait 5 s, statement 10 s).
    pub async fn connect(url: &str, connections: usize) -> Result<Self, SagaError> {
        Self::connect_with_timeouts(url, connections, StorageTimeouts::default()).await
    }

    /// [`connect`](Self::connect) with these bounds: a database that does not answer
    /// makes callers fail with [`SagaError::Timeout`] instead of hanging.
    pub async fn connect_with_timeouts(
        url: &str,
        connections: usize,
        timeouts: StorageTimeouts,
    ) -> Result<Self, SagaError> {
        let pool = PgPool::new(url, connections, timeouts)?;
        let store = PostgresStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), SagaError> {
        self.pool
            .run(async |client| {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS stormwall_saga_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            )
            .await?;
            let found = tx
                .query_opt(
                    "SELECT value FROM stormwall_saga_meta WHERE key = 'schema_version'",
                    &[],
                )
                .await?
                .map(|r| r.get::<_, String>(0));
            let applied = pending_migrations(found)?;
            for migration in &MIGRATIONS[applied as usize..] {
                tx.batch_execute(migration).await?;
            }
            tx.execute(
                "INSERT INTO stormwall_saga_meta (key, value) VALUES ('schema_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&SCHEMA_VERSION.to_string()],
            )
            .await?;
            tx.commit().await?;
            Ok(())
            })
            .await
    }
}

impl Store for PostgresStore {
    async fn idempotency_begin(
        &self,
        key: ScopedKey<'_>,
        fingerprint: &str,
        claim: ClaimLease<'_>,
        ttl_ms: i64,
    ) -> Result<Begin, SagaError> {
        self.pool
            .run(async |client| {
                let (expires_at, lease_until) = (
                    claim.now_ms.saturating_add(ttl_ms),
                    claim.now_ms.saturating_add(claim.lease_ms),
                );
                // Insert, or take over an expired record or a running one whose claim ran out (its
                // holder died); a concurrent insert of the same key makes this one wait for its
                // commit and then do nothing.
                let started = client
                    .query_opt(
                        "INSERT INTO stormwall_idempotency
                         (scope, key, fingerprint, status, response, expires_at, owner, lease_until)
                     VALUES ($1, $2, $3, 'running', NULL, $5, $6, $7)
                     ON CONFLICT (scope, key) DO UPDATE
                        SET fingerprint = EXCLUDED.fingerprint, status = 'running', response = NULL,
                            expires_at = EXCLUDED.expires_at, owner = EXCLUDED.owner,
                            lease_until = EXCLUDED.lease_until
                      WHERE stormwall_idempotency.expires_at <= $4
                         OR (stormwall_idempotency.status = 'running'
                             AND stormwall_idempotency.fingerprint = $3
                             AND stormwall_idempotency.lease_until <= $4)
                     RETURNING key",
                        &[
                            &key.scope,
                            &key.key,
                            &fingerprint,
                            &claim.now_ms,
                            &expires_at,
                            &claim.owner,
                            &lease_until,
                        ],
                    )
                    .await?;
                if started.is_some() {
                    return Ok(Begin::Started);
                }
                // A separate statement: its snapshot sees the record the insert waited for.
                let Some(row) = client
                    .query_opt(
                        "SELECT fingerprint, status, response FROM stormwall_idempotency
                      WHERE scope = $1 AND key = $2",
                        &[&key.scope, &key.key],
                    )
                    .await?
                else {
                    // Abandoned in between: the caller may try again.
                    return Ok(Begin::InProgress);
                };
                let (stored, status, response): (String, String, Option<Vec<u8>>) =
                    (row.get(0), row.get(1), row.get(2));
                Ok(if stored != fingerprint {
                    Begin::Mismatch
                } else if status == "done" {
                    Begin::Completed(response.unwrap_or_default())
                } else if status == "unstored" {
                    Begin::CompletedUnstored(response.unwrap_or_default())
                } else {
                    Begin::InProgress
                })
            })
            .await
    }

    async fn idempotency_renew(
        &self,
        key: ScopedKey<'_>,
        claim: ClaimLease<'_>,
    ) -> Result<bool, SagaError> {
        let renewed = self
            .pool
            .execute(
                "UPDATE stormwall_idempotency SET lease_until = $4
                  WHERE scope = $1 AND key = $2 AND owner = $3 AND status = 'running'",
                &[
                    &key.scope,
                    &key.key,
                    &claim.owner,
                    &claim.now_ms.saturating_add(claim.lease_ms),
                ],
            )
            .await?;
        Ok(renewed == 1)
    }

    async fn idempotency_complete(
        &self,
        key: ScopedKey<'_>,
        owner: &str,
        response: Vec<u8>,
        replayable: bool,
    ) -> Result<bool, SagaError> {
        let status = if replayable { "done" } else { "unstored" };
        let stored = self
            .pool
            .execute(
                "UPDATE stormwall_idempotency SET status = $4, response = $5, owner = NULL
                  WHERE scope = $1 AND key = $2 AND owner = $3 AND status = 'running'",
                &[&key.scope, &key.key, &owner, &status, &response],
            )
            .await?;
        Ok(stored == 1)
    }

    async fn idempotency_abandon(&self, key: ScopedKey<'_>, owner: &str) -> Result<(), SagaError> {
        self.pool
            .execute(
                "DELETE FROM stormwall_idempotency
                  WHERE scope = $1 AND key = $2 AND owner = $3 AND status = 'running'",
                &[&key.scope, &key.key, &owner],
            )
            .await?;
        Ok(())
    }

    async fn idempotency_purge_expired(&self, now_ms: i64) -> Result<usize, SagaError> {
        let deleted = self
            .pool
            .execute(
                "DELETE FROM stormwall_idempotency WHERE expires_at <= $1",
                &[&now_ms],
            )
            .await?;
        Ok(deleted as usize)
    }

    async fn saga_create(
        &self,
        row: SagaRow,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<bool, SagaError> {
        let added = self
            .pool
            .execute(
                "INSERT INTO stormwall_sagas (id, name, status, state, version, owner, lease_until)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                &[
                    &row.id,
                    &row.name,
                    &row.status,
                    &row.state,
                    &row.version,
                    &owner,
                    &lease_until_ms,
                ],
            )
            .await?;
        Ok(added == 1)
    }

    async fn saga_load(&self, id: &str) -> Result<Option<SagaRow>, SagaError> {
        let row = self
            .pool
            .query_opt(
                "SELECT id, name, status, state, version FROM stormwall_sagas WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(row.map(|r| SagaRow {
            id: r.get(0),
            name: r.get(1),
            status: r.get(2),
            state: r.get(3),
            version: r.get(4),
        }))
    }

    async fn saga_claim(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, SagaError> {
        let claimed = self
            .pool
            .execute(
                "UPDATE stormwall_sagas SET owner = $2, lease_until = $3::BIGINT + $4::BIGINT
                  WHERE id = $1 AND (owner IS NULL OR owner = $2 OR lease_until < $3)",
                &[&id, &owner, &now_ms, &lease_ms],
            )
            .await?;
        Ok(claimed == 1)
    }

    async fn saga_save(&self, row: SagaRow, owner: &str, release: bool) -> Result<bool, SagaError> {
        let saved = self
            .pool
            .execute(
                "UPDATE stormwall_sagas
                    SET status = $2, state = $3, version = $4,
                        owner = CASE WHEN $6 THEN NULL ELSE owner END,
                        lease_until = CASE WHEN $6 THEN NULL ELSE lease_until END
                  WHERE id = $1 AND version = $4::BIGINT - 1 AND owner = $5",
                &[
                    &row.id,
                    &row.status,
                    &row.state,
                    &row.version,
                    &owner,
                    &release,
                ],
            )
            .await?;
        Ok(saved == 1)
    }

    async fn saga_unfinished(&self) -> Result<Vec<String>, SagaError> {
        let rows = self
            .pool
            .query(
                "SELECT id FROM stormwall_sagas WHERE status IN ('running', 'compensating') ORDER BY seq",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<i64, SagaError> {
        self.pool
            .run(async |client| {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK])
                .await?;
            let actual: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0)::BIGINT FROM stormwall_events WHERE stream = $1",
                    &[&stream],
                )
                .await?
                .get(0);
            if !expected.admits(actual) {
                return Err(SagaError::Conflict {
                    stream: stream.to_owned(),
                    expected,
                    actual,
                });
            }
            let insert = tx
                .prepare("INSERT INTO stormwall_events (stream, version, kind, data) VALUES ($1, $2, $3, $4)")
                .await?;
            for (i, e) in events.iter().enumerate() {
                tx.execute(
                    &insert,
                    &[&stream, &(actual + 1 + i as i64), &e.kind, &e.data],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(actual + events.len() as i64)
            })
            .await
    }

    async fn read_stream(&self, stream: &str, after: i64) -> Result<Vec<RecordedEvent>, SagaError> {
        let rows = self
            .pool
            .query(
                "SELECT position, stream, version, kind, data FROM stormwall_events
                  WHERE stream = $1 AND version > $2 ORDER BY version",
                &[&stream, &after],
            )
            .await?;
        Ok(rows.iter().map(event).collect())
    }

    async fn read_all(&self, after: i64, limit: usize) -> Result<Vec<RecordedEvent>, SagaError> {
        let rows = self
            .pool
            .query(
                "SELECT position, stream, version, kind, data FROM stormwall_events
                  WHERE position > $1 ORDER BY position LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(event).collect())
    }

    async fn snapshot_save(
        &self,
        stream: &str,
        version: i64,
        state: String,
    ) -> Result<(), SagaError> {
        self
            .pool
            .execute(
                "INSERT INTO stormwall_snapshots (stream, version, state) VALUES ($1, $2, $3)
                 ON CONFLICT (stream) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state
                 WHERE EXCLUDED.version > stormwall_snapshots.version",
                &[&stream, &version, &state],
            )
            .await?;
        Ok(())
    }

    async fn snapshot_load(&self, stream: &str) -> Result<Option<(i64, String)>, SagaError> {
        let row = self
            .pool
            .query_opt(
                "SELECT version, state FROM stormwall_snapshots WHERE stream = $1",
                &[&stream],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn checkpoint_load(&self, name: &str) -> Result<i64, SagaError> {
        let row = self
            .pool
            .query_opt(
                "SELECT position FROM stormwall_checkpoints WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    async fn checkpoint_save(&self, name: &str, position: i64) -> Result<(), SagaError> {
        self.pool
            .execute(
                "INSERT INTO stormwall_checkpoints (name, position) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                &[&name, &position],
            )
            .await?;
        Ok(())
    }
}
