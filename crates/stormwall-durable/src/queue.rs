use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// The schema version this crate writes; a newer database is refused.
const SCHEMA_VERSION: i64 = 1;

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
    UNIQUE (queue, idempotency_key)
);
CREATE INDEX IF NOT EXISTS stormwall_jobs_due ON stormwall_jobs (queue, state, run_at);
";

/// What went wrong with the queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The database could not be opened, read or written.
    #[error("queue database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The database was written by a newer version.
    #[error("queue database schema version {found} is newer than this stormwall's ({supported})")]
    NewerSchema {
        /// The version found.
        found: i64,
        /// The newest this build reads.
        supported: i64,
    },
    /// A payload over the configured limit.
    #[error("payload of {size} bytes is over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// `max_payload_bytes`.
        limit: usize,
    },
    /// The job is not leased by this worker (acked already, or its lease expired and
    /// another worker took it).
    #[error("job {0} is not leased by this worker")]
    NotLeased(i64),
    /// The queue's writer thread is gone (or could not start).
    #[error("the queue is closed")]
    Closed,
    /// A batch of enqueues could not be committed: none of them was added.
    #[error("commit failed, nothing was enqueued: {0}")]
    Commit(String),
}

/// Options of a queue.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Largest payload accepted. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Most enqueues committed together. Default 512.
    pub max_batch: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            max_payload_bytes: 1024 * 1024,
            max_batch: 512,
        }
    }
}

/// The result of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id.
    pub id: i64,
    /// True when a job with the same idempotency key existed: nothing was added.
    pub duplicate: bool,
}

/// A leased job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// What to do.
    pub payload: Vec<u8>,
    /// The key the producer gave (pass it to the target so it can deduplicate).
    pub idempotency_key: Option<String>,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// Who holds the lease.
    pub worker: String,
}

/// How many jobs a queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Waiting (due now or later).
    pub ready: u64,
    /// Leased by a worker.
    pub leased: u64,
    /// Given up after the maximum attempts.
    pub dead: u64,
    /// Done.
    pub done: u64,
    /// Age of the oldest waiting job.
    pub oldest_ready_age: Duration,
}

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

enum Command {
    Enqueue {
        queue: String,
        payload: Vec<u8>,
        key: Option<String>,
        delay_ms: i64,
        reply: Reply<Enqueued>,
    },
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// A durable job queue on SQLite. Clones share the database and its writer thread.
#[derive(Clone)]
pub struct DurableQueue {
    commands: std_mpsc::Sender<Command>,
    options: QueueOptions,
}

impl std::fmt::Debug for DurableQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableQueue")
            .field("options", &self.options)
            .finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn open(path: &Path) -> Result<Connection, QueueError> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk (fsync) before it returns — an Ok enqueue survives a crash.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.busy_timeout(Duration::from_secs(5))?;
    connection.execute_batch(SCHEMA)?;
    let found: Option<String> = connection
        .query_row(
            "SELECT value FROM stormwall_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match found.and_then(|v| v.parse::<i64>().ok()) {
        Some(found) if found > SCHEMA_VERSION => {
            return Err(QueueError::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            })
        }
        Some(_) => {}
        None => {
            connection.execute(
                "INSERT OR REPLACE INTO stormwall_meta (key, value) VALUES ('schema_version', ?1)",
                params![SCHEMA_VERSION.to_string()],
            )?;
        }
    }
    Ok(connection)
}

/// The writer thread: takes the commands waiting, commits all enqueues among them in one
/// transaction, answers each.
fn writer(mut connection: Connection, commands: std_mpsc::Receiver<Command>, max_batch: usize) {
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
                Command::Run(run) => run(&mut connection),
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
        let result = (|| -> Result<Vec<Enqueued>, rusqlite::Error> {
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
        })();
        match result {
            Ok(ids) => {
                for ((.., reply), id) in enqueues.into_iter().zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (.., reply) in enqueues {
                    let _ = reply.send(Err(QueueError::Commit(message.clone())));
                }
            }
        }
    }
}

impl DurableQueue {
    /// Opens (or creates) the queue database at `path`.
    pub fn open(path: impl AsRef<Path>, options: QueueOptions) -> Result<Self, QueueError> {
        let connection = open(path.as_ref())?;
        let (commands, receiver) = std_mpsc::channel();
        let max_batch = options.max_batch.max(1);
        std::thread::Builder::new()
            .name("stormwall-durable-writer".into())
            .spawn(move || writer(connection, receiver, max_batch))
            .map_err(|_| QueueError::Closed)?;
        Ok(DurableQueue { commands, options })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Run(Box::new(move |c| {
                let _ = reply.send(work(c));
            })))
            .map_err(|_| QueueError::Closed)?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// Adds a job; returns once it is committed to disk. With an `idempotency_key` that
    /// the queue has seen, adds nothing and returns the first job's id.
    pub async fn enqueue(
        &self,
        queue: &str,
        payload: impl Into<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Result<Enqueued, QueueError> {
        self.enqueue_after(queue, payload, idempotency_key, Duration::ZERO)
            .await
    }

    /// Like [`enqueue`](Self::enqueue), due only after `delay`.
    pub async fn enqueue_after(
        &self,
        queue: &str,
        payload: impl Into<Vec<u8>>,
        idempotency_key: Option<&str>,
        delay: Duration,
    ) -> Result<Enqueued, QueueError> {
        let payload = payload.into();
        if payload.len() > self.options.max_payload_bytes {
            return Err(QueueError::PayloadTooLarge {
                size: payload.len(),
                limit: self.options.max_payload_bytes,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Enqueue {
                queue: queue.to_owned(),
                payload,
                key: idempotency_key.map(str::to_owned),
                delay_ms: delay.as_millis() as i64,
                reply,
            })
            .map_err(|_| QueueError::Closed)?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// Leases up to `max` due jobs of `queue` for `visibility`: until then no other worker
    /// gets them; after it (a crashed worker), they are due again.
    pub async fn lease(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Job>, QueueError> {
        let (queue, worker) = (queue.to_owned(), worker.to_owned());
        self.run(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let jobs = {
                let mut statement = tx.prepare_cached(
                    "UPDATE stormwall_jobs
                        SET state = 'leased', lease_until = ?1, leased_by = ?2, attempts = attempts + 1
                      WHERE id IN (SELECT id FROM stormwall_jobs
                                    WHERE queue = ?3
                                      AND ((state = 'ready' AND run_at <= ?4) OR (state = 'leased' AND lease_until < ?4))
                                    ORDER BY id LIMIT ?5)
                  RETURNING id, payload, idempotency_key, attempts",
                )?;
                let rows = statement.query_map(
                    params![now + visibility.as_millis() as i64, worker, queue, now, max as i64],
                    |r| {
                        Ok(Job {
                            id: r.get(0)?,
                            queue: queue.clone(),
                            payload: r.get(1)?,
                            idempotency_key: r.get(2)?,
                            attempts: r.get::<_, i64>(3)? as u32,
                            worker: worker.clone(),
                        })
                    },
                )?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            tx.commit()?;
            Ok(jobs)
        })
        .await
    }

    /// The job is done.
    pub async fn ack(&self, job: &Job) -> Result<(), QueueError> {
        let (id, worker) = (job.id, job.worker.clone());
        self.run(move |c| {
            let changed = c.execute(
                "UPDATE stormwall_jobs SET state = 'done', lease_until = NULL
                  WHERE id = ?1 AND state = 'leased' AND leased_by = ?2",
                params![id, worker],
            )?;
            if changed == 0 {
                return Err(QueueError::NotLeased(id));
            }
            Ok(())
        })
        .await
    }

    /// Acks several jobs in one transaction (one disk flush): how many were still leased
    /// by their workers.
    pub async fn ack_all(&self, jobs: &[Job]) -> Result<usize, QueueError> {
        let jobs: Vec<(i64, String)> = jobs.iter().map(|j| (j.id, j.worker.clone())).collect();
        self.run(move |c| {
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

    /// The job failed: due again after `backoff` — or, at `max_attempts`, a dead letter.
    pub async fn fail(
        &self,
        job: &Job,
        error: &str,
        backoff: Duration,
        max_attempts: u32,
    ) -> Result<(), QueueError> {
        let (id, worker, error) = (job.id, job.worker.clone(), error.to_owned());
        let dead = job.attempts >= max_attempts;
        self.run(move |c| {
            let changed = c.execute(
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
            )?;
            if changed == 0 {
                return Err(QueueError::NotLeased(id));
            }
            Ok(())
        })
        .await
    }

    /// The dead letters of `queue`: (job id, idempotency key, last error).
    pub async fn dead_letters(
        &self,
        queue: &str,
    ) -> Result<Vec<(i64, Option<String>, Option<String>)>, QueueError> {
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

    /// Puts every dead letter of `queue` back, with its attempts reset; how many.
    pub async fn requeue_dead(&self, queue: &str) -> Result<usize, QueueError> {
        let queue = queue.to_owned();
        self.run(move |c| {
            Ok(c.execute(
                "UPDATE stormwall_jobs SET state = 'ready', attempts = 0, run_at = ?1 WHERE queue = ?2 AND state = 'dead'",
                params![now_ms(), queue],
            )?)
        })
        .await
    }

    /// Deletes every dead letter of `queue`; how many.
    pub async fn purge_dead(&self, queue: &str) -> Result<usize, QueueError> {
        let queue = queue.to_owned();
        self.run(move |c| {
            Ok(c.execute(
                "DELETE FROM stormwall_jobs WHERE queue = ?1 AND state = 'dead'",
                params![queue],
            )?)
        })
        .await
    }

    /// How many jobs `queue` holds, by state (also reported as metrics
    /// `stormwall_queue_depth{queue,state}` and `stormwall_queue_oldest_age_seconds{queue}`).
    pub async fn depth(&self, queue: &str) -> Result<QueueDepth, QueueError> {
        let queue = queue.to_owned();
        self.run(move |c| {
            let mut depth = QueueDepth::default();
            let mut s = c.prepare(
                "SELECT state, COUNT(*), MIN(created_at) FROM stormwall_jobs WHERE queue = ?1 GROUP BY state",
            )?;
            let rows = s.query_map(params![queue], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?))
            })?;
            for row in rows {
                let (state, count, oldest) = row?;
                let count = count as u64;
                match state.as_str() {
                    "ready" => {
                        depth.ready = count;
                        depth.oldest_ready_age = Duration::from_millis(
                            oldest.map_or(0, |o| (now_ms() - o).max(0) as u64),
                        );
                    }
                    "leased" => depth.leased = count,
                    "dead" => depth.dead = count,
                    _ => depth.done = count,
                }
            }
            let label = queue.clone();
            for (state, count) in [
                ("ready", depth.ready),
                ("leased", depth.leased),
                ("dead", depth.dead),
            ] {
                metrics::gauge!("stormwall_queue_depth", "queue" => label.clone(), "state" => state)
                    .set(count as f64);
            }
            metrics::gauge!("stormwall_queue_oldest_age_seconds", "queue" => label)
                .set(depth.oldest_ready_age.as_secs_f64());
            Ok(depth)
        })
        .await
    }
}
