//! Choreography tracking: a projection of every saga's events by correlation id — its
//! progress, and where it stopped.

use super::{now_ms, Message};
use crate::SagaError;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One event of a saga, as tracked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedEvent {
    /// The event's id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its stream key.
    pub stream_key: String,
    /// When the tracker saw it, milliseconds since the epoch.
    pub seen_at_ms: i64,
}

/// A saga's progress: its events in the order they were seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaProgress {
    /// The saga's correlation id.
    pub correlation_id: String,
    /// Its events, oldest first.
    pub events: Vec<TrackedEvent>,
    /// Whether one of its events is of a terminal kind. (Events of different topics are
    /// tracked in the order their consumers saw them, which need not be the order they
    /// happened in: the terminal event may be seen before the one that caused it.)
    pub finished: bool,
}

impl SagaProgress {
    /// Where it stands (or stopped): its last event's kind.
    pub fn last_kind(&self) -> &str {
        self.events.last().map_or("", |e| e.kind.as_str())
    }

    /// How it ended: its terminal event's kind (None while it runs).
    pub fn outcome<'a>(&'a self, tracker: &SagaTracker) -> Option<&'a str> {
        self.events
            .iter()
            .find(|e| tracker.terminal.contains(&e.kind))
            .map(|e| e.kind.as_str())
    }

    /// The kinds of its events, in order.
    pub fn kinds(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.kind.as_str()).collect()
    }
}

/// Keeps, per correlation id, the events of each saga (in a SQLite file): fed by a
/// consumer group of its own on each topic ([`record`](Self::record) is idempotent per
/// event id), it answers "how far did saga X get" and "which sagas stopped short, and
/// where" ([`stalled`](Self::stalled)).
///
/// ```
/// # fn main() -> Result<(), stormwall_saga::SagaError> {
/// use stormwall_saga::choreography::{Message, SagaTracker};
///
/// let dir = std::env::temp_dir().join(format!("stormwall-doc-tracker-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let tracker = SagaTracker::open(dir.join("tracker.db"), ["order.completed", "order.cancelled"])?;
/// let created = Message::new("order.created", "order-1", &())?;
/// let paid = Message::reacting_to(&created, "payment.completed", "order-1", &())?;
/// tracker.record(&created)?;
/// tracker.record(&paid)?;
/// tracker.record(&paid)?; // delivered twice, tracked once
/// let progress = tracker.progress(&created.correlation_id)?.unwrap();
/// assert_eq!(progress.kinds(), ["order.created", "payment.completed"]);
/// assert!(!progress.finished);
/// assert_eq!(tracker.stalled(std::time::Duration::ZERO)?.len(), 1);
/// # std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
#[derive(Clone)]
pub struct SagaTracker {
    connection: Arc<Mutex<Connection>>,
    terminal: Arc<HashSet<String>>,
}

impl std::fmt::Debug for SagaTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaTracker")
            .field("terminal", &self.terminal)
            .finish_non_exhaustive()
    }
}

impl SagaTracker {
    /// Opens (or creates) the tracker's database at `path`; a saga whose last event is of
    /// one of the `terminal` kinds is finished.
    pub fn open(
        path: impl AsRef<Path>,
        terminal: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, SagaError> {
        let (connection, _) = stormwall_durable::storage::open_sqlite(
            path.as_ref(),
            &stormwall_durable::storage::StorageTimeouts::default(),
        )?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS stormwall_saga_tracking (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id TEXT NOT NULL UNIQUE,
                correlation_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                stream_key TEXT NOT NULL,
                seen_at INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS stormwall_saga_tracking_saga
                ON stormwall_saga_tracking (correlation_id, seq);",
        )?;
        Ok(SagaTracker {
            connection: Arc::new(Mutex::new(connection)),
            terminal: Arc::new(terminal.into_iter().map(Into::into).collect()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `message` under its correlation id (once per event id): whether it was new.
    pub fn record(&self, message: &Message) -> Result<bool, SagaError> {
        let added = self.lock().execute(
            "INSERT OR IGNORE INTO stormwall_saga_tracking
                 (event_id, correlation_id, kind, stream_key, seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                message.id,
                message.correlation_id,
                message.kind,
                message.stream_key,
                now_ms()
            ],
        )?;
        Ok(added == 1)
    }

    /// The progress of saga `correlation_id`, if any of its events was seen.
    pub fn progress(&self, correlation_id: &str) -> Result<Option<SagaProgress>, SagaError> {
        let connection = self.lock();
        let mut s = connection.prepare_cached(
            "SELECT event_id, kind, stream_key, seen_at FROM stormwall_saga_tracking
              WHERE correlation_id = ?1 ORDER BY seq",
        )?;
        let events = s
            .query_map(params![correlation_id], |r| {
                Ok(TrackedEvent {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    stream_key: r.get(2)?,
                    seen_at_ms: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if events.is_empty() {
            return Ok(None);
        }
        let finished = events.iter().any(|e| self.terminal.contains(&e.kind));
        Ok(Some(SagaProgress {
            correlation_id: correlation_id.to_owned(),
            events,
            finished,
        }))
    }

    /// Every saga seen, oldest first.
    pub fn all(&self) -> Result<Vec<SagaProgress>, SagaError> {
        let ids: Vec<String> = {
            let connection = self.lock();
            let mut s = connection.prepare(
                "SELECT correlation_id FROM stormwall_saga_tracking
                  GROUP BY correlation_id ORDER BY MIN(seq)",
            )?;
            let ids = s.query_map([], |r| r.get(0))?;
            ids.collect::<Result<Vec<String>, _>>()?
        };
        let mut all = Vec::with_capacity(ids.len());
        for id in ids {
            all.extend(self.progress(&id)?);
        }
        Ok(all)
    }

    /// Sagas not finished whose last event was seen more than `quiet_for` ago: the ones
    /// that stopped short (a service down, an event dead-lettered), oldest first.
    pub fn stalled(&self, quiet_for: Duration) -> Result<Vec<SagaProgress>, SagaError> {
        let before = now_ms() - quiet_for.as_millis() as i64;
        Ok(self
            .all()?
            .into_iter()
            .filter(|p| !p.finished && p.events.last().is_some_and(|e| e.seen_at_ms <= before))
            .collect())
    }

    /// How many events were tracked for saga `correlation_id`.
    pub fn count(&self, correlation_id: &str) -> Result<i64, SagaError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT COUNT(*) FROM stormwall_saga_tracking WHERE correlation_id = ?1",
                params![correlation_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }
}
