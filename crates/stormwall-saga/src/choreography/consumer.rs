//! Consumer groups behind one trait, and the consumer that runs a handler over them.

use super::Message;
use crate::SagaError;
use std::future::Future;
use std::time::Duration;
use stormwall::pipeline::Strategy;
use stormwall::Pipeline;

/// An event delivered to one consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event.
    pub message: Message,
    /// The broker's handle on this delivery (Redis: the entry id; PostgreSQL: the
    /// position).
    pub receipt: String,
}

/// An event a group gave up on: the handler failed `attempts` times (or the consumer died
/// in it that often).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id among the group's dead letters: what [`Subscription::requeue`] takes.
    pub id: String,
    /// The event.
    pub message: Message,
    /// The last failure.
    pub reason: String,
    /// Attempts started.
    pub attempts: u32,
}

/// A consumer's view of one consumer group of a stream of events: each event is delivered
/// to one consumer of the group at a time, until acknowledged (at least once); each group
/// keeps its own checkpoint. Implemented by `PostgresSubscription` (feature `postgres`)
/// and `RedisSubscription` (feature `redis`).
pub trait Subscription: Send {
    /// The group's name.
    fn group(&self) -> &str;
    /// Up to `max` events for this consumer: waits a while (about a second) for the first
    /// one; may return none. Events received and not settled are delivered again.
    fn receive(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, SagaError>> + Send;
    /// Counts an attempt at `delivery` durably (before the handler runs, so that an
    /// event that kills its consumer still reaches its limit): attempts so far, this one
    /// included.
    fn begin_attempt(
        &mut self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<u32, SagaError>> + Send;
    /// How often a long handler must call [`keep_alive`](Self::keep_alive) (None: never).
    fn keep_alive_every(&self) -> Option<Duration>;
    /// Tells the broker this consumer is still working on `deliveries` (the rest of its
    /// round); the receipts of those another consumer took over meanwhile (this consumer
    /// stalled past the claim's idle time), which it must not handle.
    fn keep_alive(
        &mut self,
        deliveries: &[Delivery],
    ) -> impl Future<Output = Result<Vec<String>, SagaError>> + Send;
    /// Ends the round of the last [`receive`](Self::receive): `acked` are done (never
    /// delivered to this group again), `dead` go to the group's dead letters with their
    /// reason and attempts; the others are delivered again.
    fn settle(
        &mut self,
        acked: &[Delivery],
        dead: &[(Delivery, String, u32)],
    ) -> impl Future<Output = Result<(), SagaError>> + Send;
    /// The group's dead letters, oldest first.
    fn dead_letters(&mut self) -> impl Future<Output = Result<Vec<DeadLetter>, SagaError>> + Send;
    /// Delivers dead letter `id` to this group again (after the events published
    /// since), with its attempts reset.
    fn requeue(&mut self, id: &str) -> impl Future<Output = Result<(), SagaError>> + Send;
}

/// A [`Consumer`]'s options.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Attempts at one event (each one a whole run of the pipeline, retries included)
    /// before it goes to the dead letters. Default 5; valid ≥ 1.
    pub max_attempts: u32,
    /// Events received at once. Default 32; valid ≥ 1.
    pub batch: usize,
    /// How long [`Consumer::run`] waits before receiving again after the broker failed.
    /// Default 500 ms.
    pub error_backoff: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            max_attempts: 5,
            batch: 32,
            error_backoff: Duration::from_millis(500),
        }
    }
}

/// Runs a handler for every event of a [`Subscription`], each call through a stormwall
/// pipeline (timeout, retry, breaker). An event is acknowledged when the handler
/// succeeds; when it fails, the events after it in the batch wait (their order per key
/// holds) and it is delivered again, until `max_attempts`: then it goes to the group's
/// dead letters and the others proceed.
///
/// Delivery is at least once: a handler whose effect must happen once records the event
/// in an inbox within the transaction of that effect ([`SqliteInbox`](super::SqliteInbox)).
#[derive(Debug)]
pub struct Consumer<Sub, St> {
    subscription: Sub,
    pipeline: Pipeline<St>,
    options: ConsumerOptions,
}

impl<Sub: Subscription, St: Strategy<(), String>> Consumer<Sub, St> {
    /// A consumer of `subscription`, its handler run through `pipeline`.
    pub fn new(subscription: Sub, pipeline: Pipeline<St>, options: ConsumerOptions) -> Self {
        Consumer {
            subscription,
            pipeline,
            options,
        }
    }

    /// The subscription (to inspect or requeue dead letters).
    pub fn subscription(&mut self) -> &mut Sub {
        &mut self.subscription
    }

    /// One round: receives a batch, handles it, settles it; how many events were settled
    /// (acknowledged or dead-lettered).
    pub async fn poll_once<H, Fut>(&mut self, handler: &H) -> Result<usize, SagaError>
    where
        H: Fn(Message) -> Fut + Sync,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let max_attempts = self.options.max_attempts.max(1);
        let deliveries = self.subscription.receive(self.options.batch.max(1)).await?;
        if deliveries.is_empty() {
            return Ok(0);
        }
        let (mut acked, mut dead) = (Vec::new(), Vec::new());
        let mut lost = std::collections::HashSet::new();
        // One renewal clock for the whole round: the events waiting behind the one being
        // handled must not go idle either.
        let every = self
            .subscription
            .keep_alive_every()
            .unwrap_or(Duration::MAX / 4);
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for (at, delivery) in deliveries.iter().enumerate() {
            if lost.contains(&delivery.receipt) {
                break; // another consumer has it (and the ones after it wait)
            }
            let attempts = self.subscription.begin_attempt(delivery).await?;
            if attempts > max_attempts {
                let reason = format!(
                    "{} attempts started and none finished (the consumer stopped inside the handler)",
                    attempts - 1
                );
                dead.push((delivery.clone(), reason, attempts - 1));
                continue;
            }
            match self
                .handle(&deliveries, at, handler, &mut renew, &mut lost)
                .await
            {
                Ok(()) => acked.push(delivery.clone()),
                Err(_) if lost.contains(&delivery.receipt) => break,
                Err(reason) if attempts >= max_attempts => {
                    tracing::warn!(event = %delivery.message.id, kind = %delivery.message.kind,
                        group = self.subscription.group(), %reason, attempts, "event dead-lettered");
                    dead.push((delivery.clone(), reason, attempts));
                }
                Err(reason) => {
                    tracing::debug!(event = %delivery.message.id, %reason, attempts,
                        "handler failed; the event will be delivered again");
                    break;
                }
            }
        }
        self.subscription.settle(&acked, &dead).await?;
        Ok(acked.len() + dead.len())
    }

    /// The handler through the pipeline for `round[at]`, keeping the whole round alive
    /// while it runs — those handled and not yet acknowledged, those waiting — (the ones
    /// taken over go to `lost`; if the one being handled is, its handler is dropped).
    async fn handle<H, Fut>(
        &mut self,
        round: &[Delivery],
        at: usize,
        handler: &H,
        renew: &mut tokio::time::Interval,
        lost: &mut std::collections::HashSet<String>,
    ) -> Result<(), String>
    where
        H: Fn(Message) -> Fut + Sync,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let Consumer {
            subscription,
            pipeline,
            ..
        } = self;
        let delivery = &round[at];
        let message = &delivery.message;
        let run = pipeline.execute(|_| handler(message.clone()));
        tokio::pin!(run);
        if subscription.keep_alive_every().is_none() {
            return run.await.map_err(|e| e.to_string());
        }
        loop {
            tokio::select! {
                // A renewal that is due goes first: an event taken over while this
                // consumer stalled is not started.
                biased;
                _ = renew.tick() => match subscription.keep_alive(round).await {
                    Ok(taken) => {
                        lost.extend(taken);
                        if lost.contains(&delivery.receipt) {
                            return Err("another consumer took the event over (this one stalled past the claim's idle time)".into());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not renew the claim on an event"),
                },
                result = &mut run => return result.map_err(|e| e.to_string()),
            }
        }
    }

    /// Handles events until `shutdown` completes. A broker failure is logged and
    /// receiving resumes after `error_backoff`; an event being handled when `shutdown`
    /// completes is delivered again later.
    pub async fn run<H, Fut>(&mut self, handler: H, shutdown: impl Future<Output = ()>)
    where
        H: Fn(Message) -> Fut + Sync,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                result = self.poll_once(&handler) => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, group = self.subscription.group(),
                            "consumer: receiving failed; trying again");
                        tokio::select! {
                            () = &mut shutdown => return,
                            () = tokio::time::sleep(self.options.error_backoff) => {}
                        }
                    }
                }
            }
        }
    }
}
