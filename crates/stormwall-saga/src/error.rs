use std::fmt;

/// What went wrong in the saga crate's storage, orchestrator or event store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The SQLite database could not be opened, read or written.
    #[error("saga database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL statement failed.
    #[cfg(feature = "postgres")]
    #[error("saga database (PostgreSQL): {}", stormwall_durable::storage::postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The database server could not be reached.
    #[error("saga database unreachable: {0}")]
    Unreachable(String),
    /// One of the store's [`StorageTimeouts`] fired: the database did not answer in time
    /// (the operation may still have taken effect).
    ///
    /// [`StorageTimeouts`]: stormwall_durable::storage::StorageTimeouts
    #[error("saga database: no {what} within {after:?} (StorageTimeouts::{what})")]
    Timeout {
        /// Which bound.
        what: stormwall_durable::storage::TimedOut,
        /// Its value.
        after: std::time::Duration,
    },
    /// A connection URL that does not parse.
    #[error("invalid saga database URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database was written by a newer version of this crate.
    #[error("saga database schema version {found} is newer than this stormwall's ({supported})")]
    NewerSchema {
        /// The version found.
        found: i64,
        /// The newest this build reads.
        supported: i64,
    },
    /// Stored data that does not read back (the schema version, a saga's state, a
    /// snapshot, an event).
    #[error("corrupt stored {what} {id:?}: {reason}")]
    Corrupt {
        /// What kind of record.
        what: &'static str,
        /// Its key.
        id: String,
        /// Why it does not read.
        reason: String,
    },
    /// No saga with this id.
    #[error("unknown saga {0:?}")]
    UnknownSaga(String),
    /// A stored saga names a definition this orchestrator does not have.
    #[error("saga {id:?} is a {name:?}, and no saga definition of that name is registered")]
    UnknownDefinition {
        /// The saga's id.
        id: String,
        /// The definition's name.
        name: String,
    },
    /// Another process holds the saga (its lease has not expired).
    #[error("saga {0:?} is run by another process")]
    Busy(String),
    /// A saga definition or option that is not valid.
    #[error("invalid saga configuration: {0}")]
    Config(String),
    /// A relay could not publish (the pipeline gave up): why.
    #[error("publishing outbox events failed: {0}")]
    Publish(String),
    /// The broker (Redis) failed or could not be reached.
    #[error("broker: {operation} failed: {reason}")]
    Broker {
        /// The command or step (`XREADGROUP`, `connect`).
        operation: &'static str,
        /// Its error.
        reason: String,
    },
    /// No dead letter with this id in the group.
    #[error("no dead letter {id:?} in group {group:?}")]
    UnknownDeadLetter {
        /// The consumer group.
        group: String,
        /// The id asked for.
        id: String,
    },
    /// Optimistic locking: the stream is not at the expected version.
    #[error("stream {stream:?} is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream.
        stream: String,
        /// The version the writer expected.
        expected: ExpectedVersion,
        /// The version found.
        actual: i64,
    },
}

/// The version a writer expects a stream to be at when it appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Whatever it is.
    Any,
    /// The stream has no events yet.
    NoStream,
    /// Exactly this version (the number of events in the stream).
    Exact(i64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("0 (no stream)"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies it.
    pub fn admits(self, actual: i64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => v == actual,
        }
    }
}

#[cfg(feature = "postgres")]
impl From<stormwall_durable::storage::PgError> for SagaError {
    fn from(e: stormwall_durable::storage::PgError) -> Self {
        match e {
            stormwall_durable::storage::PgError::Unreachable(why) => SagaError::Unreachable(why),
            stormwall_durable::storage::PgError::Statement(e) => SagaError::Postgres(e),
            stormwall_durable::storage::PgError::Timeout { what, after } => {
                SagaError::Timeout { what, after }
            }
        }
    }
}

impl From<stormwall_durable::storage::PoolSetupError> for SagaError {
    fn from(e: stormwall_durable::storage::PoolSetupError) -> Self {
        match e {
            stormwall_durable::storage::PoolSetupError::InvalidUrl { url, reason } => {
                SagaError::InvalidUrl { url, reason }
            }
            stormwall_durable::storage::PoolSetupError::Unreachable(why) => {
                SagaError::Unreachable(why)
            }
        }
    }
}
