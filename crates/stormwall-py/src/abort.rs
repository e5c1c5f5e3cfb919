//! Errors that end an execution at once, whatever its strategies would make of them: an API
//! misused (`execute` given a function that returned no awaitable) and an exception raised
//! inside the user's own callbacks that steer the pipeline (`handle=` predicates,
//! `delay_generator=`).
//!
//! A strategy cannot carry them (a predicate answers a bool), so they travel beside the
//! pipeline's future: the code that meets one calls [`abort`], which keeps it for the thread
//! polling the execution, and the driver ([`polled`]) takes it after that poll, drops the
//! pipeline's future (cancelling what runs and releasing bulkhead slots and breaker permits,
//! which record nothing) and raises the error. So it is never retried, never handed to a
//! fallback, and never counted by a breaker as a failure of the operation.
//!
//! Every strategy's future is polled on the thread that drives the execution (the core
//! spawns none), so a thread-local slot reaches the right driver; [`polled`] keeps the
//! slot of an execution driven from inside a callback of another one apart.

use pyo3::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Set by [`abort`] during a poll; taken by [`polled`] right after it.
    static ABORTED: RefCell<Option<PyErr>> = const { RefCell::new(None) };
}

/// Ends the execution being polled on this thread with `error` (the first one wins).
pub(crate) fn abort(error: PyErr) {
    ABORTED.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(error);
        }
    });
}

/// Whether the execution being polled on this thread was aborted already.
pub(crate) fn aborted() -> bool {
    ABORTED.with(|slot| slot.borrow().is_some())
}

/// Runs `poll` (one poll of an execution's future) with a slot of its own; returns its
/// result and the error it was aborted with, if any.
pub(crate) fn polled<R>(poll: impl FnOnce() -> R) -> (R, Option<PyErr>) {
    let outer = ABORTED.with(|slot| slot.borrow_mut().take());
    let result = poll();
    let error = ABORTED.with(|slot| std::mem::replace(&mut *slot.borrow_mut(), outer));
    (result, error)
}
