//! What the crates that keep state in a database share: this crate's queue and
//! `stormwall-saga`'s store open SQLite and PostgreSQL the same way.

use std::path::Path;
use std::time::Duration;

/// Opens (or creates) a SQLite database for durable state: WAL, `synchronous = FULL` (a
/// commit is on disk, fsynced, before it returns), a 10 s busy timeout for other
/// processes' writes.
pub fn open_sqlite(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.busy_timeout(Duration::from_secs(10))?;
    Ok(connection)
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
/// store. Clones share the pool.
#[cfg(feature = "postgres")]
#[derive(Clone)]
pub struct PgPool(deadpool_postgres::Pool);

/// What a [`PgPool`] call can fail with; each crate maps it to its own error.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub enum PgError {
    /// No connection could be had (server down, refused, timed out).
    Unreachable(String),
    /// A statement failed.
    Statement(tokio_postgres::Error),
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
    /// `host=… user=…`); they open on first use.
    pub fn new(url: &str, connections: usize) -> Result<Self, PoolSetupError> {
        use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
        let config: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| PoolSetupError::InvalidUrl {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(connections.max(1))
            .build()
            .map(PgPool)
            .map_err(|e| PoolSetupError::Unreachable(e.to_string()))
    }

    /// A connection of the pool (for a transaction or prepared statements).
    pub async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        self.0
            .get()
            .await
            .map_err(|e| PgError::Unreachable(e.to_string()))
    }

    /// One statement: rows changed.
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, PgError> {
        Ok(self.client().await?.execute(sql, params).await?)
    }

    /// One query.
    pub async fn query(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, PgError> {
        Ok(self.client().await?.query(sql, params).await?)
    }

    /// A query of at most one row.
    pub async fn query_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<tokio_postgres::Row>, PgError> {
        Ok(self.client().await?.query_opt(sql, params).await?)
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
