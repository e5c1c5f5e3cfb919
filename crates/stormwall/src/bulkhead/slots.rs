//! The slots a bulkhead hands out: a counter for the fast path, a FIFO queue of waiters
//! behind a lock for the rest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::oneshot;

/// A counting semaphore with a bounded FIFO queue.
///
/// Acquiring and releasing while nobody waits is one atomic operation each and takes no
/// lock. A release that finds waiters hands its slot straight to the first of them, so a
/// queued call cannot be overtaken by a newcomer.
#[derive(Debug)]
pub(crate) struct Slots {
    max: u32,
    /// Slots taken, including those handed to waiters.
    in_use: AtomicU32,
    /// Waiters in `queue`; read lock-free by `release` to skip the lock when zero.
    queued: AtomicU32,
    queue: Mutex<VecDeque<Waiter>>,
    /// Set on each waiter so a cancelled one can find and remove itself.
    next_id: AtomicU32,
}

#[derive(Debug)]
struct Waiter {
    id: u32,
    grant: oneshot::Sender<()>,
}

impl Slots {
    pub(crate) fn new(max: u32) -> Self {
        Slots {
            max,
            in_use: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            queue: Mutex::new(VecDeque::new()),
            next_id: AtomicU32::new(0),
        }
    }

    pub(crate) fn in_use(&self) -> u32 {
        self.in_use.load(SeqCst)
    }

    pub(crate) fn queued(&self) -> u32 {
        self.queued.load(SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Waiter>> {
        // Every change under this lock is a single push or pop: a panic elsewhere cannot
        // leave the queue half-changed.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot if one is free and nobody is queued ahead.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        if self.queued.load(SeqCst) > 0 {
            return false;
        }
        let mut current = self.in_use.load(SeqCst);
        while current < self.max {
            match self
                .in_use
                .compare_exchange_weak(current, current + 1, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
        false
    }

    /// Gives a slot back; hands it to the first waiter if there is one.
    #[inline]
    pub(crate) fn release(&self) {
        self.in_use.fetch_sub(1, SeqCst);
        // Decrement first, look second: an enqueuer either sees the free slot or is seen.
        if self.queued.load(SeqCst) > 0 {
            self.dispatch(&mut self.lock());
        }
    }

    /// Hands free slots to waiters, first come first served. The caller holds the lock.
    fn dispatch(&self, queue: &mut VecDeque<Waiter>) {
        while !queue.is_empty() {
            let current = self.in_use.load(SeqCst);
            if current >= self.max {
                return;
            }
            if self
                .in_use
                .compare_exchange(current, current + 1, SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            let Some(waiter) = queue.pop_front() else {
                return;
            };
            self.queued.fetch_sub(1, SeqCst);
            if waiter.grant.send(()).is_err() {
                // The waiter gave up between its last check and now: the slot is free again.
                self.in_use.fetch_sub(1, SeqCst);
            }
        }
    }

    /// Joins the queue if it has room; `None` when it is full.
    pub(crate) fn enqueue(&self, queue_limit: u32) -> Option<QueuePlace<'_>> {
        let (grant, granted) = oneshot::channel();
        let id = self.next_id.fetch_add(1, SeqCst);
        let mut queue = self.lock();
        if queue.len() >= queue_limit as usize {
            return None;
        }
        self.queued.fetch_add(1, SeqCst);
        queue.push_back(Waiter { id, grant });
        // A slot may have been freed between the failed fast path and now.
        self.dispatch(&mut queue);
        Some(QueuePlace {
            slots: self,
            id,
            granted: Some(granted),
        })
    }
}

/// A place in the queue. Await [`granted`](Self::granted) for the slot; dropped before
/// that (a cancelled or timed-out caller), it leaves the queue, and gives back a slot that
/// was granted but not yet taken.
pub(crate) struct QueuePlace<'a> {
    slots: &'a Slots,
    id: u32,
    /// Taken when the grant arrives.
    granted: Option<oneshot::Receiver<()>>,
}

impl QueuePlace<'_> {
    /// Waits for the slot. Once it returns, the caller owns the slot.
    pub(crate) async fn granted(&mut self) {
        if let Some(granted) = self.granted.as_mut() {
            // The sender is dropped only after a send or on removal by our own `Drop`: an
            // error cannot happen while we wait, but either way we stop waiting.
            let _ = granted.await;
        }
        self.granted = None;
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        let Some(mut granted) = self.granted.take() else {
            return; // the caller took the slot
        };
        let mut queue = self.slots.lock();
        if let Some(index) = queue.iter().position(|w| w.id == self.id) {
            queue.remove(index);
            self.slots.queued.fetch_sub(1, SeqCst);
            return;
        }
        drop(queue);
        // Not in the queue: granted a slot we will not use.
        if granted.try_recv().is_ok() {
            self.slots.release();
        }
    }
}

/// A taken slot; dropping it gives the slot back.
pub(crate) struct Slot<'a>(pub(crate) &'a Slots);

impl Drop for Slot<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.release();
    }
}
