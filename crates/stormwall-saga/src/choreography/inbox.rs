//! The inbox: which events a consumer group has processed, kept in the consumer's own
//! database so that recording one commits with its effect.

use super::{now_ms, Message, RetentionOptions};
use crate::SagaError;
use rusqlite::{params, Connection, Transaction};

/// The inbox in a service's own SQLite database.
///
/// Delivery is at least once: an event may come again after a crash or a timeout. A
/// handler that opens a transaction, asks [`first_time`](Self::first_time), applies its
/// effect only when it is, and commits, applies each event once per group — the record
/// and the effect commit together or not at all.
///
/// ```
/// # fn main() -> Result<(), stormwall_saga::SagaError> {
/// use stormwall_saga::choreography::{Message, SqliteInbox};
///
/// let mut db = rusqlite::Connection::open_in_memory()?;
/// db.execute_batch("CREATE TABLE stock (sku TEXT PRIMARY KEY, reserved INTEGER)")?;
/// SqliteInbox::install(&db)?;
/// let event = Message::new("order.created", "order-1", &"lamp")?;
/// for _delivery in 0..2 {
///     let tx = db.transaction()?;
///     if SqliteInbox::first_time(&tx, "inventory", &event)? {
///         tx.execute("INSERT INTO stock VALUES ('lamp', 1)
///                     ON CONFLICT (sku) DO UPDATE SET reserved = reserved + 1", [])?;
///     }
///     tx.commit()?;
/// }
/// let reserved: i64 = db.query_row("SELECT reserved FROM stock", [], |r| r.get(0))?;
/// assert_eq!(reserved, 1, "delivered twice, applied once");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SqliteInbox;

impl SqliteInbox {
    /// Creates the inbox table (`stormwall_inbox`) if it does not exist.
    pub fn install(connection: &Connection) -> Result<(), SagaError> {
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS stormwall_inbox (
                group_name TEXT NOT NULL,
                event_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                processed_at INTEGER NOT NULL,
                PRIMARY KEY (group_name, event_id)
            )",
        )?;
        Ok(())
    }

    /// Records `message` as processed by `group` inside `tx`: true the first time (apply
    /// the effect in `tx`), false when it already was (skip it).
    pub fn first_time(
        tx: &Transaction<'_>,
        group: &str,
        message: &Message,
    ) -> Result<bool, SagaError> {
        let added = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO stormwall_inbox (group_name, event_id, kind, processed_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![group, message.id, message.kind, now_ms()])?;
        Ok(added == 1)
    }

    /// Deletes the records of events processed longer than `retention.inbox` ago; how
    /// many. Deduplication holds for at least that long after an event was processed (see
    /// [`RetentionOptions`]). Call it now and then (hourly) on the consumer's database.
    pub fn purge(
        connection: &Connection,
        retention: &RetentionOptions,
    ) -> Result<usize, SagaError> {
        let cutoff = retention.inbox_cutoff()?;
        Ok(connection.execute(
            "DELETE FROM stormwall_inbox WHERE processed_at <= ?1",
            params![cutoff],
        )?)
    }
}
