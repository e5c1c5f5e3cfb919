use super::slots::Slots;
use super::{Bulkhead, BulkheadOptions};
use crate::layer_future::ResponseFuture;
use crate::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// A bulkhead as a tower layer. `poll_ready` takes a slot: at once, or — with a queue —
/// after waiting its turn (backpressure). With no slot and no queue place, `poll_ready`
/// still answers ready and `call` fails fast with [`Error::BulkheadFull`] (tower's
/// load-shedding convention), so overload never turns into unbounded waiting.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer sharing `bulkhead`'s slots.
    pub fn new(bulkhead: Bulkhead) -> Self {
        BulkheadLayer { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            slots: self.bulkhead.slots(),
            options: *self.bulkhead.options(),
            state: State::Idle,
        }
    }
}

/// A slot owned by a service or a response; dropping it gives the slot back.
pub struct OwnedSlot(Arc<Slots>);

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl std::fmt::Debug for OwnedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnedSlot")
    }
}

type Wait = Pin<Box<dyn Future<Output = bool> + Send + Sync>>;

enum State {
    Idle,
    /// Queued for a slot; resolves to whether one was granted.
    Waiting(Wait),
    /// Holding a slot, taken in `poll_ready`, moved into the response by `call`.
    Holding(OwnedSlot),
    /// No slot and no queue place: `call` rejects.
    Shed,
}

/// The service [`BulkheadLayer`] makes.
pub struct BulkheadService<S> {
    inner: S,
    slots: Arc<Slots>,
    options: BulkheadOptions,
    state: State,
}

impl<S: std::fmt::Debug> std::fmt::Debug for BulkheadService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkheadService")
            .field("inner", &self.inner)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for BulkheadService<S> {
    // Not derived: a clone starts without the original's slot.
    fn clone(&self) -> Self {
        BulkheadService {
            inner: self.inner.clone(),
            slots: Arc::clone(&self.slots),
            options: self.options,
            state: State::Idle,
        }
    }
}

/// Waits in the queue for a slot, up to the queue timeout; `true` when granted.
fn wait_for_slot(slots: Arc<Slots>, options: BulkheadOptions) -> Wait {
    Box::pin(async move {
        let Some(mut place) = slots.enqueue(options.queue_limit) else {
            return false;
        };
        let granted = match options.queue_timeout {
            None => {
                place.granted().await;
                true
            }
            Some(timeout) => tokio::time::timeout(timeout, place.granted()).await.is_ok(),
        };
        drop(place); // leaves the queue, or gives back a slot granted too late
        granted
    })
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future, S::Error, OwnedSlot>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Holding(_) => return self.inner.poll_ready(cx).map_err(Error::Inner),
                State::Shed => return Poll::Ready(Ok(())),
                State::Waiting(wait) => {
                    let granted = std::task::ready!(wait.as_mut().poll(cx));
                    self.state = if granted {
                        State::Holding(OwnedSlot(Arc::clone(&self.slots)))
                    } else {
                        State::Shed
                    };
                }
                State::Idle => {
                    self.state = if self.slots.try_acquire() {
                        State::Holding(OwnedSlot(Arc::clone(&self.slots)))
                    } else if self.options.queue_limit > 0 {
                        State::Waiting(wait_for_slot(Arc::clone(&self.slots), self.options))
                    } else {
                        State::Shed
                    };
                }
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let slot = match std::mem::replace(&mut self.state, State::Idle) {
            State::Holding(slot) => slot,
            // Called without readiness: take a free slot now, or shed.
            _ if self.slots.try_acquire() => OwnedSlot(Arc::clone(&self.slots)),
            _ => return ResponseFuture::rejected(Error::BulkheadFull),
        };
        ResponseFuture::new(self.inner.call(request), Some(slot))
    }
}
