//! What the crates that keep state in a database share: this crate's queue and
//! `stormwall-saga`'s store open SQLite and PostgreSQL the same way.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounds on every storage operation of the queue and the saga store, on both backends;
/// each one fires as a typed error naming it ([`TimedOut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageTimeouts {
    /// Opening a connection: TCP connect, startup and authentication (PostgreSQL). Default
    /// 5 s; valid > 0. (SQLite opens a local file: not bounded.)
    pub connect: Duration,
    /// Waiting for a free connection of the pool (PostgreSQL); waiting for the write lock
    /// another process holds (SQLite's busy timeout). Default 5 s; valid > 0.
    pub wait: Duration,
    /// One operation's statements, from sending them to their answer (PostgreSQL: also set
    /// as the server's `statement_timeout`); one operation's turn on the connection
    /// (SQLite). Default 10 s; valid > 0.
    pub statement: Duration,
}

impl Default for StorageTimeouts {
    fn default() -> Self {
        StorageTimeouts {
            connect: Duration::from_secs(5),
            wait: Duration::from_secs(5),
            statement: Duration::from_secs(10),
        }
    }
}

/// The longest bound a timeout takes: SQLite's busy timeout and PostgreSQL's
/// `statement_timeout` are 32-bit counts of milliseconds (≈ 24.8 days).
pub const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

impl StorageTimeouts {
    /// Checks each bound is within 1 ms ..= [`MAX_TIMEOUT`]; the error names the field
    /// under `prefix` (e.g. `QueueOptions::timeouts`).
    pub fn validate(&self, prefix: &str) -> Result<(), InvalidOption> {
        for (name, value) in [
            ("connect", self.connect),
            ("wait", self.wait),
            ("statement", self.statement),
        ] {
            check_duration(&format!("{prefix}.{name}"), value)?;
        }
        Ok(())
    }
}

/// Checks a bound `field` is within 1 ms ..= [`MAX_TIMEOUT`].
pub(crate) fn check_duration(field: &str, value: Duration) -> Result<(), InvalidOption> {
    if value < Duration::from_millis(1) || value > MAX_TIMEOUT {
        return Err(InvalidOption::new(
            field,
            value,
            "between 1 ms and 2147483647 ms (≈ 24.8 days)",
        ));
    }
    Ok(())
}

/// An option outside its valid range: which one, its value, what is valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value} is invalid: valid is {valid}")]
pub struct InvalidOption {
    /// The option's path, e.g. `WorkerOptions::batch`.
    pub field: String,
    /// The value given.
    pub value: String,
    /// What is valid.
    pub valid: &'static str,
}

impl InvalidOption {
    /// `field` = `value` is not `valid`.
    pub fn new(field: &str, value: impl std::fmt::Debug, valid: &'static str) -> Self {
        InvalidOption {
            field: field.to_owned(),
            value: format!("{value:?}"),
            valid,
        }
    }
}

/// Which of the [`StorageTimeouts`] fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedOut {
    /// `connect`: no connection could be opened in time.
    Connect,
    /// `wait`: no connection of the pool (or the SQLite write lock) came free in time.
    Wait,
    /// `statement`: the database did not answer in time.
    Statement,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimedOut::Connect => "connect",
            TimedOut::Wait => "wait",
            TimedOut::Statement => "statement",
        })
    }
}

/// Opens (or creates) a SQLite database for durable state: WAL, `synchronous = FULL` (a
/// commit is on disk, fsynced, before it returns), a busy timeout of `timeouts.wait` for
/// other processes' writes; and its [`SqliteDeadline`] for `timeouts.statement`.
pub fn open_sqlite(
    path: &Path,
    timeouts: &StorageTimeouts,
) -> rusqlite::Result<(rusqlite::Connection, SqliteDeadline)> {
    let connection = rusqlite::Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    // Within SQLite's range whatever a caller that skipped `validate` passed (rusqlite
    // panics past it).
    connection.busy_timeout(timeouts.wait.min(MAX_TIMEOUT))?;
    let deadline = SqliteDeadline::install(&connection, timeouts.statement);
    Ok((connection, deadline))
}

/// Interrupts a SQLite operation that runs past `StorageTimeouts::statement` (checked
/// every thousand virtual-machine steps, on the thread that runs it: no timer needed).
#[derive(Debug, Clone)]
pub struct SqliteDeadline {
    /// Nanoseconds since `base` after which statements are interrupted; `u64::MAX`
    /// between operations.
    deadline: Arc<AtomicU64>,
    base: Instant,
    limit: Duration,
}

impl SqliteDeadline {
    fn install(connection: &rusqlite::Connection, limit: Duration) -> Self {
        let this = SqliteDeadline {
            deadline: Arc::new(AtomicU64::new(u64::MAX)),
            base: Instant::now(),
            limit,
        };
        let (deadline, base) = (this.deadline.clone(), this.base);
        connection.progress_handler(
            1000,
            Some(move || base.elapsed().as_nanos() as u64 > deadline.load(Ordering::Relaxed)),
        );
        this
    }

    /// Runs `work` with the statement deadline armed.
    pub fn bound<T>(&self, work: impl FnOnce() -> T) -> T {
        let until = self.base.elapsed().saturating_add(self.limit);
        self.deadline.store(
            u64::try_from(until.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let result = work();
        self.deadline.store(u64::MAX, Ordering::Relaxed);
        result
    }

    /// Which timeout a SQLite error is, if any: the busy timeout (`wait`: another process
    /// held the write lock) or this deadline (`statement`).
    pub fn timed_out(&self, e: &rusqlite::Error, wait: Duration) -> Option<(TimedOut, Duration)> {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Some((TimedOut::Wait, wait))
            }
            Some(rusqlite::ErrorCode::OperationInterrupted) => {
                Some((TimedOut::Statement, self.limit))
            }
            _ => None,
        }
    }
}

/// Why a PostgreSQL pool could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSetupError {
    /// The URL does not parse.
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pool could not be built.
    Unreachable(String),
}

/// A pool of PostgreSQL connections with one-statement helpers, for the queue and the saga
/// store; every operation is bounded by the pool's [`StorageTimeouts`]. Clones share the
/// pool.
#[cfg(feature = "postgres")]
#[derive(Clone)]
pub struct PgPool {
    pool: deadpool_postgres::Pool,
    timeouts: StorageTimeouts,
}

/// What a [`PgPool`] call can fail with; each crate maps it to its own error.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub enum PgError {
    /// No connection could be had (server down, refused, timed out).
    Unreachable(String),
    /// A statement failed.
    Statement(tokio_postgres::Error),
    /// One of the [`StorageTimeouts`] fired.
    Timeout {
        /// Which.
        what: TimedOut,
        /// Its bound.
        after: Duration,
    },
}

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Statement(e)
    }
}

/// Parameters of a statement.
#[cfg(feature = "postgres")]
pub type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

#[cfg(feature = "postgres")]
impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool").finish_non_exhaustive()
    }
}

#[cfg(feature = "postgres")]
impl PgPool {
    /// Up to `connections` connections to `url` (`postgres://user@host/db` or
    /// `host=… user=…`), each operation bounded by `timeouts`; they open on first use.
    pub fn new(
        url: &str,
        connections: usize,
        timeouts: StorageTimeouts,
    ) -> Result<Self, PoolSetupError> {
        use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
        let mut config: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| PoolSetupError::InvalidUrl {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
        config.connect_timeout(timeouts.connect);
        // The server gives up on a slow statement itself (and the connection stays usable);
        // the client-side bound below covers a server that does not answer at all.
        let statement_timeout = format!(
            "-c statement_timeout={}",
            timeouts.statement.min(MAX_TIMEOUT).as_millis().max(1)
        );
        let options = match config.get_options() {
            Some(given) => format!("{given} {statement_timeout}"),
            None => statement_timeout,
        };
        config.options(&options);
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeouts.wait))
            .create_timeout(Some(timeouts.connect))
            .recycle_timeout(Some(timeouts.wait))
            .build()
            .map(|pool| PgPool { pool, timeouts })
            .map_err(|e| PoolSetupError::Unreachable(e.to_string()))
    }

    /// A connection of the pool, within `wait` (for a free one) and `connect` (to open
    /// one).
    async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        use deadpool_postgres::{PoolError, TimeoutType};
        self.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(TimeoutType::Create) => PgError::Timeout {
                what: TimedOut::Connect,
                after: self.timeouts.connect,
            },
            PoolError::Timeout(_) => PgError::Timeout {
                what: TimedOut::Wait,
                after: self.timeouts.wait,
            },
            other => PgError::Unreachable(other.to_string()),
        })
    }

    /// Runs `work` on a connection of the pool, its statements bounded by `statement`. A
    /// connection whose work did not finish (timed out, or the caller gave up) is closed,
    /// not handed out again: it may still be waiting for an answer.
    pub async fn run<T, E: From<PgError>>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, E>,
    ) -> Result<T, E> {
        /// Closes the connection unless the work finished.
        struct Unfinished(Option<deadpool_postgres::Object>);
        impl Drop for Unfinished {
            fn drop(&mut self) {
                if let Some(client) = self.0.take() {
                    drop(deadpool_postgres::Object::take(client));
                }
            }
        }
        let mut unfinished = Unfinished(Some(self.client().await?));
        let client = unfinished
            .0
            .as_mut()
            .ok_or_else(|| PgError::Unreachable("the connection was lost".into()))?;
        match tokio::time::timeout(self.timeouts.statement, work(client)).await {
            Ok(result) => {
                // Finished (even with an error the server answered): back to the pool.
                unfinished.0 = None;
                result
            }
            Err(_) => Err(PgError::Timeout {
                what: TimedOut::Statement,
                after: self.timeouts.statement,
            }
            .into()),
        }
    }

    /// One statement: rows changed.
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, PgError> {
        self.run(async |client| Ok(client.execute(sql, params).await?))
            .await
    }

    /// One query.
    pub async fn query(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, PgError> {
        self.run(async |client| Ok(client.query(sql, params).await?))
            .await
    }

    /// A query of at most one row.
    pub async fn query_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<tokio_postgres::Row>, PgError> {
        self.run(async |client| Ok(client.query_opt(sql, params).await?))
            .await
    }
}

/// A PostgreSQL error with the server's message and SQLSTATE (tokio-postgres's own
/// Display says only "db error").
#[cfg(feature = "postgres")]
pub fn postgres_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_past_its_deadline_is_interrupted_as_a_statement_timeout() {
        let dir = std::env::temp_dir().join(format!("stormwall-deadline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let timeouts = StorageTimeouts {
            statement: Duration::from_millis(50),
            ..Default::default()
        };
        let (connection, deadline) = open_sqlite(&dir.join("deadline.db"), &timeouts).unwrap();
        let started = Instant::now();
        // Counts forever: only the deadline ends it.
        let endless = deadline.bound(|| {
            connection.query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c",
                [],
                |r| r.get::<_, i64>(0),
            )
        });
        let e = endless.unwrap_err();
        assert_eq!(
            deadline.timed_out(&e, timeouts.wait),
            Some((TimedOut::Statement, Duration::from_millis(50)))
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // Between operations nothing is interrupted.
        let one: i64 = connection.query_row("SELECT 1", [], |r| r.get(0)).unwrap();
        assert_eq!(one, 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
