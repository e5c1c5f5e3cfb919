//! One attempt of the operation, as the Rust future the strategies run.
//!
//! [`PyAttempt`] calls the coroutine function and steps the coroutine on the event loop's
//! thread, as an asyncio task would: it sends `None` into it, and when the coroutine yields
//! a future it waits on, it asks that future to wake the pipeline when it is done. Dropping
//! the attempt (a timeout, a losing hedge, a cancelled caller) cancels the future it waits
//! on and throws `CancelledError` into the coroutine, so its `finally` blocks run, to their
//! end even when they await (see `cleanup`).
//!
//! [`SyncAttempt`] calls a plain function: inline, or on a blocking thread when the pipeline
//! may have to give up on it (a timeout or hedging), Polly's "pessimistic" mode.

use crate::abort::{abort, aborted};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::iterator::PySendResult;
use pyo3::types::{PyDict, PyIterator, PyTuple};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

/// The operation and its arguments, called once per attempt.
pub(crate) struct Call {
    pub(crate) func: Py<PyAny>,
    pub(crate) args: Py<PyTuple>,
    pub(crate) kwargs: Option<Py<PyDict>>,
    /// The caller's `contextvars` context, copied when `execute_sync` started: attempts on a
    /// worker thread run in a copy of it (`None`: attempts run on the caller's thread, in
    /// its context already).
    pub(crate) context: Option<Py<PyAny>>,
}

impl Call {
    fn call<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.func
            .bind(py)
            .call(self.args.bind(py), self.kwargs.as_ref().map(|k| k.bind(py)))
    }

    /// The call on a worker thread: `context.copy().run(func, *args, **kwargs)`, a copy per
    /// attempt (hedged attempts run at once, and a context runs on one thread at a time),
    /// as asyncio gives each task a copy.
    fn call_in_context<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let Some(context) = &self.context else {
            return self.call(py);
        };
        let copy = context.bind(py).call_method0(intern!(py, "copy"))?;
        let mut args = Vec::with_capacity(self.args.bind(py).len() + 1);
        args.push(self.func.bind(py).clone());
        args.extend(self.args.bind(py).iter());
        copy.call_method(
            intern!(py, "run"),
            PyTuple::new(py, args)?,
            self.kwargs.as_ref().map(|k| k.bind(py)),
        )
    }
}

/// The waker a coroutine's awaited future wakes when done: the latest one the attempt was
/// polled with (a future may be polled with a different waker each time).
#[pyclass(frozen)]
struct WakeOnDone {
    waker: Arc<Mutex<Waker>>,
}

#[pymethods]
impl WakeOnDone {
    fn __call__(&self, _future: &Bound<'_, PyAny>) {
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        waker.wake();
    }
}

/// `asyncio.CancelledError`.
fn cancelled_error(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    crate::imported(py, &CLASS, "asyncio", "CancelledError")?.call0()
}

/// A coroutine function's attempt.
pub(crate) struct PyAttempt {
    /// `None` when made from a running awaitable.
    call: Option<Arc<Call>>,
    /// The coroutine's `__await__` iterator: made at the first poll, dropped when done.
    running: Option<Py<PyIterator>>,
    /// The future the coroutine waits on, set when it yields one, taken when it is done.
    waiting: Option<Py<PyAny>>,
    /// Shared with the done-callback of `waiting`.
    waker: Option<Arc<Mutex<Waker>>>,
    /// What to call the operation in errors (`func` or `the fallback handler`).
    role: &'static str,
    /// Whether what the coroutine yields is passed up to the awaiting task (a direct
    /// execution, see `Execution::direct`) instead of waited on here.
    transparent: bool,
}

impl PyAttempt {
    pub(crate) fn new(call: Arc<Call>) -> Self {
        Self::with_role(call, "func")
    }

    /// The attempt of a direct execution (see `Execution::direct`).
    pub(crate) fn transparent(call: Arc<Call>) -> Self {
        let mut attempt = Self::new(call);
        attempt.transparent = true;
        attempt
    }

    pub(crate) fn with_role(call: Arc<Call>, role: &'static str) -> Self {
        PyAttempt {
            call: Some(call),
            running: None,
            waiting: None,
            waker: None,
            role,
            transparent: false,
        }
    }

    /// Steps an awaitable that was already made (a fallback handler's).
    pub(crate) fn running(iterator: Py<PyIterator>, role: &'static str) -> Self {
        PyAttempt {
            call: None,
            running: Some(iterator),
            waiting: None,
            waker: None,
            role,
            transparent: false,
        }
    }

    /// Calls the operation: `Ready(Ok(iterator))` of the awaitable it returned, or
    /// `Ready(Err(e))` when it raised (an outcome the strategies judge). When it returned
    /// something that is not awaitable, the execution is aborted with a `TypeError` naming
    /// the argument (see `abort`): `Pending`, never woken, and never retried.
    fn start<'py>(&self, py: Python<'py>) -> Poll<PyResult<Bound<'py, PyIterator>>> {
        let Some(call) = &self.call else {
            return Poll::Ready(Err(PyRuntimeError::new_err(format!(
                "{} was already awaited",
                self.role
            ))));
        };
        if !self.transparent && aborted() {
            // A hedge started beside the attempt that found the misuse: do not call again
            // (a direct execution has one attempt).
            return Poll::Pending;
        }
        let awaitable = match call.call(py) {
            Ok(awaitable) => awaitable,
            Err(e) => return Poll::Ready(Err(e)),
        };
        match iterator_of(py, &awaitable, self.role) {
            Ok(iterator) => Poll::Ready(Ok(iterator)),
            Err(misuse) => {
                abort(misuse);
                Poll::Pending
            }
        }
    }

    fn step(&mut self, py: Python<'_>, cx: &mut Context<'_>) -> Poll<PyResult<Py<PyAny>>> {
        if let Some(future) = &self.waiting {
            match future
                .bind(py)
                .call_method0(intern!(py, "done"))
                .and_then(|d| d.is_truthy())
            {
                Ok(false) => {
                    self.remember(cx);
                    return Poll::Pending;
                }
                Ok(true) => self.waiting = None,
                Err(e) => return self.finish(Err(e)),
            }
        }
        let iterator = match &self.running {
            Some(it) => it.bind(py).clone(),
            None => match self.start(py) {
                Poll::Ready(Ok(it)) => {
                    self.running = Some(it.clone().unbind());
                    it
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            },
        };
        match iterator.send(&py.None().into_bound(py)) {
            Ok(PySendResult::Return(value)) => self.finish(Ok(value.unbind())),
            Err(e) => self.finish(Err(e)),
            Ok(PySendResult::Next(yielded)) => {
                if self.transparent {
                    // The task waits on it and resumes the execution when it is done.
                    crate::driver::pass_up(yielded.unbind());
                    return Poll::Pending;
                }
                if yielded.is_none() {
                    // A bare `yield` (asyncio.sleep(0)): run again on the next round.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                match self.wait_on(py, &yielded, cx) {
                    Ok(()) => Poll::Pending,
                    Err(e) => self.finish(Err(e)),
                }
            }
        }
    }

    /// The coroutine awaits `future`: wake the pipeline when it is done (what an asyncio
    /// task does with the futures its coroutine yields).
    fn wait_on(
        &mut self,
        py: Python<'_>,
        future: &Bound<'_, PyAny>,
        cx: &mut Context<'_>,
    ) -> PyResult<()> {
        let blocking = intern!(py, "_asyncio_future_blocking");
        match future.getattr(blocking) {
            Ok(flag) if flag.is_truthy()? => future.setattr(blocking, false)?,
            _ => {
                return Err(PyRuntimeError::new_err(format!(
                    "the coroutine of {} yielded {} instead of awaiting an asyncio future",
                    self.role,
                    future.repr()?
                )))
            }
        }
        let waker = Arc::new(Mutex::new(cx.waker().clone()));
        future.call_method1(
            intern!(py, "add_done_callback"),
            (WakeOnDone {
                waker: Arc::clone(&waker),
            },),
        )?;
        self.waker = Some(waker);
        self.waiting = Some(future.clone().unbind());
        Ok(())
    }

    /// Keeps the latest waker for the done-callback.
    fn remember(&self, cx: &Context<'_>) {
        if let Some(waker) = &self.waker {
            let mut slot = waker.lock().unwrap_or_else(|e| e.into_inner());
            if !slot.will_wake(cx.waker()) {
                *slot = cx.waker().clone();
            }
        }
    }

    fn finish(&mut self, outcome: PyResult<Py<PyAny>>) -> Poll<PyResult<Py<PyAny>>> {
        self.running = None;
        self.waiting = None;
        self.waker = None;
        Poll::Ready(outcome)
    }

    /// Cancels the coroutine as asyncio would: the future it waits on is cancelled and
    /// `CancelledError` is thrown in, so `finally` blocks and `async with` exits run; one
    /// that awaits in them is driven on to its end (see `cleanup`).
    fn cancel(&mut self, py: Python<'_>) {
        let Some(iterator) = self.running.take() else {
            return;
        };
        if let Some(future) = self.waiting.take() {
            if let Err(e) = future.bind(py).call_method0(intern!(py, "cancel")) {
                e.write_unraisable(py, None);
            }
        }
        let iterator = iterator.bind(py);
        let thrown = cancelled_error(py)
            .and_then(|error| iterator.call_method1(intern!(py, "throw"), (error,)));
        // An error (CancelledError, StopIteration, its own) means it has ended; an answer
        // means its cleanup awaits (a `finally` block, an `__aexit__`): it is driven to its
        // end in a task of the loop, which the execution waits for (see `cleanup`).
        if let Ok(yielded) = thrown {
            crate::cleanup::hand_over(py, iterator.as_any(), &yielded);
        }
    }
}

impl Future for PyAttempt {
    type Output = PyResult<Py<PyAny>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        Python::attach(|py| this.step(py, cx))
    }
}

impl Drop for PyAttempt {
    fn drop(&mut self) {
        if self.running.is_some() {
            Python::attach(|py| self.cancel(py));
        }
    }
}

/// The iterator that drives `awaitable` (a coroutine or anything with `__await__`), or a
/// `TypeError` saying that `role` had to return one.
pub(crate) fn iterator_of<'py>(
    py: Python<'py>,
    awaitable: &Bound<'py, PyAny>,
    role: &str,
) -> PyResult<Bound<'py, PyIterator>> {
    if awaitable.get_type().is(coroutine_type(py)?) {
        // SAFETY: the `PyIterator` is only ever used through `send` (`PyIter_Send`), which a
        // native coroutine answers through its `am_send` slot, and through the methods
        // `throw` and `close`, which it has: never as an iterator (it has no `__next__`).
        // Sent to directly, it hands its value back as a return, where its `__await__`
        // wrapper raises `StopIteration(value)`: the success path saves that exception.
        #[allow(unsafe_code)]
        return Ok(unsafe { awaitable.clone().cast_into_unchecked::<PyIterator>() });
    }
    let Ok(iterator) = awaitable.call_method0(intern!(py, "__await__")) else {
        return Err(PyTypeError::new_err(format!(
            "{role} must be a coroutine function (async def) or return an awaitable; it returned {} \
             (use execute_sync for plain functions)",
            awaitable.get_type().name()?
        )));
    };
    Ok(iterator.cast_into::<PyIterator>()?)
}

/// A plain function's attempt.
pub(crate) enum SyncAttempt {
    /// Called on the first poll, on the calling thread.
    Inline(Option<Arc<Call>>),
    /// Running on a blocking thread; dropping it abandons the call (its result is ignored).
    Blocking(tokio::task::JoinHandle<PyResult<Py<PyAny>>>),
}

/// Plain functions running on a blocking thread, abandoned ones included. The interpreter
/// waits for them at exit ([`wait_for_running_calls`], registered with `atexit`), as it waits
/// for non-daemon threads: a call that returned into an interpreter being finalized aborted
/// the process (`PyGILState_Release: thread state must be current`).
static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// One call counted in [`RUNNING`] while it lives.
struct Running;

impl Running {
    fn start() -> Self {
        *RUNNING.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = RUNNING.0.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        if *running == 0 {
            RUNNING.1.notify_all();
        }
    }
}

/// Waits, without the GIL, until no plain function runs on a blocking thread (run at exit).
#[pyfunction]
pub(crate) fn wait_for_running_calls(py: Python<'_>) {
    py.detach(|| {
        let mut running = RUNNING.0.lock().unwrap_or_else(|e| e.into_inner());
        while *running > 0 {
            running = RUNNING.1.wait(running).unwrap_or_else(|e| e.into_inner());
        }
    });
}

impl SyncAttempt {
    pub(crate) fn new(call: Arc<Call>, blocking: bool) -> Self {
        if blocking {
            let running = Running::start();
            SyncAttempt::Blocking(tokio::task::spawn_blocking(move || {
                let _running = running;
                Python::attach(|py| call.call_in_context(py).map(Bound::unbind))
            }))
        } else {
            SyncAttempt::Inline(Some(call))
        }
    }
}

impl Future for SyncAttempt {
    type Output = PyResult<Py<PyAny>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            SyncAttempt::Inline(call) => {
                let Some(call) = call.take() else {
                    return Poll::Pending;
                };
                Python::attach(|py| match call.call(py) {
                    Ok(value) => not_a_coroutine(py, value),
                    Err(e) => Poll::Ready(Err(e)),
                })
            }
            SyncAttempt::Blocking(handle) => match Pin::new(handle).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(Ok(value))) => {
                    Python::attach(|py| not_a_coroutine(py, value.into_bound(py)))
                }
                Poll::Ready(Ok(Err(e))) => Poll::Ready(Err(e)),
                Poll::Ready(Err(join)) => Poll::Ready(Err(PyRuntimeError::new_err(format!(
                    "the function's thread failed: {join}"
                )))),
            },
        }
    }
}

/// `value`, what a plain function's attempt returned; a coroutine (an `async def` given to
/// `execute_sync`) is closed unrun and aborts the execution with a `TypeError` naming the
/// argument (never retried: see `abort`).
fn not_a_coroutine(py: Python<'_>, value: Bound<'_, PyAny>) -> Poll<PyResult<Py<PyAny>>> {
    match coroutine_type(py) {
        Ok(class) if value.get_type().is(class) => {
            if let Err(e) = value.call_method0(intern!(py, "close")) {
                e.write_unraisable(py, Some(&value));
            }
            abort(PyTypeError::new_err(
                "func must be a plain function for execute_sync; it is a coroutine function \
                 (async def): use `await pipeline.execute(func)`",
            ));
            Poll::Pending
        }
        _ => Poll::Ready(Ok(value.unbind())),
    }
}

/// `types.CoroutineType`, the class of what calling an `async def` returns.
fn coroutine_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static COROUTINE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    crate::imported(py, &COROUTINE, "types", "CoroutineType")
}
