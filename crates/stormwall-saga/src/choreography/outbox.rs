//! The transactional outbox on SQLite: events appended in the caller's own transaction,
//! read back by a [`Relay`](super::Relay) through [`SqliteOutboxSource`].

use super::relay::OutboxSource;
use super::{now_ms, Message, RetentionOptions};
use crate::SagaError;
use rusqlite::{params, Connection, Transaction};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall_durable::storage::{SqliteDeadline, StorageTimeouts};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stormwall_outbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    stream_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    published_at INTEGER
);
CREATE INDEX IF NOT EXISTS stormwall_outbox_unpublished
    ON stormwall_outbox (position) WHERE published_at IS NULL;
";

/// The outbox in a service's own SQLite database.
///
/// ```
/// # fn main() -> Result<(), stormwall_saga::SagaError> {
/// use stormwall_saga::choreography::{Message, SqliteOutbox};
///
/// let mut db = rusqlite::Connection::open_in_memory()?;
/// db.execute_batch("CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER)")?;
/// SqliteOutbox::install(&db)?;
///
/// // The order and its event commit together, or neither does.
/// let tx = db.transaction()?;
/// tx.execute("INSERT INTO orders VALUES ('order-1', 30)", [])?;
/// let created = Message::new("order.created", "order-1", &serde_json::json!({"total": 30}))?;
/// let position = SqliteOutbox::append(&tx, &created)?;
/// tx.commit()?;
/// assert_eq!(position, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SqliteOutbox;

impl SqliteOutbox {
    /// Creates the outbox table (`stormwall_outbox`) if it does not exist.
    pub fn install(connection: &Connection) -> Result<(), SagaError> {
        connection.execute_batch(SCHEMA)?;
        Ok(())
    }

    /// Appends `message` inside `tx`: it is published once `tx` commits, never if it rolls
    /// back. Its position (SQLite serialises writers: positions commit in order).
    pub fn append(tx: &Transaction<'_>, message: &Message) -> Result<i64, SagaError> {
        tx.prepare_cached(
            "INSERT INTO stormwall_outbox (id, stream_key, kind, correlation_id, payload, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            message.id,
            message.stream_key,
            message.kind,
            message.correlation_id,
            message.payload,
            now_ms()
        ])?;
        Ok(tx.last_insert_rowid())
    }

    /// Deletes the events published longer than `retention.outbox` ago; how many. (A
    /// relay with a [`retention`](super::Relay::retention) does it every hour.)
    pub fn purge(
        connection: &Connection,
        retention: &RetentionOptions,
    ) -> Result<usize, SagaError> {
        let cutoff = retention.outbox_cutoff()?;
        Ok(connection.execute(
            "DELETE FROM stormwall_outbox WHERE published_at IS NOT NULL AND published_at <= ?1",
            params![cutoff],
        )?)
    }
}

/// Reads a SQLite outbox for a [`Relay`](super::Relay) (its own connection to the file).
/// One relay per outbox: two would publish in an interleaved order.
#[derive(Clone)]
pub struct SqliteOutboxSource {
    connection: Arc<Mutex<Connection>>,
    deadline: SqliteDeadline,
    timeouts: StorageTimeouts,
    poll_interval: Duration,
}

impl std::fmt::Debug for SqliteOutboxSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutboxSource")
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl SqliteOutboxSource {
    /// Opens the database at `path` (creating the outbox table if needed). The relay looks
    /// for new events every 20 ms when idle (SQLite cannot notify another connection).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SagaError> {
        let timeouts = StorageTimeouts::default();
        let (connection, deadline) =
            stormwall_durable::storage::open_sqlite(path.as_ref(), &timeouts)?;
        SqliteOutbox::install(&connection)?;
        Ok(SqliteOutboxSource {
            connection: Arc::new(Mutex::new(connection)),
            deadline,
            timeouts,
            poll_interval: Duration::from_millis(20),
        })
    }

    /// How often an idle relay looks for new events. Default 20 ms; valid > 0.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(1));
        self
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, SagaError> + Send + 'static,
    ) -> Result<T, SagaError> {
        crate::store::run_blocking(&self.connection, &self.deadline, &self.timeouts, work).await
    }

    /// Events not yet published, oldest first (for inspection; the relay uses
    /// [`OutboxSource::pending`]).
    pub async fn unpublished(&self) -> Result<Vec<Message>, SagaError> {
        self.pending(usize::MAX >> 1).await
    }
}

pub(crate) fn message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        position: r.get(0)?,
        id: r.get(1)?,
        stream_key: r.get(2)?,
        kind: r.get(3)?,
        correlation_id: r.get(4)?,
        payload: r.get(5)?,
    })
}

impl OutboxSource for SqliteOutboxSource {
    async fn pending(&self, limit: usize) -> Result<Vec<Message>, SagaError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            let mut s = c.prepare_cached(
                "SELECT position, id, stream_key, kind, correlation_id, payload FROM stormwall_outbox
                  WHERE published_at IS NULL ORDER BY position LIMIT ?1",
            )?;
            let rows = s.query_map(params![limit], message)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn mark_published(&self, through: i64) -> Result<(), SagaError> {
        self.run(move |c| {
            c.execute(
                "UPDATE stormwall_outbox SET published_at = ?2
                  WHERE published_at IS NULL AND position <= ?1",
                params![through, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    async fn wait_for_more(&self, at_most: Duration) {
        tokio::time::sleep(at_most.min(self.poll_interval)).await;
    }

    async fn purge(&self, retention: &RetentionOptions) -> Result<usize, SagaError> {
        let retention = *retention;
        self.run(move |c| SqliteOutbox::purge(c, &retention)).await
    }
}
