//! Choreography tracking: a projection of every saga's events by correlation id — its
//! progress, and where it stopped — on SQLite or PostgreSQL.

use super::{now_ms, Message};
use crate::SagaError;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall_durable::storage::{SqliteDeadline, StorageTimeouts};

/// The tracker's table on both backends (`?N` placeholders; PostgreSQL's are `$N`).
const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stormwall_saga_tracking (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    correlation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    stream_key TEXT NOT NULL,
    seen_at INTEGER NOT NULL,
    terminal INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS stormwall_saga_tracking_saga
    ON stormwall_saga_tracking (correlation_id, seq);";

#[cfg(feature = "postgres")]
const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stormwall_saga_tracking (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    correlation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    stream_key TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    terminal INT NOT NULL
);
CREATE INDEX IF NOT EXISTS stormwall_saga_tracking_saga
    ON stormwall_saga_tracking (correlation_id, seq);";

const RECORD: &str = "INSERT INTO stormwall_saga_tracking
    (event_id, correlation_id, kind, stream_key, seen_at, terminal)
VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (event_id) DO NOTHING";

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaStatus {
    /// Not finished, and an event of it was seen within the tracker's `stalled_after`.
    Running,
    /// Not finished, and quiet for longer than `stalled_after`: it stopped short (a
    /// service down, an event dead-lettered) after its last event.
    Stalled,
    /// One of its events is of a terminal kind.
    Finished,
}

/// One event of a saga, as tracked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackedEvent {
    /// The event's id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its stream key.
    pub stream_key: String,
    /// When the tracker saw it, milliseconds since the epoch.
    pub seen_at_ms: i64,
    /// Whether its kind is one of the tracker's terminal kinds.
    pub terminal: bool,
}

/// A saga's progress: its events in the order they were seen. (Events of different
/// topics are tracked in the order their consumers saw them, which need not be the order
/// they happened in: the terminal event may be seen before the one that caused it.)
///
/// Serialised (serde) as the dashboard's saga feed reads it:
/// `{"correlation_id", "status": "running"|"stalled"|"finished", "events": [{"id", "kind",
/// "stream_key", "seen_at_ms", "terminal"}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaProgress {
    /// The saga's correlation id.
    pub correlation_id: String,
    /// Where it stands, when it was read.
    pub status: SagaStatus,
    /// Its events, oldest first (never empty).
    pub events: Vec<TrackedEvent>,
}

impl SagaProgress {
    /// Whether it finished (one of its events is of a terminal kind).
    pub fn finished(&self) -> bool {
        self.status == SagaStatus::Finished
    }

    /// Where it stands (or stopped): its last event's kind.
    pub fn last_kind(&self) -> &str {
        self.events.last().map_or("", |e| e.kind.as_str())
    }

    /// How it ended: its terminal event's kind (None while it runs).
    pub fn outcome(&self) -> Option<&str> {
        self.events
            .iter()
            .find(|e| e.terminal)
            .map(|e| e.kind.as_str())
    }

    /// The kinds of its events, in order.
    pub fn kinds(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.kind.as_str()).collect()
    }
}

/// Which sagas a query reads.
#[derive(Debug, Clone)]
enum Select {
    /// The one with this correlation id.
    One(String),
    /// Every one.
    All,
    /// Those not finished (running or stalled).
    Unfinished,
    /// Those not finished whose last event was seen at or before this time (ms).
    QuietSince(i64),
    /// The ones with the latest events, this many.
    Recent(i64),
    /// This many: the unfinished ones first, then the finished; each group latest first.
    Overview(i64),
}

impl Select {
    /// The query: every event of the selected sagas, sagas in the order they started,
    /// events in the order they were seen. `?1` is the selection's parameter, if any.
    fn sql(&self) -> String {
        let (filter, having, limit) = match self {
            Select::One(_) => ("WHERE correlation_id = ?1", "", ""),
            Select::All => ("", "", ""),
            Select::Unfinished => ("", "HAVING MAX(terminal) = 0", ""),
            Select::QuietSince(_) => ("", "HAVING MAX(terminal) = 0 AND MAX(seen_at) <= ?1", ""),
            Select::Recent(_) => ("", "", "ORDER BY MAX(seq) DESC LIMIT ?1"),
            Select::Overview(_) => ("", "", "ORDER BY MAX(terminal), MAX(seq) DESC LIMIT ?1"),
        };
        format!(
            "SELECT t.correlation_id, t.event_id, t.kind, t.stream_key, t.seen_at, t.terminal
               FROM stormwall_saga_tracking t
               JOIN (SELECT correlation_id, MIN(seq) AS first FROM stormwall_saga_tracking
                      {filter} GROUP BY correlation_id {having} {limit}) s
                 ON s.correlation_id = t.correlation_id
              ORDER BY s.first, t.seq"
        )
    }
}

/// One row of a selection: the saga's correlation id and one of its events.
type Row = (String, TrackedEvent);

/// Keeps, per correlation id, the events of each saga (in SQLite or PostgreSQL): fed by a
/// consumer group of its own on each topic ([`record`](Self::record) is idempotent per
/// event id), it answers "how far did saga X get" ([`progress`](Self::progress)), "which
/// are still going" ([`in_progress`](Self::in_progress)), "which stopped short, and where"
/// ([`stalled`](Self::stalled)), and feeds the dashboard ([`overview`](Self::overview),
/// whose rows serialise as the dashboard reads them).
///
/// A saga is finished once one of its events is of a `terminal` kind (given when the
/// tracker opens, recorded with each event); stalled when it is not and its last event
/// was seen more than [`stalled_after`](Self::stalled_after) ago; running otherwise.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), stormwall_saga::SagaError> {
/// use stormwall_saga::choreography::{Message, SagaStatus, SagaTracker};
/// use std::time::Duration;
///
/// let dir = std::env::temp_dir().join(format!("stormwall-doc-tracker-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let tracker = SagaTracker::open(dir.join("tracker.db"), ["order.completed", "order.cancelled"])?
///     .stalled_after(Duration::ZERO);
/// let created = Message::new("order.created", "order-1", &())?;
/// let paid = Message::reacting_to(&created, "payment.completed", "order-1", &())?;
/// tracker.record(&created).await?;
/// tracker.record(&paid).await?;
/// tracker.record(&paid).await?; // delivered twice, tracked once
/// let progress = tracker.progress(&created.correlation_id).await?.unwrap();
/// assert_eq!(progress.kinds(), ["order.created", "payment.completed"]);
/// assert_eq!(progress.status, SagaStatus::Stalled);
/// assert_eq!(tracker.stalled().await?[0].last_kind(), "payment.completed");
/// # std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
#[derive(Clone)]
pub struct SagaTracker {
    backend: Backend,
    terminal: Arc<HashSet<String>>,
    stalled_after: Duration,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Sqlite),
    #[cfg(feature = "postgres")]
    Postgres(stormwall_durable::storage::PgPool),
}

/// The SQLite connection, and the bounds on each operation.
#[derive(Clone)]
struct Sqlite {
    connection: Arc<Mutex<Connection>>,
    deadline: SqliteDeadline,
    timeouts: StorageTimeouts,
}

impl Sqlite {
    /// Runs `work` on the connection, off the async threads, within the bounds.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, SagaError> + Send + 'static,
    ) -> Result<T, SagaError> {
        crate::store::run_blocking(&self.connection, &self.deadline, &self.timeouts, work).await
    }
}

impl std::fmt::Debug for SagaTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaTracker")
            .field("terminal", &self.terminal)
            .field("stalled_after", &self.stalled_after)
            .finish_non_exhaustive()
    }
}

impl SagaTracker {
    /// Opens (or creates) the tracker's SQLite database at `path`; a saga with an event of
    /// one of the `terminal` kinds is finished.
    pub fn open(
        path: impl AsRef<Path>,
        terminal: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, SagaError> {
        let timeouts = StorageTimeouts::default();
        let (connection, deadline) =
            stormwall_durable::storage::open_sqlite(path.as_ref(), &timeouts)?;
        connection.execute_batch(SQLITE_SCHEMA)?;
        Ok(Self::with(
            Backend::Sqlite(Sqlite {
                connection: Arc::new(Mutex::new(connection)),
                deadline,
                timeouts,
            }),
            terminal,
        ))
    }

    /// Connects to the tracker's PostgreSQL database at `url` (a pool of up to 4
    /// connections, the default [`StorageTimeouts`]) and creates its table if needed; a
    /// saga with an event of one of the `terminal` kinds is finished.
    #[cfg(feature = "postgres")]
    pub async fn connect(
        url: &str,
        terminal: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, SagaError> {
        let pool = stormwall_durable::storage::PgPool::new(url, 4, StorageTimeouts::default())?;
        pool.run(async |client| {
            let tx = client.transaction().await?;
            // Replicas opening at once: one creates, the others wait.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSTALL_LOCK])
                .await?;
            tx.batch_execute(POSTGRES_SCHEMA).await?;
            tx.commit().await?;
            Ok::<(), SagaError>(())
        })
        .await?;
        Ok(Self::with(Backend::Postgres(pool), terminal))
    }

    fn with(backend: Backend, terminal: impl IntoIterator<Item = impl Into<String>>) -> Self {
        SagaTracker {
            backend,
            terminal: Arc::new(terminal.into_iter().map(Into::into).collect()),
            stalled_after: Duration::from_secs(30),
        }
    }

    /// How long an unfinished saga may go without a new event before it counts as
    /// stalled. Default 30 s; any duration is valid (zero: every unfinished saga is
    /// stalled).
    pub fn stalled_after(mut self, quiet_for: Duration) -> Self {
        self.stalled_after = quiet_for;
        self
    }

    /// Records `message` under its correlation id (once per event id): whether it was new.
    pub async fn record(&self, message: &Message) -> Result<bool, SagaError> {
        let terminal = i32::from(self.terminal.contains(&message.kind));
        let m = message.clone();
        let added = match &self.backend {
            Backend::Sqlite(db) => {
                db.run(move |c| {
                    Ok(c.prepare_cached(RECORD)?.execute(rusqlite::params![
                        m.id,
                        m.correlation_id,
                        m.kind,
                        m.stream_key,
                        now_ms(),
                        terminal
                    ])? as u64)
                })
                .await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                pool.execute(
                    &postgres_sql(RECORD),
                    &[
                        &m.id,
                        &m.correlation_id,
                        &m.kind,
                        &m.stream_key,
                        &now_ms(),
                        &terminal,
                    ],
                )
                .await?
            }
        };
        Ok(added == 1)
    }

    /// The progress of saga `correlation_id`, if any of its events was seen.
    pub async fn progress(&self, correlation_id: &str) -> Result<Option<SagaProgress>, SagaError> {
        let mut one = self.select(Select::One(correlation_id.to_owned())).await?;
        Ok(one.pop())
    }

    /// Every saga seen, in the order they started.
    pub async fn all(&self) -> Result<Vec<SagaProgress>, SagaError> {
        self.select(Select::All).await
    }

    /// The sagas not finished (running or stalled), in the order they started.
    pub async fn in_progress(&self) -> Result<Vec<SagaProgress>, SagaError> {
        self.select(Select::Unfinished).await
    }

    /// The sagas that stopped short: not finished, and no event for longer than
    /// [`stalled_after`](Self::stalled_after) — each one's last event says where it
    /// stopped. In the order they started.
    pub async fn stalled(&self) -> Result<Vec<SagaProgress>, SagaError> {
        let quiet = i64::try_from(self.stalled_after.as_millis()).unwrap_or(i64::MAX);
        self.select(Select::QuietSince(now_ms().saturating_sub(quiet)))
            .await
    }

    /// The `limit` sagas with the most recent events, in the order they started.
    pub async fn recent(&self, limit: usize) -> Result<Vec<SagaProgress>, SagaError> {
        self.select(Select::Recent(i64::try_from(limit).unwrap_or(i64::MAX)))
            .await
    }

    /// What a dashboard shows: `limit` sagas, the unfinished ones (stalled or running)
    /// before the finished ones — so that a stalled saga stays in view however many finish
    /// after it — each kind latest first; listed in the order they started.
    pub async fn overview(&self, limit: usize) -> Result<Vec<SagaProgress>, SagaError> {
        self.select(Select::Overview(i64::try_from(limit).unwrap_or(i64::MAX)))
            .await
    }

    /// Forgets the sagas that finished (their last event seen) more than `finished_for`
    /// ago; how many events went. Unfinished sagas are kept whatever their age. An event
    /// of a forgotten saga delivered again afterwards is tracked again, as a saga of its
    /// own: keep `finished_for` longer than the longest redelivery you expect (as an inbox's
    /// retention).
    pub async fn purge(&self, finished_for: Duration) -> Result<u64, SagaError> {
        let age = i64::try_from(finished_for.as_millis()).unwrap_or(i64::MAX);
        let before = now_ms().saturating_sub(age);
        const PURGE: &str = "DELETE FROM stormwall_saga_tracking WHERE correlation_id IN (
            SELECT correlation_id FROM stormwall_saga_tracking GROUP BY correlation_id
            HAVING MAX(terminal) = 1 AND MAX(seen_at) <= ?1)";
        Ok(match &self.backend {
            Backend::Sqlite(db) => {
                db.run(move |c| Ok(c.execute(PURGE, [before])? as u64))
                    .await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => pool.execute(&postgres_sql(PURGE), &[&before]).await?,
        })
    }

    async fn select(&self, select: Select) -> Result<Vec<SagaProgress>, SagaError> {
        let rows = match &self.backend {
            Backend::Sqlite(db) => {
                db.run(move |c| {
                    let mut s = c.prepare_cached(&select.sql())?;
                    let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
                        Ok((
                            r.get(0)?,
                            TrackedEvent {
                                id: r.get(1)?,
                                kind: r.get(2)?,
                                stream_key: r.get(3)?,
                                seen_at_ms: r.get(4)?,
                                terminal: r.get::<_, i64>(5)? != 0,
                            },
                        ))
                    };
                    let rows: rusqlite::Result<Vec<Row>> = match &select {
                        Select::One(id) => s.query_map([id], row)?.collect(),
                        Select::All | Select::Unfinished => s.query_map([], row)?.collect(),
                        Select::QuietSince(n) | Select::Recent(n) | Select::Overview(n) => {
                            s.query_map([n], row)?.collect()
                        }
                    };
                    Ok(rows?)
                })
                .await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                let sql = postgres_sql(&select.sql());
                let rows = match &select {
                    Select::One(id) => pool.query(&sql, &[&id]).await?,
                    Select::All | Select::Unfinished => pool.query(&sql, &[]).await?,
                    Select::QuietSince(n) | Select::Recent(n) | Select::Overview(n) => {
                        pool.query(&sql, &[&n]).await?
                    }
                };
                rows.iter()
                    .map(|r| {
                        (
                            r.get(0),
                            TrackedEvent {
                                id: r.get(1),
                                kind: r.get(2),
                                stream_key: r.get(3),
                                seen_at_ms: r.get(4),
                                terminal: r.get::<_, i32>(5) != 0,
                            },
                        )
                    })
                    .collect()
            }
        };
        Ok(self.sagas(rows))
    }

    /// Groups `rows` (sagas one after the other) into sagas, each with its status now.
    fn sagas(&self, rows: Vec<Row>) -> Vec<SagaProgress> {
        let quiet = i64::try_from(self.stalled_after.as_millis()).unwrap_or(i64::MAX);
        let before = now_ms().saturating_sub(quiet);
        let mut sagas: Vec<SagaProgress> = Vec::new();
        for (correlation_id, event) in rows {
            match sagas.last_mut() {
                Some(saga) if saga.correlation_id == correlation_id => saga.events.push(event),
                _ => sagas.push(SagaProgress {
                    correlation_id,
                    status: SagaStatus::Running,
                    events: vec![event],
                }),
            }
        }
        for saga in &mut sagas {
            saga.status = if saga.events.iter().any(|e| e.terminal) {
                SagaStatus::Finished
            } else if saga.events.iter().all(|e| e.seen_at_ms <= before) {
                SagaStatus::Stalled
            } else {
                SagaStatus::Running
            };
        }
        sagas
    }
}

/// An advisory lock for creating the tracker's table (arbitrary constant).
#[cfg(feature = "postgres")]
const INSTALL_LOCK: i64 = 0x5357_5452_4143_4b52;

/// `sql` with PostgreSQL's placeholders (`$1` for `?1`).
#[cfg(feature = "postgres")]
fn postgres_sql(sql: &str) -> String {
    sql.replace('?', "$")
}
