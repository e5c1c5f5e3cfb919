use super::slots::{Slot, Slots};
use super::{BulkheadOptions, BulkheadRejected, BulkheadRejection};
use crate::keyed::Keyed;
use crate::pipeline::{Context, Strategy};
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use std::future::Future;
use std::sync::Arc;

/// Lets at most `max_concurrency` calls run at once; queues up to `queue_limit` more,
/// first come first served, and rejects the rest with [`Error::BulkheadFull`].
///
/// A `Bulkhead` is a handle: clones share the slots. A call cancelled while queued leaves
/// the queue; a call cancelled while running frees its slot.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    slots: Arc<Slots>,
    options: BulkheadOptions,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl Bulkhead {
    /// A bulkhead with `options`, validated.
    pub fn new(options: BulkheadOptions) -> Result<Self, crate::ConfigError> {
        options.validate().map_err(|e| e.within("bulkhead"))?;
        Ok(Bulkhead {
            slots: Arc::new(Slots::new(options.max_concurrency)),
            options,
            telemetry: Telemetry::default(),
        })
    }

    /// Calls running now.
    pub fn in_use(&self) -> u32 {
        self.slots.in_use()
    }

    /// Calls waiting now.
    pub fn queued(&self) -> u32 {
        self.slots.queued()
    }

    /// The options this bulkhead runs with.
    pub fn options(&self) -> &BulkheadOptions {
        &self.options
    }

    pub(crate) fn slots(&self) -> Arc<Slots> {
        Arc::clone(&self.slots)
    }
}

crate::pipeline::attach_telemetry!([] Bulkhead);

/// Takes a slot from `slots`: at once (no future involved), or after waiting in the queue.
async fn acquire<'a>(
    slots: &'a Slots,
    options: &BulkheadOptions,
    telemetry: &Telemetry,
) -> Result<Slot<'a>, BulkheadRejection> {
    if slots.try_acquire() {
        return Ok(Slot(slots));
    }
    acquire_queued(slots, options, telemetry).await
}

/// The slow path: no slot free, so queue (if allowed) or reject.
async fn acquire_queued<'a>(
    slots: &'a Slots,
    options: &BulkheadOptions,
    telemetry: &Telemetry,
) -> Result<Slot<'a>, BulkheadRejection> {
    let rejected = |reason| {
        telemetry.emit(crate::telemetry::strategy::BULKHEAD, || {
            Event::BulkheadRejected(BulkheadRejected {
                reason,
                in_use: slots.in_use(),
                queued: slots.queued(),
            })
        });
        Err(reason)
    };
    if options.queue_limit == 0 {
        return rejected(BulkheadRejection::Full);
    }
    let Some(mut place) = slots.enqueue(options.queue_limit) else {
        return rejected(BulkheadRejection::Full);
    };
    match options.queue_timeout {
        None => place.granted().await,
        Some(timeout) => {
            if tokio::time::timeout(timeout, place.granted())
                .await
                .is_err()
            {
                drop(place); // leaves the queue (or frees a slot granted just now)
                return rejected(BulkheadRejection::QueueTimeout);
            }
        }
    }
    // Granted: the slot is ours, the place has nothing left to clean up.
    drop(place);
    Ok(Slot(slots))
}

impl<T, E> Strategy<T, E> for Bulkhead {
    fn execute<F, Fut>(
        &self,
        ctx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send
    where
        F: Fn(Context) -> Fut + Copy + Send + Sync,
        Fut: Future<Output = Result<T, Error<E>>> + Send,
        T: Send,
        E: Send,
    {
        async move {
            // The fast path stays out of any inner future: a free slot is taken inline.
            let _slot = if self.slots.try_acquire() {
                Slot(&self.slots)
            } else {
                match acquire_queued(&self.slots, &self.options, &self.telemetry).await {
                    Ok(slot) => slot,
                    Err(_) => return Err(Error::BulkheadFull),
                }
            };
            op(ctx).await
        }
    }
}

/// One bulkhead per key (tenant, route): a noisy tenant fills its own slots, not the
/// others'. The key is the context's [`key`](Context::key); calls without one share a
/// default bulkhead.
///
/// At most `max_keys` keys are tracked; when a new key arrives at the limit, keys with no
/// call running or queued are evicted, and if none is idle the call is rejected — memory
/// stays bounded whatever keys callers send.
#[derive(Debug, Clone)]
pub struct KeyedBulkhead {
    options: BulkheadOptions,
    default: Arc<Slots>,
    by_key: Arc<Keyed<Slots>>,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl KeyedBulkhead {
    /// Per-key bulkheads with `options` each, for at most `max_keys` keys at once.
    pub fn new(options: BulkheadOptions, max_keys: usize) -> Result<Self, crate::ConfigError> {
        options.validate().map_err(|e| e.within("bulkhead"))?;
        Ok(KeyedBulkhead {
            options,
            default: Arc::new(Slots::new(options.max_concurrency)),
            by_key: Arc::new(Keyed::new(max_keys, "bulkhead.max_keys")?),
            telemetry: Telemetry::default(),
        })
    }

    /// How many keys are tracked now.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// The slots of `key`, created on first use; `None` when at `max_keys` with none idle.
    fn slots_for(&self, key: Option<&str>) -> Option<Arc<Slots>> {
        let Some(key) = key else {
            return Some(Arc::clone(&self.default));
        };
        // Idle: nothing running or queued.
        self.by_key.get_or_make(
            key,
            |s| s.in_use() == 0 && s.queued() == 0,
            || Slots::new(self.options.max_concurrency),
        )
    }
}

crate::pipeline::attach_telemetry!([] KeyedBulkhead);

impl<T, E> Strategy<T, E> for KeyedBulkhead {
    fn execute<F, Fut>(
        &self,
        ctx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send
    where
        F: Fn(Context) -> Fut + Copy + Send + Sync,
        Fut: Future<Output = Result<T, Error<E>>> + Send,
        T: Send,
        E: Send,
    {
        async move {
            let Some(slots) = self.slots_for(ctx.key()) else {
                return Err(Error::BulkheadFull);
            };
            let Ok(_slot) = acquire(&slots, &self.options, &self.telemetry).await else {
                return Err(Error::BulkheadFull);
            };
            op(ctx).await
        }
    }
}
