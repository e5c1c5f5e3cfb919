//! The PostgreSQL backend: many replicas drain one queue. Leases take rows with
//! `FOR UPDATE SKIP LOCKED`, so two workers never get the same job while its lease runs;
//! times come from the database's clock, so replicas with skewed clocks agree on leases.

use crate::queue::{DeadLetter, Enqueued, Job, QueueError, StateCount, SCHEMA_VERSION};
use crate::storage::{PgPool, StorageTimeouts};
use std::time::Duration;

/// Milliseconds since the epoch on the database's clock.
macro_rules! now_ms {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    };
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stormwall_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stormwall_jobs (
    id BIGSERIAL PRIMARY KEY,
    queue TEXT NOT NULL,
    payload BYTEA NOT NULL,
    idempotency_key TEXT,
    state TEXT NOT NULL DEFAULT 'ready',
    attempts INTEGER NOT NULL DEFAULT 0,
    run_at BIGINT NOT NULL,
    lease_until BIGINT,
    leased_by TEXT,
    created_at BIGINT NOT NULL,
    last_error TEXT,
    expired_leases INTEGER NOT NULL DEFAULT 0,
    UNIQUE (queue, idempotency_key)
);
CREATE INDEX IF NOT EXISTS stormwall_jobs_due ON stormwall_jobs (queue, state, run_at);
-- The jobs a lease looks at, in id order: a lease reads only these, however many done
-- jobs the table keeps (without it, a lease scanned every done job of its queue).
CREATE INDEX IF NOT EXISTS stormwall_jobs_pending ON stormwall_jobs (queue, id)
    WHERE state IN ('ready', 'leased');
";

/// Indexes on columns a migration may add: made after it.
const LATE_INDEXES: &str = "
-- Ready jobs whose lease once ran out: each is leased alone.
CREATE INDEX IF NOT EXISTS stormwall_jobs_suspect ON stormwall_jobs (queue, id)
    WHERE state = 'ready' AND expired_leases > 0;
";

/// An arbitrary constant: the advisory lock that serialises replicas migrating at once.
const MIGRATION_LOCK: i64 = 0x5354_4f52_4d57_414c;

/// The PostgreSQL queue: clones share one connection pool.
#[derive(Clone)]
pub(crate) struct Postgres {
    pool: PgPool,
}

impl Postgres {
    pub(crate) async fn connect(
        url: &str,
        connections: usize,
        timeouts: StorageTimeouts,
    ) -> Result<Self, QueueError> {
        let pool = PgPool::new(url, connections, timeouts)?;
        let postgres = Postgres { pool };
        postgres.migrate().await?;
        Ok(postgres)
    }

    async fn migrate(&self) -> Result<(), QueueError> {
        self.pool
            .run(async |client| {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(SCHEMA).await?;
            let found = tx
                .query_opt(
                    "SELECT value FROM stormwall_meta WHERE key = 'schema_version'",
                    &[],
                )
                .await?
                .map(|row| row.get::<_, String>(0));
            let found = crate::queue::check_schema(found)?;
            if found != Some(SCHEMA_VERSION) {
                // Version 1: the table was there before `expired_leases`.
                tx.batch_execute(
                    "ALTER TABLE stormwall_jobs ADD COLUMN IF NOT EXISTS expired_leases INTEGER NOT NULL DEFAULT 0",
                )
                .await?;
                tx.execute(
                    "INSERT INTO stormwall_meta (key, value) VALUES ('schema_version', $1)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&SCHEMA_VERSION.to_string()],
                )
                .await?;
            }
            tx.batch_execute(LATE_INDEXES).await?;
            tx.commit().await?;
            Ok(())
            })
            .await
    }

    pub(crate) async fn enqueue(
        &self,
        queue: &str,
        payload: Vec<u8>,
        key: Option<&str>,
        delay: Duration,
    ) -> Result<Enqueued, QueueError> {
        self.pool
            .run(async |client| {
            let insert = client
                .prepare_cached(concat!(
                    "INSERT INTO stormwall_jobs (queue, payload, idempotency_key, run_at, created_at)
                     VALUES ($1, $2, $3, ",
                    now_ms!(),
                    " + $4, ",
                    now_ms!(),
                    ") ON CONFLICT (queue, idempotency_key) DO NOTHING RETURNING id"
                ))
                .await?;
            let existing = client
                .prepare_cached(
                    "SELECT id FROM stormwall_jobs WHERE queue = $1 AND idempotency_key = $2",
                )
                .await?;
            let delay_ms = delay.as_millis() as i64;
            // The insert waits for a concurrent one with the same key to commit; the lookup
            // is a separate statement so that it sees that commit. A purge in between (the
            // row gone) sends it round again.
            for _ in 0..3 {
                if let Some(row) = client
                    .query_opt(&insert, &[&queue, &payload, &key, &delay_ms])
                    .await?
                {
                    return Ok(Enqueued {
                        id: row.get(0),
                        duplicate: false,
                    });
                }
                if let Some(row) = client.query_opt(&existing, &[&queue, &key]).await? {
                    return Ok(Enqueued {
                        id: row.get(0),
                        duplicate: true,
                    });
                }
            }
            Err(QueueError::Commit(format!(
                "idempotency key {key:?} of queue {queue:?} kept changing under the enqueue"
            )))
            })
            .await
    }

    pub(crate) async fn lease(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        visibility: Duration,
        max_attempts: i64,
    ) -> Result<Vec<Job>, QueueError> {
        // A job at its last allowed attempt whose lease ran out is a dead letter, never
        // leased again (also when its lease runs out between the two statements).
        let limit = max_attempts.min(i64::from(i32::MAX)) as i32;
        self.pool
            .run(async |client| {
            let tx = client.transaction().await?;
            // Jobs whose last allowed lease ran out: a worker died on them every time.
            let dead = tx
                .query(
                    concat!(
                        "UPDATE stormwall_jobs
                            SET state = 'dead', lease_until = NULL, expired_leases = expired_leases + 1
                          WHERE id IN (SELECT id FROM stormwall_jobs
                                        WHERE queue = $1 AND state = 'leased' AND attempts >= $2
                                          AND lease_until < ",
                        now_ms!(),
                        " FOR UPDATE SKIP LOCKED)
                      RETURNING id, expired_leases, attempts, COALESCE(leased_by, '')"
                    ),
                    &[&queue, &limit],
                )
                .await?;
            for row in dead {
                let (id, expired, attempts, holder): (i64, i32, i32, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                let error = crate::queue::lease_expired_error(expired.into(), attempts.into(), &holder);
                tracing::warn!(job = id, %queue, %error, "stormwall-durable: job moved to dead letters");
                tx.execute(
                    "UPDATE stormwall_jobs SET last_error = $1 WHERE id = $2",
                    &[&error, &id],
                )
                .await?;
            }
            // Leases that ran out with attempts left: the job is ready again and suspect —
            // its worker died or hung while holding it, on it or on another job of its batch.
            tx.execute(
                concat!(
                    "UPDATE stormwall_jobs
                        SET state = 'ready', lease_until = NULL, leased_by = NULL,
                            expired_leases = expired_leases + 1,
                            last_error = 'lease expired: worker ' || quote_literal(leased_by) || ' neither acked nor failed it'
                      WHERE id IN (SELECT id FROM stormwall_jobs
                                    WHERE queue = $1 AND state = 'leased' AND attempts < $2
                                      AND lease_until < ",
                    now_ms!(),
                    " FOR UPDATE SKIP LOCKED)"
                ),
                // A job at its last attempt whose lease ran out after the statement above
                // read the clock stays leased: the next lease dead-letters it.
                &[&queue, &limit],
            )
            .await?;
            // A suspect job is leased alone: a job that kills its worker costs only its own
            // attempts, not its batch's.
            let suspect = tx
                .query_opt(
                    concat!(
                        "SELECT id FROM stormwall_jobs
                          WHERE queue = $1 AND state = 'ready' AND expired_leases > 0 AND run_at <= ",
                        now_ms!(),
                        " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                    ),
                    &[&queue],
                )
                .await?
                .map(|row| row.get::<_, i64>(0));
            let statement = tx
                .prepare_cached(concat!(
                    "UPDATE stormwall_jobs
                        SET state = 'leased', lease_until = ",
                    now_ms!(),
                    " + $1, leased_by = $2, attempts = attempts + 1
                      WHERE id IN (SELECT id FROM stormwall_jobs
                                    WHERE queue = $3
                                      AND state IN ('ready', 'leased')
                                      AND state = 'ready' AND run_at <= ",
                    now_ms!(),
                    " AND ($5::BIGINT IS NULL OR id = $5)
                                    ORDER BY id LIMIT $4
                                    FOR UPDATE SKIP LOCKED)
                  RETURNING id, payload, idempotency_key, attempts"
                ))
                .await?;
            let rows = tx
                .query(
                    &statement,
                    &[
                        &(visibility.as_millis() as i64),
                        &worker,
                        &queue,
                        &(if suspect.is_some() { 1 } else { max as i64 }),
                        &suspect,
                    ],
                )
                .await?;
            let mut jobs: Vec<Job> = rows
                .iter()
                .map(|r| Job {
                    id: r.get(0),
                    queue: queue.to_owned(),
                    payload: r.get(1),
                    idempotency_key: r.get(2),
                    attempts: r.get::<_, i32>(3) as u32,
                    worker: worker.to_owned(),
                })
                .collect();
            tx.commit().await?;
            jobs.sort_by_key(|j| j.id);
            Ok(jobs)
            })
            .await
    }

    pub(crate) async fn ack_all(&self, jobs: Vec<(i64, String)>) -> Result<usize, QueueError> {
        self.pool
            .run(async |client| {
                let (ids, workers): (Vec<i64>, Vec<String>) = jobs.into_iter().unzip();
                let acked = client
                    .execute(
                        "UPDATE stormwall_jobs SET state = 'done', lease_until = NULL
                      WHERE state = 'leased'
                        AND (id, leased_by) IN (SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[]))",
                        &[&ids, &workers],
                    )
                    .await?;
                Ok(acked as usize)
            })
            .await
    }

    pub(crate) async fn release(&self, id: i64, worker: String) -> Result<usize, QueueError> {
        let changed = self
            .pool
            .execute(
                "UPDATE stormwall_jobs
                    SET state = 'ready', attempts = GREATEST(attempts - 1, 0), lease_until = NULL, leased_by = NULL
                  WHERE id = $1 AND state = 'leased' AND leased_by = $2",
                &[&id, &worker],
            )
            .await?;
        Ok(changed as usize)
    }

    pub(crate) async fn fail(
        &self,
        id: i64,
        worker: String,
        error: String,
        backoff: Duration,
        dead: bool,
    ) -> Result<usize, QueueError> {
        let changed = self
            .pool
            .execute(
                concat!(
                    "UPDATE stormwall_jobs
                        SET state = $1, run_at = ",
                    now_ms!(),
                    " + $2, lease_until = NULL, last_error = $3
                      WHERE id = $4 AND state = 'leased' AND leased_by = $5"
                ),
                &[
                    &if dead { "dead" } else { "ready" },
                    &(backoff.as_millis() as i64),
                    &error,
                    &id,
                    &worker,
                ],
            )
            .await?;
        Ok(changed as usize)
    }

    pub(crate) async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, QueueError> {
        let rows = self
            .pool
            .query(
                "SELECT id, idempotency_key, last_error FROM stormwall_jobs
                  WHERE queue = $1 AND state = 'dead' ORDER BY id",
                &[&queue],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    pub(crate) async fn requeue_dead(&self, queue: &str) -> Result<usize, QueueError> {
        let changed = self
            .pool
            .execute(
                concat!(
                    "UPDATE stormwall_jobs SET state = 'ready', attempts = 0, expired_leases = 0, run_at = ",
                    now_ms!(),
                    " WHERE queue = $1 AND state = 'dead'"
                ),
                &[&queue],
            )
            .await?;
        Ok(changed as usize)
    }

    pub(crate) async fn purge_dead(&self, queue: &str) -> Result<usize, QueueError> {
        let changed = self
            .pool
            .execute(
                "DELETE FROM stormwall_jobs WHERE queue = $1 AND state = 'dead'",
                &[&queue],
            )
            .await?;
        Ok(changed as usize)
    }

    pub(crate) async fn purge_done(
        &self,
        queue: &str,
        older_than_ms: i64,
    ) -> Result<usize, QueueError> {
        let changed = self
            .pool
            .execute(
                concat!(
                    "DELETE FROM stormwall_jobs WHERE queue = $1 AND state = 'done' AND created_at <= ",
                    now_ms!(),
                    " - $2"
                ),
                &[&queue, &older_than_ms],
            )
            .await?;
        Ok(changed as usize)
    }

    pub(crate) async fn states(&self, queue: &str) -> Result<Vec<StateCount>, QueueError> {
        let rows = self
            .pool
            .query(
                concat!(
                    "SELECT state, COUNT(*), ",
                    now_ms!(),
                    " - MIN(created_at) FROM stormwall_jobs WHERE queue = $1 GROUP BY state"
                ),
                &[&queue],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}
