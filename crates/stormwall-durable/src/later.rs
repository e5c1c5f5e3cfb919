//! The fallback kind "queue for later": when the call fails, keep its work durably and
//! answer an accepted value.

use crate::DurableQueue;
use std::future::Future;
use stormwall::fallback::FallbackAction;
use stormwall::{Context, Error};

/// What to keep when the call fails: attach it to the call's context as a property
/// (`Context::new().with_properties(Properties::new().with(Deferred { .. }))`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// The job's payload (what the worker needs to do the work later).
    pub payload: Vec<u8>,
    /// Makes a repeated call a no-op in the queue (and lets the target deduplicate).
    pub idempotency_key: Option<String>,
}

/// A fallback action that enqueues the call's [`Deferred`] work into `queue` (durable when
/// the fallback returns) and answers `accepted` — "PaymentPending". A call without a
/// `Deferred` property, or an enqueue that fails, keeps its original outcome.
///
/// ```no_run
/// # async fn run(queue: stormwall_durable::DurableQueue) -> Result<(), Box<dyn std::error::Error>> {
/// use stormwall::fallback::FallbackOptions;
/// use stormwall::pipeline::Properties;
/// use stormwall::{Context, Pipeline};
/// use stormwall_durable::{Deferred, QueueForLater};
/// let payments = Pipeline::builder()
///     .fallback(FallbackOptions::action(QueueForLater::new(queue, "payments", "PaymentPending")))
///     .build()?;
/// let work = Deferred { payload: b"charge order-7".to_vec(), idempotency_key: Some("order-7".into()) };
/// let status = payments
///     .execute_with(Context::new().with_properties(Properties::new().with(work)), |_| async {
///         Err::<&str, _>("payment service down")
///     })
///     .await
///     .map_err(|e| e.to_string())?;
/// assert_eq!(status, "PaymentPending");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct QueueForLater<T> {
    queue: DurableQueue,
    name: String,
    accepted: T,
}

impl<T> QueueForLater<T> {
    /// Keeps failed calls' work in the queue named `name`, answering `accepted`.
    pub fn new(queue: DurableQueue, name: impl Into<String>, accepted: T) -> Self {
        QueueForLater {
            queue,
            name: name.into(),
            accepted,
        }
    }
}

impl<T: Clone + Send + Sync, E: Send> FallbackAction<T, E> for QueueForLater<T> {
    const USES_CONTEXT: bool = true;

    fn fallback(
        &self,
        outcome: Result<T, Error<E>>,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send {
        // Without the call's context there is nothing to keep.
        std::future::ready(outcome)
    }

    fn fallback_in(
        &self,
        ctx: &Context,
        outcome: Result<T, Error<E>>,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send {
        let work = ctx.get::<Deferred>().cloned();
        async move {
            let Some(work) = work else {
                return outcome;
            };
            match self
                .queue
                .enqueue(&self.name, work.payload, work.idempotency_key.as_deref())
                .await
            {
                Ok(_) => Ok(self.accepted.clone()),
                Err(e) => {
                    tracing::warn!(queue = %self.name, error = %e, "stormwall-durable: could not queue the work for later");
                    outcome
                }
            }
        }
    }
}
