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

/// A pool of up to `connections` PostgreSQL connections to `url` (`postgres://user@host/db`
/// or `host=… user=…`); connections open on first use.
#[cfg(feature = "postgres")]
pub fn postgres_pool(
    url: &str,
    connections: usize,
) -> Result<deadpool_postgres::Pool, PoolSetupError> {
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
        .map_err(|e| PoolSetupError::Unreachable(e.to_string()))
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
