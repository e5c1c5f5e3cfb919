//! The SQLite backend: one file, one writer thread that commits concurrent enqueues
//! together (group commit), `synchronous = FULL` so a commit is on disk when it returns.

use crate::queue::{DeadLetter, Enqueued, Job, QueueError, StateCount, SCHEMA_VERSION};
use crate::storage::{SqliteDeadline, StorageTimeouts};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stormwall_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stormwall_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload BLOB NOT NULL,
    idempotency_key TEXT,
    state TEXT NOT NULL DEFAULT 'ready',
    attempts INTEGER NOT NULL DEFAULT 0,
    run_at INTEGER NOT NULL,
    lease_until INTEGER,
    leased_by TEXT,
    created_at INTEGER NOT NULL,
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

/// Leases that ran out with attempts left (queue ?1, now ?2, attempts allowed ?3): the job is ready again and
/// suspect — its worker died or hung while holding it, on it or on another job of its batch.
const EXPIRE: &str = "UPDATE stormwall_jobs
       SET state = 'ready', lease_until = NULL, leased_by = NULL,
           expired_leases = expired_leases + 1,
           last_error = 'lease expired: worker ' || quote(leased_by) || ' neither acked nor failed it'
     WHERE queue = ?1 AND state = 'leased' AND lease_until < ?2 AND attempts < ?3";

/// The first due suspect job of queue ?1 (now ?2), if any: it is leased alone, so a job that
/// kills its worker costs only its own attempts, not its batch's.
const SUSPECT: &str = "SELECT id FROM stormwall_jobs INDEXED BY stormwall_jobs_suspect
     WHERE queue = ?1 AND state = 'ready' AND expired_leases > 0 AND run_at <= ?2
     ORDER BY id LIMIT 1";

/// Leases up to ?5 due jobs of queue ?3 for worker ?2 until ?1 (now ?4), in id order:
/// reads the pending jobs' index only.
const LEASE: &str = "UPDATE stormwall_jobs
       SET state = 'leased', lease_until = ?1, leased_by = ?2, attempts = attempts + 1
     WHERE id IN (SELECT id FROM stormwall_jobs INDEXED BY stormwall_jobs_pending
                   WHERE queue = ?3 AND state IN ('ready', 'leased')
                     AND state = 'ready' AND run_at <= ?4
                   ORDER BY id LIMIT ?5)
    RETURNING id, payload, idempotency_key, attempts";

/// Leases the job ?3 for worker ?2 until ?1.
const LEASE_ONE: &str = "UPDATE stormwall_jobs
       SET state = 'leased', lease_until = ?1, leased_by = ?2, attempts = attempts + 1
     WHERE id = ?3 AND state = 'ready'
    RETURNING id, payload, idempotency_key, attempts";

/// Indexes on columns a migration may add: made after it.
const LATE_INDEXES: &str = "
-- Ready jobs whose lease once ran out: each is leased alone.
CREATE INDEX IF NOT EXISTS stormwall_jobs_suspect ON stormwall_jobs (queue, id)
    WHERE state = 'ready' AND expired_leases > 0;
";

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

/// One operation for the writer thread, run within the connection's deadline.
type Work = Box<dyn FnOnce(&mut Connection, &SqliteDeadline) + Send>;

enum Command {
    Enqueue {
        queue: String,
        payload: Vec<u8>,
        key: Option<String>,
        delay_ms: i64,
        reply: Reply<Enqueued>,
    },
    Run(Work),
}

/// The SQLite queue: clones share the database and its writer thread.
#[derive(Clone)]
pub(crate) struct Sqlite {
    commands: std_mpsc::Sender<Command>,
    timeouts: StorageTimeouts,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn open(
    path: &Path,
    timeouts: &StorageTimeouts,
) -> Result<(Connection, SqliteDeadline), QueueError> {
    // synchronous = FULL: an Ok enqueue survives a crash.
    let (connection, deadline) = crate::storage::open_sqlite(path, timeouts)?;
    connection.execute_batch(SCHEMA)?;
    let found: Option<String> = connection
        .query_row(
            "SELECT value FROM stormwall_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let found = crate::queue::check_schema(found)?;
    if found != Some(SCHEMA_VERSION) {
        if found == Some(1) {
            // Version 1: the table was there before `expired_leases`.
            connection.execute_batch(
                "ALTER TABLE stormwall_jobs ADD COLUMN expired_leases INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        connection.execute(
            "INSERT OR REPLACE INTO stormwall_meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )?;
    }
    connection.execute_batch(LATE_INDEXES)?;
    Ok((connection, deadline))
}

/// The writer thread: takes the commands waiting, commits all enqueues among them in one
/// transaction, answers each.
/// What a SQLite error means to the caller: one of the timeouts, typed, or the error.
fn typed(e: rusqlite::Error, deadline: &SqliteDeadline, timeouts: &StorageTimeouts) -> QueueError {
    match deadline.timed_out(&e, timeouts.wait) {
        Some((what, after)) => QueueError::Timeout { what, after },
        None => QueueError::Database(e),
    }
}

fn writer(
    mut connection: Connection,
    deadline: SqliteDeadline,
    commands: std_mpsc::Receiver<Command>,
    max_batch: usize,
    timeouts: StorageTimeouts,
) {
    while let Ok(first) = commands.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match commands.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut enqueues = Vec::new();
        for command in batch {
            match command {
                Command::Run(run) => deadline.bound(|| run(&mut connection, &deadline)),
                Command::Enqueue {
                    queue,
                    payload,
                    key,
                    delay_ms,
                    reply,
                } => enqueues.push((queue, payload, key, delay_ms, reply)),
            }
        }
        if enqueues.is_empty() {
            continue;
        }
        let result = deadline.bound(|| -> Result<Vec<Enqueued>, rusqlite::Error> {
            let tx =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut ids = Vec::with_capacity(enqueues.len());
            {
                let now = now_ms();
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO stormwall_jobs (queue, payload, idempotency_key, run_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let mut existing = tx.prepare_cached(
                    "SELECT id FROM stormwall_jobs WHERE queue = ?1 AND idempotency_key = ?2",
                )?;
                for (queue, payload, key, delay_ms, _) in &enqueues {
                    let added =
                        insert.execute(params![queue, payload, key, now + delay_ms, now])?;
                    if added == 1 {
                        ids.push(Enqueued {
                            id: tx.last_insert_rowid(),
                            duplicate: false,
                        });
                    } else {
                        let id: i64 = existing.query_row(params![queue, key], |r| r.get(0))?;
                        ids.push(Enqueued {
                            id,
                            duplicate: true,
                        });
                    }
                }
            }
            tx.commit()?;
            Ok(ids)
        });
        match result {
            Ok(ids) => {
                for ((.., reply), id) in enqueues.into_iter().zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) => {
                let timed_out = deadline.timed_out(&e, timeouts.wait);
                let message = e.to_string();
                for (.., reply) in enqueues {
                    let _ = reply.send(Err(match timed_out {
                        Some((what, after)) => QueueError::Timeout { what, after },
                        None => QueueError::Commit(message.clone()),
                    }));
                }
            }
        }
    }
}

impl Sqlite {
    pub(crate) fn open(
        path: &Path,
        max_batch: usize,
        timeouts: StorageTimeouts,
    ) -> Result<Self, QueueError> {
        let (connection, deadline) = open(path, &timeouts)?;
        let (commands, receiver) = std_mpsc::channel();
        let max_batch = max_batch.max(1);
        std::thread::Builder::new()
            .name("stormwall-durable-writer".into())
            .spawn(move || writer(connection, deadline, receiver, max_batch, timeouts))
            .map_err(|_| QueueError::Closed)?;
        Ok(Sqlite { commands, timeouts })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let (reply, answer) = oneshot::channel();
        let timeouts = self.timeouts;
        self.commands
            .send(Command::Run(Box::new(move |c, deadline| {
                let _ = reply.send(work(c).map_err(|e| match e {
                    QueueError::Database(e) => typed(e, deadline, &timeouts),
                    other => other,
                }));
            })))
            .map_err(|_| QueueError::Closed)?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// [`run`](Self::run) for a change that a power loss may undo without harm — a lease,
    /// an ack, a failure: the job then runs again, which at-least-once delivery allows. Its
    /// commit is not fsynced (`synchronous = NORMAL`: still atomic, and on disk at the next
    /// enqueue's commit, which fsyncs the log), so a worker's round costs no disk flush.
    async fn run_relaxed<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        self.run(move |c| {
            c.pragma_update(None, "synchronous", "NORMAL")?;
            let result = work(c);
            // Enqueues must stay durable when they return.
            c.pragma_update(None, "synchronous", "FULL")?;
            result
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
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Enqueue {
                queue: queue.to_owned(),
                payload,
                key: key.map(str::to_owned),
                delay_ms: delay.as_millis() as i64,
                reply,
            })
            .map_err(|_| QueueError::Closed)?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    pub(crate) async fn lease(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        visibility: Duration,
        max_attempts: i64,
    ) -> Result<Vec<Job>, QueueError> {
        let (queue, worker) = (queue.to_owned(), worker.to_owned());
        self.run_relaxed(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Jobs whose last allowed lease ran out: a worker died on them every time.
            let dead: Vec<(i64, i64, i64, String)> = {
                let mut statement = tx.prepare_cached(
                    "UPDATE stormwall_jobs
                        SET state = 'dead', lease_until = NULL, expired_leases = expired_leases + 1
                      WHERE queue = ?1 AND state = 'leased' AND lease_until < ?2 AND attempts >= ?3
                  RETURNING id, expired_leases, attempts, COALESCE(leased_by, '')",
                )?;
                let rows = statement.query_map(params![queue, now, max_attempts], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            for (id, expired, attempts, holder) in dead {
                let error = crate::queue::lease_expired_error(expired, attempts, &holder);
                tracing::warn!(job = id, %queue, %error, "stormwall-durable: job moved to dead letters");
                tx.execute(
                    "UPDATE stormwall_jobs SET last_error = ?1 WHERE id = ?2",
                    params![error, id],
                )?;
            }
            tx.prepare_cached(EXPIRE)?.execute(params![queue, now, max_attempts])?;
            let suspect: Option<i64> = tx
                .prepare_cached(SUSPECT)?
                .query_row(params![queue, now], |r| r.get(0))
                .optional()?;
            let until = now + visibility.as_millis() as i64;
            let row = |r: &rusqlite::Row<'_>| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Value>(1)?, r.get::<_, Value>(2)?, r.get::<_, Value>(3)?))
            };
            let rows = match suspect {
                Some(id) => tx
                    .prepare_cached(LEASE_ONE)?
                    .query_map(params![until, worker, id], row)?
                    .collect::<Result<Vec<_>, _>>()?,
                None => tx
                    .prepare_cached(LEASE)?
                    .query_map(params![until, worker, queue, now, max as i64], row)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            // A row that does not read as a job (written by hand, or by another program) is
            // a dead letter that says why — it must not block the queue's other jobs.
            let mut jobs = Vec::with_capacity(rows.len());
            for (id, payload, key, attempts) in rows {
                let payload = match payload {
                    Value::Blob(b) => Ok(b),
                    Value::Text(t) => Ok(t.into_bytes()),
                    other => Err(format!("payload is {:?}", other.data_type())),
                };
                let key = match key {
                    Value::Null => Ok(None),
                    Value::Text(t) => Ok(Some(t)),
                    other => Err(format!("idempotency_key is {:?}", other.data_type())),
                };
                let attempts = match attempts {
                    Value::Integer(n) if (0..=i64::from(u32::MAX)).contains(&n) => Ok(n as u32),
                    other => Err(format!("attempts is {other:?}")),
                };
                match (payload, key, attempts) {
                    (Ok(payload), Ok(idempotency_key), Ok(attempts)) => jobs.push(Job {
                        id,
                        queue: queue.clone(),
                        payload,
                        idempotency_key,
                        attempts,
                        worker: worker.clone(),
                    }),
                    (payload, key, attempts) => {
                        let why = [payload.err(), key.err(), attempts.err()]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(", ");
                        tracing::warn!(job = id, %why, "stormwall-durable: corrupt job row moved to dead letters");
                        tx.execute(
                            "UPDATE stormwall_jobs SET state = 'dead', lease_until = NULL, last_error = ?1 WHERE id = ?2",
                            params![format!("corrupt row: {why}"), id],
                        )?;
                    }
                }
            }
            tx.commit()?;
            Ok(jobs)
        })
        .await
    }

    pub(crate) async fn ack_all(&self, jobs: Vec<(i64, String)>) -> Result<usize, QueueError> {
        self.run_relaxed(move |c| {
            let tx = c.transaction()?;
            let mut acked = 0;
            {
                let mut statement = tx.prepare_cached(
                    "UPDATE stormwall_jobs SET state = 'done', lease_until = NULL
                      WHERE id = ?1 AND state = 'leased' AND leased_by = ?2",
                )?;
                for (id, worker) in &jobs {
                    acked += statement.execute(params![id, worker])?;
                }
            }
            tx.commit()?;
            Ok(acked)
        })
        .await
    }

    pub(crate) async fn release(&self, id: i64, worker: String) -> Result<usize, QueueError> {
        self.run_relaxed(move |c| {
            Ok(c.execute(
                "UPDATE stormwall_jobs
                    SET state = 'ready', attempts = MAX(attempts - 1, 0), lease_until = NULL, leased_by = NULL
                  WHERE id = ?1 AND state = 'leased' AND leased_by = ?2",
                params![id, worker],
            )?)
        })
        .await
    }

    pub(crate) async fn fail(
        &self,
        id: i64,
        worker: String,
        error: String,
        backoff: Duration,
        dead: bool,
    ) -> Result<usize, QueueError> {
        self.run_relaxed(move |c| {
            Ok(c.execute(
                "UPDATE stormwall_jobs
                    SET state = ?1, run_at = ?2, lease_until = NULL, last_error = ?3
                  WHERE id = ?4 AND state = 'leased' AND leased_by = ?5",
                params![
                    if dead { "dead" } else { "ready" },
                    now_ms() + backoff.as_millis() as i64,
                    error,
                    id,
                    worker
                ],
            )?)
        })
        .await
    }

    pub(crate) async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, QueueError> {
        let queue = queue.to_owned();
        self.run(move |c| {
            let mut s = c.prepare(
                "SELECT id, idempotency_key, last_error FROM stormwall_jobs WHERE queue = ?1 AND state = 'dead' ORDER BY id",
            )?;
            let rows = s.query_map(params![queue], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(crate) async fn requeue_dead(&self, queue: &str) -> Result<usize, QueueError> {
        let queue = queue.to_owned();
        self.run(move |c| {
            Ok(c.execute(
                "UPDATE stormwall_jobs SET state = 'ready', attempts = 0, expired_leases = 0, run_at = ?1 WHERE queue = ?2 AND state = 'dead'",
                params![now_ms(), queue],
            )?)
        })
        .await
    }

    pub(crate) async fn purge_dead(&self, queue: &str) -> Result<usize, QueueError> {
        let queue = queue.to_owned();
        self.run(move |c| {
            Ok(c.execute(
                "DELETE FROM stormwall_jobs WHERE queue = ?1 AND state = 'dead'",
                params![queue],
            )?)
        })
        .await
    }

    pub(crate) async fn purge_done(
        &self,
        queue: &str,
        older_than_ms: i64,
    ) -> Result<usize, QueueError> {
        let queue = queue.to_owned();
        self.run(move |c| {
            Ok(c.execute(
                "DELETE FROM stormwall_jobs WHERE queue = ?1 AND state = 'done' AND created_at <= ?2",
                params![queue, now_ms().saturating_sub(older_than_ms)],
            )?)
        })
        .await
    }

    pub(crate) async fn states(&self, queue: &str) -> Result<Vec<StateCount>, QueueError> {
        let queue = queue.to_owned();
        self.run(move |c| {
            let mut s = c.prepare(
                "SELECT state, COUNT(*), ?2 - MIN(created_at) FROM stormwall_jobs WHERE queue = ?1 GROUP BY state",
            )?;
            let rows = s.query_map(params![queue, now_ms()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease reads the pending jobs' index, not every job of its queue: done jobs pile up
    /// until `purge_done`, and a lease that scanned them slowed the queue down with its
    /// history (32 ms per lease with 100,000 done jobs, 45 µs with the index).
    #[test]
    fn a_lease_reads_only_pending_jobs() {
        let dir = std::env::temp_dir().join(format!("stormwall-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (connection, _) = open(&dir.join("plan.db"), &StorageTimeouts::default()).unwrap();
        let plan: Vec<String> = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {LEASE}"))
            .unwrap()
            .query_map(params![1, "w", "q", 0, 16], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            plan.iter()
                .any(|step| step.contains("stormwall_jobs_pending")),
            "the lease's plan: {plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|step| step.starts_with("SCAN stormwall_jobs")),
            "the lease's plan: {plan:?}"
        );
    }
}
