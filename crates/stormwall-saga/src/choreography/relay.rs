//! The relay: publishes an outbox's committed events to a broker, in order, at least
//! once, through a stormwall pipeline.

use super::{Message, RetentionOptions};
use crate::SagaError;
use std::future::Future;
use std::time::Duration;
use stormwall::pipeline::Strategy;
use stormwall::Pipeline;

/// Where a relay reads committed events from.
pub trait OutboxSource: Send + Sync {
    /// Up to `limit` events not yet published, in position order.
    fn pending(&self, limit: usize)
        -> impl Future<Output = Result<Vec<Message>, SagaError>> + Send;
    /// Marks every event up to position `through` published.
    fn mark_published(&self, through: i64) -> impl Future<Output = Result<(), SagaError>> + Send;
    /// Returns when new events may have been committed, or after `at_most`.
    fn wait_for_more(&self, at_most: Duration) -> impl Future<Output = ()> + Send;
    /// Deletes the published events older than `retention.outbox`; how many. (A source
    /// that keeps nothing need not.)
    fn purge(
        &self,
        retention: &RetentionOptions,
    ) -> impl Future<Output = Result<usize, SagaError>> + Send {
        let _ = retention;
        async { Ok(0) }
    }
}

/// How often a relay with a retention purges its outbox.
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Where a relay publishes: a broker.
pub trait Publisher: Send + Sync {
    /// Publishes `batch` (in order). Publishing an event again must be harmless (the relay
    /// is at least once): either the broker refuses the copy or consumers deduplicate.
    fn publish(&self, batch: &[Message]) -> impl Future<Output = Result<(), String>> + Send;
}

/// Publishes the committed events of an outbox, oldest first, batch by batch: each batch
/// through the pipeline (retry, timeout, breaker), then marked published. A relay that
/// stops between the two publishes the batch again when it restarts (at least once).
#[derive(Debug)]
pub struct Relay<S, P, St> {
    source: S,
    publisher: P,
    pipeline: Pipeline<St>,
    batch: usize,
    idle: Duration,
    /// Set by [`retention`](Self::retention): [`run`](Self::run) purges the outbox with
    /// it every [`PURGE_EVERY`].
    retention: Option<RetentionOptions>,
}

impl<S: OutboxSource, P: Publisher, St: Strategy<(), String>> Relay<S, P, St> {
    /// A relay from `source` to `publisher`, batches of up to 256 events, looking again
    /// every second when idle (sooner when the source signals new events).
    pub fn new(source: S, publisher: P, pipeline: Pipeline<St>) -> Self {
        Relay {
            source,
            publisher,
            pipeline,
            batch: 256,
            idle: Duration::from_secs(1),
            retention: None,
        }
    }

    /// Events per batch. Default 256; valid ≥ 1.
    pub fn batch(mut self, events: usize) -> Self {
        self.batch = events.max(1);
        self
    }

    /// Makes [`run`](Self::run) purge the outbox's published events older than
    /// `retention.outbox`, when it starts and every [`PURGE_EVERY`] (an hour). Default: no
    /// purge. Fails when `retention` is invalid ([`RetentionOptions::validate`]).
    pub fn retention(mut self, retention: RetentionOptions) -> Result<Self, SagaError> {
        retention.validate()?;
        self.retention = Some(retention);
        Ok(self)
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Publishes every event committed so far; how many.
    pub async fn publish_pending(&self) -> Result<usize, SagaError> {
        let mut published = 0;
        loop {
            let batch = self.source.pending(self.batch).await?;
            let Some(last) = batch.last().map(|m| m.position) else {
                return Ok(published);
            };
            self.pipeline
                .execute(|_| self.publisher.publish(&batch))
                .await
                .map_err(|e| SagaError::Publish(e.to_string()))?;
            self.source.mark_published(last).await?;
            published += batch.len();
        }
    }

    /// Publishes until `shutdown` completes; a failed round (the broker down after the
    /// pipeline's retries) is logged and tried again when the source next signals or
    /// after a second.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut next_purge = tokio::time::Instant::now();
        loop {
            if let Some(retention) = &self.retention {
                if tokio::time::Instant::now() >= next_purge {
                    next_purge += PURGE_EVERY;
                    match self.source.purge(retention).await {
                        Ok(n) => {
                            tracing::debug!(purged = n, "outbox relay: purged published events")
                        }
                        Err(e) => tracing::warn!(error = %e, "outbox relay: purging failed"),
                    }
                }
            }
            if let Err(e) = self.publish_pending().await {
                tracing::warn!(error = %e, "outbox relay: publishing failed; trying again");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.source.wait_for_more(self.idle) => {}
            }
        }
    }
}
