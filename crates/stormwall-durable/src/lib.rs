#![cfg_attr(docsrs, feature(doc_cfg))]
//! Durable deferred work: "accept the order now, charge the payment when the service is
//! back" without losing the payment when the process dies in between.
//!
//! [`DurableQueue`] keeps jobs in SQLite (WAL, `synchronous = FULL`) — or, with the
//! `postgres` feature, in PostgreSQL, where many replicas drain one queue (leases take
//! rows `FOR UPDATE SKIP LOCKED`). [`enqueue`] returns only after the job's transaction is
//! committed to disk; on SQLite concurrent enqueues share one commit (group commit). A
//! duplicate enqueue with the same idempotency key is a no-op that returns the first job's
//! id. Workers [`lease`] jobs with a visibility timeout — a crashed worker's jobs come back
//! when it expires — then [`ack`] them, or [`fail`] them: rescheduled with exponential
//! backoff, moved to dead letters after the maximum attempts. [`Worker`] runs that loop through a handler and waits (makes no call)
//! while the target's circuit breaker is open.
//!
//! [`enqueue`]: DurableQueue::enqueue
//! [`lease`]: DurableQueue::lease
//! [`ack`]: DurableQueue::ack
//! [`fail`]: DurableQueue::fail

mod later;
#[cfg(feature = "postgres")]
mod postgres;
mod queue;
mod sqlite;
pub mod storage;
mod worker;

pub use later::{Deferred, QueueForLater};
pub use queue::{DeadLetter, DurableQueue, Enqueued, Job, QueueDepth, QueueError, QueueOptions};
pub use storage::{StorageTimeouts, TimedOut};
pub use worker::{Worker, WorkerOptions};
