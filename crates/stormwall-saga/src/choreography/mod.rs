//! Choreography: services that react to each other's events instead of being driven by
//! an [`Orchestrator`](crate::Orchestrator). Three pieces make it safe:
//!
//! - **Transactional outbox** ([`SqliteOutbox`], `PostgresOutbox`): a service appends
//!   the event inside the same database transaction as its own state change, so the
//!   event exists if and only if the change committed (no dual write). A [`Relay`]
//!   publishes committed events to a broker, in order, at least once, through a
//!   stormwall pipeline.
//! - **Subscriptions** ([`Subscription`]): consumer groups over PostgreSQL (the outbox
//!   table itself: `FOR UPDATE SKIP LOCKED` + `LISTEN/NOTIFY`, `PostgresSubscription`)
//!   or Redis Streams (`XREADGROUP`/`XACK`/`XAUTOCLAIM`, `RedisSubscription`, feature
//!   `redis`), each group with its own checkpoint.
//! - **Idempotent consumers** ([`Consumer`], [`SqliteInbox`]): the handler runs through
//!   a pipeline (timeout, retry, breaker); an event that keeps failing goes to the group's
//!   dead letters after `max_attempts` (inspect, requeue); the inbox records an event id
//!   in the consumer's own transaction so that its effect happens once per group.
//!
//! Every [`Message`] carries a correlation id, copied from the event it reacts to
//! ([`Message::reacting_to`]); a [`SagaTracker`] (SQLite or PostgreSQL) keeps, per
//! correlation id, the events seen so far: a saga's progress, whether it finished or
//! stalled, and where it stopped — queryable, and shown on stormwall's live dashboard (its
//! rows are what `stormwall_proxy::dashboard::Dashboard::feed_sagas` reads).
//!
//! [`RetentionOptions`] bound what the tables keep: a [`Relay`] with a retention purges
//! its outbox's published events every hour; inboxes are purged by `purge` on the
//! consumer's database, and deduplicate for at least their retention.
//!
//! # Delivery and ordering guarantees
//!
//! - Publication is **at least once**: a relay that dies after publishing and before
//!   marking the event published publishes it again. Redis Streams entries carry the
//!   outbox position as their id (`<position>-0`), so Redis refuses the second copy: on
//!   one relay per outbox, each committed event is in the stream once.
//! - Delivery to a group is **at least once**: a consumer that dies mid-handler leaves
//!   the event unacknowledged; it is delivered again (PostgreSQL: at once, the dead
//!   connection's lock is gone; Redis: to another consumer once it has been idle
//!   `claim_idle`, or to the same consumer name when it restarts). Pair it with the
//!   inbox for an effect that happens once.
//! - **Order per stream key**: PostgreSQL subscriptions hash each stream key to one of
//!   [`PARTITIONS`] partitions; a partition is handled by one consumer of a group at a
//!   time, in outbox order, and a failing event holds back the events after it in its
//!   partition until it succeeds or is dead-lettered. Redis Streams deliver in stream
//!   order, but a group's consumers share the entries: with one consumer per group the
//!   order per key (indeed the total order) holds; with several, two events of one key
//!   may be handled at the same time by different consumers. A requeued dead letter comes
//!   after the events published since.
//! - **One consumer at a time per event** within a group: PostgreSQL holds the
//!   partition's row lock for the whole batch; Redis assigns each entry to one consumer,
//!   and the consumer handling it renews its claim every `claim_idle / 3` so that
//!   `XAUTOCLAIM` never hands a live consumer's entry to another.

mod consumer;
mod inbox;
mod message;
mod outbox;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod relay;
mod retention;
mod tracker;

pub use consumer::{Consumer, ConsumerOptions, DeadLetter, Delivery, Subscription};
pub use inbox::SqliteInbox;
pub use message::Message;
pub use outbox::{SqliteOutbox, SqliteOutboxSource};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOutbox, PostgresOutboxSource, PostgresSubscription};
#[cfg(feature = "redis")]
pub use redis::{RedisStreams, RedisSubscription};
pub use relay::{OutboxSource, Publisher, Relay, PURGE_EVERY};
pub use retention::RetentionOptions;
pub use tracker::{SagaProgress, SagaStatus, SagaTracker, TrackedEvent};

/// How many partitions the stream keys of a PostgreSQL outbox hash to: the most
/// consumers of one group that make progress at the same time.
pub const PARTITIONS: i32 = 16;

/// The partition of `stream_key` (FNV-1a: stable across processes and versions).
pub fn partition_of(stream_key: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in stream_key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % PARTITIONS as u32) as i32
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
