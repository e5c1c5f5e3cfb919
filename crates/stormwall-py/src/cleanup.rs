//! The cleanup of cancelled attempts, driven to its end: a coroutine that awaits in its
//! `finally` block or `__aexit__` after `CancelledError` was thrown in is handed, with the
//! future it yielded, to `stormwall._cleanup.finish`, which drives it in a task of the loop.
//!
//! Attempts are dropped while the driver ([`Execution`](crate::driver::Execution)) polls or
//! abandons the pipeline's future, on the loop's thread: [`collecting`] gathers the cleanup
//! tasks started meanwhile, and the execution answers (its value, its error, or the
//! cancellation of the awaiting task) once they have all ended, as `asyncio.wait_for` and an
//! asyncio task do.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::cell::RefCell;

thread_local! {
    /// The cleanup tasks started during the current [`collecting`] call (`None`: none runs).
    static STARTED: RefCell<Option<Vec<Py<PyAny>>>> = const { RefCell::new(None) };
}

/// `iterator`, a cancelled coroutine, yielded `yielded` instead of ending: drive it to its
/// end (or close it when no loop runs).
pub(crate) fn hand_over(py: Python<'_>, iterator: &Bound<'_, PyAny>, yielded: &Bound<'_, PyAny>) {
    static FINISH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let task = crate::imported(py, &FINISH, "stormwall._cleanup", "finish")
        .and_then(|finish| finish.call1((iterator, yielded)));
    match task {
        Ok(task) if !task.is_none() => STARTED.with(|started| {
            if let Some(started) = started.borrow_mut().as_mut() {
                started.push(task.unbind());
            }
        }),
        Ok(_) => {}
        Err(e) => {
            e.write_unraisable(py, Some(iterator));
            if let Err(e) = iterator.call_method0(pyo3::intern!(py, "close")) {
                e.write_unraisable(py, Some(iterator));
            }
        }
    }
}

/// Runs `f`, and returns with its result the cleanup tasks started meanwhile.
pub(crate) fn collecting<R>(f: impl FnOnce() -> R) -> (R, Vec<Py<PyAny>>) {
    let outer = STARTED.with(|started| started.borrow_mut().replace(Vec::new()));
    let result = f();
    let started = STARTED.with(|started| std::mem::replace(&mut *started.borrow_mut(), outer));
    (result, started.unwrap_or_default())
}

/// A future done when every task of `tasks` is (for the awaiting task to wait on), or
/// `None` when they all are.
pub(crate) fn wait(py: Python<'_>, tasks: &[Py<PyAny>]) -> PyResult<Option<Py<PyAny>>> {
    static WAIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let waiter = crate::imported(py, &WAIT, "stormwall._cleanup", "wait")?
        .call1((pyo3::types::PyList::new(py, tasks)?,))?;
    Ok((!waiter.is_none()).then(|| waiter.unbind()))
}
