//! The outbox on PostgreSQL: appended in the caller's transaction, read by a relay
//! ([`PostgresOutboxSource`]) or consumed directly by consumer groups
//! ([`PostgresSubscription`]: `FOR UPDATE SKIP LOCKED` on per-group, per-partition
//! checkpoints, woken by `LISTEN/NOTIFY`).

use super::consumer::{DeadLetter, Delivery, Subscription};
use super::relay::OutboxSource;
use super::{now_ms, partition_of, Message, RetentionOptions, PARTITIONS};
use crate::SagaError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::{Client, GenericClient, NoTls, Transaction};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stormwall_outbox (
    position BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL,
    stream_key TEXT NOT NULL,
    partition INT NOT NULL,
    kind TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    target_group TEXT,
    created_at BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX IF NOT EXISTS stormwall_outbox_partition ON stormwall_outbox (partition, position);
CREATE INDEX IF NOT EXISTS stormwall_outbox_unpublished
    ON stormwall_outbox (position) WHERE published_at IS NULL;
CREATE TABLE IF NOT EXISTS stormwall_outbox_offsets (
    group_name TEXT NOT NULL,
    partition INT NOT NULL,
    position BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (group_name, partition)
);
CREATE TABLE IF NOT EXISTS stormwall_outbox_attempts (
    group_name TEXT NOT NULL,
    position BIGINT NOT NULL,
    attempts INT NOT NULL,
    PRIMARY KEY (group_name, position)
);
CREATE TABLE IF NOT EXISTS stormwall_outbox_dead (
    seq BIGSERIAL PRIMARY KEY,
    group_name TEXT NOT NULL,
    position BIGINT NOT NULL,
    reason TEXT NOT NULL,
    attempts INT NOT NULL,
    dead_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS stormwall_inbox (
    group_name TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (group_name, event_id)
);
";

/// Arbitrary constants: advisory locks for installing the schema, for appending (held
/// to commit, so positions commit in order), and for the one active relay.
const INSTALL_LOCK: i64 = 0x5357_4f42_494e_5354;
const APPEND_LOCK: i64 = 0x5357_4f42_4150_5044;
const RELAY_LOCK: i64 = 0x5357_4f42_524c_4159;
/// The channel appends notify (at commit).
const CHANNEL: &str = "stormwall_outbox";

/// Appends (with the append lock and a notification) and returns the position.
const APPEND: &str = "
WITH locked AS (SELECT pg_advisory_xact_lock($1)),
     notified AS (SELECT pg_notify('stormwall_outbox', ''))
INSERT INTO stormwall_outbox
    (id, stream_key, partition, kind, correlation_id, payload, target_group, created_at)
SELECT $2, $3, $4, $5, $6, $7, $8, $9 FROM locked, notified
RETURNING position";

const COLUMNS: &str = "position, id, stream_key, kind, correlation_id, payload";

fn message(r: &tokio_postgres::Row) -> Message {
    Message {
        position: r.get(0),
        id: r.get(1),
        stream_key: r.get(2),
        kind: r.get(3),
        correlation_id: r.get(4),
        payload: r.get(5),
    }
}

/// The outbox in a service's own PostgreSQL database.
#[derive(Debug, Clone, Copy)]
pub struct PostgresOutbox;

impl PostgresOutbox {
    /// Creates the outbox's tables if they do not exist (safe to run from many replicas at
    /// once).
    pub async fn install(client: &mut Client) -> Result<(), SagaError> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSTALL_LOCK])
            .await?;
        tx.batch_execute(SCHEMA).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends `message` inside `tx`: published (and delivered to subscriptions) once
    /// `tx` commits, never if it rolls back. Its position.
    ///
    /// Appends hold one advisory lock until their transaction ends, so that positions
    /// commit in order (a consumer never passes an event that commits late): keep
    /// transactions that append short.
    pub async fn append(tx: &Transaction<'_>, message: &Message) -> Result<i64, SagaError> {
        insert(tx, message, None).await
    }

    /// Records `message` as processed by `group` inside `tx` (the inbox): true the first
    /// time — apply its effect in `tx` — and false when it already was.
    pub async fn first_time(
        tx: &Transaction<'_>,
        group: &str,
        message: &Message,
    ) -> Result<bool, SagaError> {
        let added = tx
            .execute(
                "INSERT INTO stormwall_inbox (group_name, event_id, kind, processed_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&group, &message.id, &message.kind, &now_ms()],
            )
            .await?;
        Ok(added == 1)
    }

    /// Deletes the outbox's events older than `retention.outbox` that nothing needs any
    /// more; how many. An event goes once it is older than that (counted from its
    /// publication by a relay, or from its commit if no relay ever published from this
    /// outbox and it has consumer groups), every consumer group's checkpoint has passed
    /// it, and it is not a dead letter. (A relay with a
    /// [`retention`](super::Relay::retention) does it every hour.) A consumer group created
    /// later starts from the oldest event left.
    pub async fn purge(
        client: &impl GenericClient,
        retention: &RetentionOptions,
    ) -> Result<u64, SagaError> {
        let cutoff = retention.outbox_cutoff()?;
        Ok(client.execute(PURGE, &[&cutoff]).await?)
    }

    /// Deletes the inbox's records of events processed longer than `retention.inbox` ago;
    /// how many. Deduplication holds for at least that long after an event was processed
    /// (see [`RetentionOptions`]). Call it now and then (hourly).
    pub async fn purge_inbox(
        client: &impl GenericClient,
        retention: &RetentionOptions,
    ) -> Result<u64, SagaError> {
        let cutoff = retention.inbox_cutoff()?;
        Ok(client
            .execute(
                "DELETE FROM stormwall_inbox WHERE processed_at <= $1",
                &[&cutoff],
            )
            .await?)
    }
}

/// The events no one needs any more, published (or committed) at or before `$1`.
const PURGE: &str = "
DELETE FROM stormwall_outbox e
 WHERE COALESCE(e.published_at, e.created_at) <= $1
   AND (e.published_at IS NOT NULL
        OR (EXISTS (SELECT 1 FROM stormwall_outbox_offsets)
            AND NOT EXISTS (SELECT 1 FROM stormwall_outbox WHERE published_at IS NOT NULL)))
   AND NOT EXISTS (SELECT 1 FROM stormwall_outbox_offsets o
                    WHERE o.partition = e.partition AND o.position < e.position)
   AND NOT EXISTS (SELECT 1 FROM stormwall_outbox_dead d WHERE d.position = e.position)";

async fn insert(
    client: &impl GenericClient,
    m: &Message,
    target_group: Option<&str>,
) -> Result<i64, SagaError> {
    let row = client
        .query_one(
            APPEND,
            &[
                &APPEND_LOCK,
                &m.id,
                &m.stream_key,
                &partition_of(&m.stream_key),
                &m.kind,
                &m.correlation_id,
                &m.payload,
                &target_group,
                &now_ms(),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// A dedicated connection that listens on the outbox's channel: its notifications wake
/// `notify`.
async fn listening(url: &str) -> Result<(Client, Arc<Notify>), SagaError> {
    let mut config: tokio_postgres::Config =
        url.parse()
            .map_err(|e: tokio_postgres::Error| SagaError::InvalidUrl {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, mut connection) =
        tokio::time::timeout(Duration::from_secs(5), config.connect(NoTls))
            .await
            .map_err(|_| SagaError::Unreachable(format!("no connection to {url} within 5s")))?
            .map_err(|e| SagaError::Unreachable(e.to_string()))?;
    let notify = Arc::new(Notify::new());
    let wake = notify.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                wake.notify_one();
            }
        }
        // Closed: wake the waiter so that it reconnects.
        wake.notify_one();
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok((client, notify))
}

/// Reads a PostgreSQL outbox for a [`Relay`](super::Relay). Of several relays on one
/// outbox (one per replica), one publishes at a time: the one holding a session advisory
/// lock; when it dies its lock goes with its connection and another takes over.
pub struct PostgresOutboxSource {
    url: String,
    /// The connection, its notifications, and whether it holds the relay lock.
    client: tokio::sync::Mutex<Option<(Client, Arc<Notify>, bool)>>,
}

impl std::fmt::Debug for PostgresOutboxSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutboxSource")
            .finish_non_exhaustive()
    }
}

impl PostgresOutboxSource {
    /// A source for the outbox in the database at `url` (connects on first use).
    pub fn new(url: &str) -> Self {
        PostgresOutboxSource {
            url: url.to_owned(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The connection, made (tables installed) if needed or lost.
    async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&mut Client, &mut bool) -> Result<T, SagaError>,
    ) -> Result<T, SagaError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|(c, _, _)| c.is_closed()) {
            let (mut client, notify) = listening(&self.url).await?;
            PostgresOutbox::install(&mut client).await?;
            *guard = Some((client, notify, false));
        }
        let (client, _, active) = guard
            .as_mut()
            .ok_or_else(|| SagaError::Unreachable("no connection".into()))?;
        work(client, active).await
    }
}

impl OutboxSource for PostgresOutboxSource {
    async fn pending(&self, limit: usize) -> Result<Vec<Message>, SagaError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_client(async |client, active| {
            // Taken once, held until this connection closes.
            if !*active {
                *active = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&RELAY_LOCK])
                    .await?
                    .get(0);
                if !*active {
                    return Ok(Vec::new()); // another relay publishes
                }
            }
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM stormwall_outbox
                          WHERE published_at IS NULL ORDER BY position LIMIT $1"
                    ),
                    &[&limit],
                )
                .await?;
            Ok(rows.iter().map(message).collect())
        })
        .await
    }

    async fn mark_published(&self, through: i64) -> Result<(), SagaError> {
        self.with_client(async |client, _| {
            client
                .execute(
                    "UPDATE stormwall_outbox SET published_at = $2
                      WHERE published_at IS NULL AND position <= $1",
                    &[&through, &now_ms()],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn purge(&self, retention: &RetentionOptions) -> Result<usize, SagaError> {
        let retention = *retention;
        self.with_client(async |client, _| {
            Ok(PostgresOutbox::purge(&*client, &retention).await? as usize)
        })
        .await
    }

    async fn wait_for_more(&self, at_most: Duration) {
        let notify = self.client.lock().await.as_ref().map(|(_, n, _)| n.clone());
        match notify {
            Some(n) => {
                let _ = tokio::time::timeout(at_most, n.notified()).await;
            }
            None => tokio::time::sleep(at_most).await,
        }
    }
}

/// The round in progress: the partition locked and the positions received.
#[derive(Debug, Default)]
struct Round {
    partition: i32,
    /// In order; `true` for an event not for this group (requeued for another), settled
    /// without being delivered.
    positions: Vec<(i64, bool)>,
}

/// One consumer of a consumer group over the PostgreSQL outbox itself. Each group has a
/// checkpoint per partition ([`PARTITIONS`] of them; a stream key always hashes to the
/// same one); a round locks one partition with pending events (`FOR UPDATE SKIP LOCKED`:
/// other consumers of the group take other partitions), handles its events in order, and
/// moves the checkpoint in the same transaction — a consumer that dies mid-round leaves the
/// checkpoint where it was, and its lock goes with its connection.
pub struct PostgresSubscription {
    url: String,
    group: String,
    wait: Duration,
    /// The round's connection (holds the partition's lock) and its notifications.
    client: Option<(Client, Arc<Notify>)>,
    /// A second connection for what must commit outside the round: attempts, requeues.
    side: Option<Client>,
    round: Option<Round>,
    /// Whether the round's connection is inside a transaction (set at BEGIN, cleared at
    /// COMMIT or ROLLBACK): one left open by an error or a dropped call is rolled back
    /// before the next round.
    open: bool,
}

impl std::fmt::Debug for PostgresSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSubscription")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl PostgresSubscription {
    /// A consumer of group `group` of the outbox in the database at `url` (a new group
    /// starts from the first event). Connects at once.
    pub async fn connect(url: &str, group: impl Into<String>) -> Result<Self, SagaError> {
        let mut subscription = PostgresSubscription {
            url: url.to_owned(),
            group: group.into(),
            wait: Duration::from_secs(1),
            client: None,
            side: None,
            round: None,
            open: false,
        };
        subscription.client().await?;
        Ok(subscription)
    }

    async fn client(&mut self) -> Result<&mut Client, SagaError> {
        if self.client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            self.round = None;
            self.open = false;
            let (mut client, notify) = listening(&self.url).await?;
            PostgresOutbox::install(&mut client).await?;
            client
                .execute(
                    "INSERT INTO stormwall_outbox_offsets (group_name, partition, position)
                     SELECT $1, p, 0 FROM generate_series(0, $2 - 1) AS p ON CONFLICT DO NOTHING",
                    &[&self.group, &PARTITIONS],
                )
                .await?;
            self.client = Some((client, notify));
        }
        self.client
            .as_mut()
            .map(|(c, _)| c)
            .ok_or_else(|| SagaError::Unreachable("no connection".into()))
    }

    async fn side(&mut self) -> Result<&mut Client, SagaError> {
        if self.side.as_ref().is_none_or(Client::is_closed) {
            let (side, _) = listening(&self.url).await?;
            // Attempt counts need not wait for the disk: a server crash may lose the last
            // increments (a poison event then gets an attempt or two more), a consumer
            // crash loses none. (The PostgreSQL bench: 200 → 254 events/s.)
            side.batch_execute("SET synchronous_commit TO off").await?;
            self.side = Some(side);
        }
        self.side
            .as_mut()
            .ok_or_else(|| SagaError::Unreachable("no connection".into()))
    }

    /// Locks a partition with events pending for this group and reads up to `max` of
    /// them; none when every such partition is taken or there are none.
    async fn try_round(&mut self, max: usize) -> Result<Vec<Delivery>, SagaError> {
        let group = self.group.clone();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.client().await?.batch_execute("BEGIN").await?;
        self.open = true;
        let client = self.client().await?;
        let locked = client
            .query_opt(
                "SELECT o.partition, o.position FROM stormwall_outbox_offsets o
                  WHERE o.group_name = $1 AND EXISTS (
                        SELECT 1 FROM stormwall_outbox e
                         WHERE e.partition = o.partition AND e.position > o.position)
                  ORDER BY o.position LIMIT 1
                  FOR UPDATE OF o SKIP LOCKED",
                &[&group],
            )
            .await?;
        let Some(locked) = locked else {
            client.batch_execute("ROLLBACK").await?;
            self.open = false;
            return Ok(Vec::new());
        };
        let (partition, after): (i32, i64) = (locked.get(0), locked.get(1));
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS}, target_group FROM stormwall_outbox
                      WHERE partition = $1 AND position > $2 ORDER BY position LIMIT $3"
                ),
                &[&partition, &after, &limit],
            )
            .await?;
        let mut round = Round {
            partition,
            positions: Vec::with_capacity(rows.len()),
        };
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let m = message(row);
            let target: Option<String> = row.get(6);
            let skip = target.is_some_and(|t| t != group);
            round.positions.push((m.position, skip));
            if !skip {
                deliveries.push(Delivery {
                    receipt: m.position.to_string(),
                    message: m,
                });
            }
        }
        self.round = Some(round);
        if deliveries.is_empty() {
            // Only other groups' requeued events: move past them now.
            self.settle(&[], &[]).await?;
        }
        Ok(deliveries)
    }
}

impl Subscription for PostgresSubscription {
    fn group(&self) -> &str {
        &self.group
    }

    async fn receive(&mut self, max: usize) -> Result<Vec<Delivery>, SagaError> {
        self.round = None;
        if self.open {
            // The last round was not settled (its caller gave up, or a statement failed):
            // its events are delivered again.
            self.client().await?.batch_execute("ROLLBACK").await?;
            self.open = false;
        }
        let deliveries = self.try_round(max).await?;
        if !deliveries.is_empty() || self.round.is_some() {
            return Ok(deliveries);
        }
        // Nothing for now: wait for an append's notification (or `wait`), then look once
        // more.
        if let Some((_, notify)) = &self.client {
            let _ = tokio::time::timeout(self.wait, notify.clone().notified()).await;
        }
        self.try_round(max).await
    }

    async fn begin_attempt(&mut self, delivery: &Delivery) -> Result<u32, SagaError> {
        let group = self.group.clone();
        let position = delivery.message.position;
        let row = self
            .side()
            .await?
            .query_one(
                "INSERT INTO stormwall_outbox_attempts (group_name, position, attempts)
                 VALUES ($1, $2, 1)
                 ON CONFLICT (group_name, position)
                 DO UPDATE SET attempts = stormwall_outbox_attempts.attempts + 1
                 RETURNING attempts",
                &[&group, &position],
            )
            .await?;
        Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
    }

    fn keep_alive_every(&self) -> Option<Duration> {
        None
    }

    async fn keep_alive(&mut self, _: &[Delivery]) -> Result<Vec<String>, SagaError> {
        Ok(Vec::new())
    }

    async fn settle(
        &mut self,
        acked: &[Delivery],
        dead: &[(Delivery, String, u32)],
    ) -> Result<(), SagaError> {
        let Some(round) = self.round.take() else {
            return Ok(());
        };
        let settled: std::collections::HashSet<i64> = acked
            .iter()
            .map(|d| d.message.position)
            .chain(dead.iter().map(|(d, _, _)| d.message.position))
            .collect();
        // The checkpoint moves over the settled events at the head of the round.
        let through = round
            .positions
            .iter()
            .take_while(|(p, skip)| *skip || settled.contains(p))
            .last()
            .map(|(p, _)| *p);
        let group = self.group.clone();
        let client = self.client().await?;
        if let Some(through) = through {
            client
                .execute(
                    "UPDATE stormwall_outbox_offsets SET position = $3
                      WHERE group_name = $1 AND partition = $2",
                    &[&group, &round.partition, &through],
                )
                .await?;
        }
        for (d, reason, attempts) in dead {
            let attempts = i32::try_from(*attempts).unwrap_or(i32::MAX);
            client
                .execute(
                    "INSERT INTO stormwall_outbox_dead (group_name, position, reason, attempts, dead_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&group, &d.message.position, reason, &attempts, &now_ms()],
                )
                .await?;
        }
        let positions: Vec<i64> = settled.into_iter().collect();
        client
            .execute(
                "DELETE FROM stormwall_outbox_attempts WHERE group_name = $1 AND position = ANY($2)",
                &[&group, &positions],
            )
            .await?;
        client.batch_execute("COMMIT").await?;
        self.open = false;
        Ok(())
    }

    async fn dead_letters(&mut self) -> Result<Vec<DeadLetter>, SagaError> {
        let group = self.group.clone();
        let rows = self
            .side()
            .await?
            .query(
                "SELECT e.position, e.id, e.stream_key, e.kind, e.correlation_id, e.payload,
                        d.seq, d.reason, d.attempts
                   FROM stormwall_outbox_dead d JOIN stormwall_outbox e ON e.position = d.position
                  WHERE d.group_name = $1 ORDER BY d.seq",
                &[&group],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                message: message(r),
                id: r.get::<_, i64>(6).to_string(),
                reason: r.get(7),
                attempts: u32::try_from(r.get::<_, i32>(8)).unwrap_or(0),
            })
            .collect())
    }

    async fn requeue(&mut self, id: &str) -> Result<(), SagaError> {
        let group = self.group.clone();
        let unknown = || SagaError::UnknownDeadLetter {
            group: group.clone(),
            id: id.to_owned(),
        };
        let seq: i64 = id.parse().map_err(|_| unknown())?;
        let side = self.side().await?;
        let tx = side.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "DELETE FROM stormwall_outbox_dead d USING stormwall_outbox e
                  WHERE d.seq = $1 AND d.group_name = $2 AND e.position = d.position
              RETURNING e.position, e.id, e.stream_key, e.kind, e.correlation_id, e.payload",
                &[&seq, &group],
            )
            .await?
        else {
            return Err(unknown());
        };
        insert(&tx, &message(&row), Some(&group)).await?;
        tx.commit().await?;
        Ok(())
    }
}
