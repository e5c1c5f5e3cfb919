//! The queue's API; the storage is SQLite ([`DurableQueue::open`]) or PostgreSQL
//! ([`DurableQueue::connect_postgres`], feature `postgres`), with the same semantics.

use std::path::Path;
use std::time::Duration;

/// The schema version this crate writes; a newer database is refused. Version 2 added
/// `expired_leases` (how many times a job's lease ran out without an ack or fail).
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// A dead letter: (job id, idempotency key, last error).
pub type DeadLetter = (i64, Option<String>, Option<String>);

/// (state, jobs, age of the oldest in ms).
pub(crate) type StateCount = (String, i64, Option<i64>);

/// Checks the stored schema version: the version found (readable by this build), `None`
/// when absent (a new database).
pub(crate) fn check_schema(found: Option<String>) -> Result<Option<i64>, QueueError> {
    let Some(found) = found else {
        return Ok(None);
    };
    let version = found
        .parse::<i64>()
        .map_err(|_| QueueError::CorruptSchema(found.clone()))?;
    if version > SCHEMA_VERSION {
        return Err(QueueError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Some(version))
}

/// The dead letter's error of a job whose lease ran out for the last time it may.
pub(crate) fn lease_expired_error(expired: i64, attempts: i64, worker: &str) -> String {
    let times = if expired == 1 { "time" } else { "times" };
    format!(
        "lease expired {expired} {times} (attempt {attempts} was the last allowed): \
         worker {worker:?} neither acked nor failed it — it crashed or hung on this job"
    )
}

/// What went wrong with the queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The SQLite database could not be opened, read or written.
    #[error("queue database: {0}")]
    Database(#[from] rusqlite::Error),
    /// A PostgreSQL statement failed.
    #[cfg(feature = "postgres")]
    #[error("queue database (PostgreSQL): {}", crate::storage::postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The database server could not be reached (connection refused, closed).
    #[error("queue database unreachable: {0}")]
    Unreachable(String),
    /// One of [`QueueOptions::timeouts`] fired: the database did not answer in time. The
    /// operation may still have taken effect (an enqueue committed as the bound fired);
    /// enqueue with an idempotency key to make retrying it safe.
    #[error("queue database: no {what} within {after:?} (QueueOptions::timeouts.{what})")]
    Timeout {
        /// Which bound.
        what: crate::storage::TimedOut,
        /// Its value.
        after: Duration,
    },
    /// A connection URL that does not parse.
    #[error("invalid queue database URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The stored schema version is not a number.
    #[error("queue database schema version {0:?} is corrupt")]
    CorruptSchema(String),
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
    /// An option outside its valid range (named, with its value and what is valid).
    #[error(transparent)]
    InvalidOption(#[from] crate::storage::InvalidOption),
    /// A batch of enqueues could not be committed: none of them was added.
    #[error("commit failed, nothing was enqueued: {0}")]
    Commit(String),
}

/// Options of a queue.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Largest payload accepted. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Most enqueues committed together (SQLite). Default 512.
    pub max_batch: usize,
    /// Connections in the pool (PostgreSQL). Default 8.
    pub connections: usize,
    /// Leases a job may take before it becomes a dead letter when [`lease`] finds its last
    /// lease expired (the worker crashed or hung on it: it never acked or failed it).
    /// A [`Worker`] uses its own [`WorkerOptions::max_attempts`] instead. Default 5;
    /// valid ≥ 1.
    ///
    /// [`lease`]: DurableQueue::lease
    /// [`Worker`]: crate::Worker
    /// [`WorkerOptions::max_attempts`]: crate::WorkerOptions::max_attempts
    pub max_attempts: u32,
    /// Bounds on every database operation (connect, pool wait, statement): a database
    /// that does not answer makes callers fail with [`QueueError::Timeout`] instead of
    /// hanging. Defaults 5 s, 5 s, 10 s.
    pub timeouts: crate::storage::StorageTimeouts,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            max_payload_bytes: 1024 * 1024,
            max_batch: 512,
            connections: 8,
            max_attempts: 5,
            timeouts: crate::storage::StorageTimeouts::default(),
        }
    }
}

impl QueueOptions {
    /// Checks every option is in its documented range; the error names the option.
    pub fn validate(&self) -> Result<(), QueueError> {
        use crate::storage::InvalidOption;
        let at_least_one = [
            ("QueueOptions::max_payload_bytes", self.max_payload_bytes),
            ("QueueOptions::max_batch", self.max_batch),
            ("QueueOptions::connections", self.connections),
            ("QueueOptions::max_attempts", self.max_attempts as usize),
        ];
        for (field, value) in at_least_one {
            if value == 0 {
                return Err(InvalidOption::new(field, value, "≥ 1").into());
            }
        }
        Ok(self.timeouts.validate("QueueOptions::timeouts")?)
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

#[derive(Clone)]
enum Backend {
    Sqlite(crate::sqlite::Sqlite),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::Postgres),
}

/// Calls the same method on whichever backend the queue has.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.backend {
            Backend::Sqlite(b) => b.$method($($arg),*).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.$method($($arg),*).await,
        }
    };
}

/// A durable job queue. Clones share the database (and, on SQLite, its writer thread).
#[derive(Clone)]
pub struct DurableQueue {
    backend: Backend,
    options: QueueOptions,
}

impl std::fmt::Debug for DurableQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("DurableQueue")
            .field("backend", &backend)
            .field("options", &self.options)
            .finish()
    }
}

impl DurableQueue {
    /// Opens (or creates) the SQLite queue database at `path`.
    pub fn open(path: impl AsRef<Path>, options: QueueOptions) -> Result<Self, QueueError> {
        options.validate()?;
        let backend = Backend::Sqlite(crate::sqlite::Sqlite::open(
            path.as_ref(),
            options.max_batch,
            options.timeouts,
        )?);
        Ok(DurableQueue { backend, options })
    }

    /// Connects to PostgreSQL (`postgres://user@host:port/db` or `host=… user=…`),
    /// creating the tables if missing, so that many replicas can drain one queue.
    #[cfg(feature = "postgres")]
    pub async fn connect_postgres(url: &str, options: QueueOptions) -> Result<Self, QueueError> {
        options.validate()?;
        let backend = Backend::Postgres(
            crate::postgres::Postgres::connect(url, options.connections, options.timeouts).await?,
        );
        Ok(DurableQueue { backend, options })
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
        dispatch!(self.enqueue(queue, payload, idempotency_key, delay))
    }

    /// Leases up to `max` due jobs of `queue` for `visibility`: until then no other worker
    /// gets them; after it (a crashed worker), they are due again.
    ///
    /// Every lease counts as an attempt. A job whose lease expired on its
    /// [`QueueOptions::max_attempts`]th attempt (its worker died on it every time, say) is
    /// not leased again: it becomes a dead letter whose error says "lease expired N times".
    pub async fn lease(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Job>, QueueError> {
        self.lease_at_most(queue, worker, max, visibility, self.options.max_attempts)
            .await
    }

    /// [`lease`](Self::lease) with the attempts limit given here (the [`Worker`]'s).
    ///
    /// [`Worker`]: crate::Worker
    pub(crate) async fn lease_at_most(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        visibility: Duration,
        max_attempts: u32,
    ) -> Result<Vec<Job>, QueueError> {
        let max_attempts = i64::from(max_attempts.max(1));
        dispatch!(self.lease(queue, worker, max, visibility, max_attempts))
    }

    /// The job is done.
    pub async fn ack(&self, job: &Job) -> Result<(), QueueError> {
        match self.ack_all(std::slice::from_ref(job)).await? {
            0 => Err(QueueError::NotLeased(job.id)),
            _ => Ok(()),
        }
    }

    /// Acks several jobs in one transaction (one disk flush): how many were still leased
    /// by their workers.
    pub async fn ack_all(&self, jobs: &[Job]) -> Result<usize, QueueError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let jobs: Vec<(i64, String)> = jobs.iter().map(|j| (j.id, j.worker.clone())).collect();
        dispatch!(self.ack_all(jobs))
    }

    /// Gives a leased job back untouched: due again at once, this lease's attempt not
    /// counted (the worker did not run it — its target's circuit was open).
    pub async fn release(&self, job: &Job) -> Result<(), QueueError> {
        match dispatch!(self.release(job.id, job.worker.clone()))? {
            0 => Err(QueueError::NotLeased(job.id)),
            _ => Ok(()),
        }
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
        match dispatch!(self.fail(id, worker, error, backoff, dead))? {
            0 => Err(QueueError::NotLeased(id)),
            _ => Ok(()),
        }
    }

    /// The dead letters of `queue`: (job id, idempotency key, last error).
    pub async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, QueueError> {
        dispatch!(self.dead_letters(queue))
    }

    /// Puts every dead letter of `queue` back, with its attempts reset; how many.
    pub async fn requeue_dead(&self, queue: &str) -> Result<usize, QueueError> {
        dispatch!(self.requeue_dead(queue))
    }

    /// Deletes every dead letter of `queue`; how many.
    pub async fn purge_dead(&self, queue: &str) -> Result<usize, QueueError> {
        dispatch!(self.purge_dead(queue))
    }

    /// Deletes the done jobs of `queue` enqueued at least `older_than` ago; how many.
    ///
    /// Done jobs are kept so that an enqueue repeating their idempotency key stays a
    /// duplicate; this sets how long that holds (a key enqueued again after its job was
    /// purged makes a new job) and keeps the table from growing with every job ever run.
    /// Jobs that are ready, leased or dead are never touched.
    pub async fn purge_done(&self, queue: &str, older_than: Duration) -> Result<usize, QueueError> {
        let older_than_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        dispatch!(self.purge_done(queue, older_than_ms))
    }

    /// How many jobs `queue` holds, by state (also reported as metrics
    /// `stormwall_queue_depth{queue,state}` and `stormwall_queue_oldest_age_seconds{queue}`).
    pub async fn depth(&self, queue: &str) -> Result<QueueDepth, QueueError> {
        let mut depth = QueueDepth::default();
        for (state, count, oldest_ms) in dispatch!(self.states(queue))? {
            let count = count.max(0) as u64;
            match state.as_str() {
                "ready" => {
                    depth.ready = count;
                    depth.oldest_ready_age =
                        Duration::from_millis(oldest_ms.unwrap_or(0).max(0) as u64);
                }
                "leased" => depth.leased = count,
                "dead" => depth.dead = count,
                _ => depth.done = count,
            }
        }
        for (state, count) in [
            ("ready", depth.ready),
            ("leased", depth.leased),
            ("dead", depth.dead),
        ] {
            metrics::gauge!("stormwall_queue_depth", "queue" => queue.to_owned(), "state" => state)
                .set(count as f64);
        }
        metrics::gauge!("stormwall_queue_oldest_age_seconds", "queue" => queue.to_owned())
            .set(depth.oldest_ready_age.as_secs_f64());
        Ok(depth)
    }
}

#[cfg(feature = "postgres")]
impl From<crate::storage::PgError> for QueueError {
    fn from(e: crate::storage::PgError) -> Self {
        match e {
            crate::storage::PgError::Unreachable(why) => QueueError::Unreachable(why),
            crate::storage::PgError::Statement(e) => QueueError::Postgres(e),
            crate::storage::PgError::Timeout { what, after } => QueueError::Timeout { what, after },
        }
    }
}

impl From<crate::storage::PoolSetupError> for QueueError {
    fn from(e: crate::storage::PoolSetupError) -> Self {
        match e {
            crate::storage::PoolSetupError::InvalidUrl { url, reason } => {
                QueueError::InvalidUrl { url, reason }
            }
            crate::storage::PoolSetupError::Unreachable(why) => QueueError::Unreachable(why),
        }
    }
}
