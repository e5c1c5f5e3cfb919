//! `await pipeline.execute(..)`: the pipeline's future, polled inside the awaiting asyncio
//! task.
//!
//! [`Execution`] is the awaitable. Each time the task steps it, it polls the Rust future on
//! the loop's thread (inside the tokio runtime's context, so timers register with the
//! background runtime). When the future is pending, the task is handed a fresh asyncio
//! future that [`LoopWaker`] resolves when the Rust side wakes: directly when woken on the
//! loop's thread (a coroutine's awaited future completed), through
//! `call_soon_threadsafe` when woken from the runtime's thread (a timer fired).
//!
//! Cancelling the task throws `CancelledError` into the awaitable: the Rust future is
//! dropped, which cancels the running attempts (see `attempt`) and releases what the
//! strategies held (bulkhead slots, half-open probes), and the error is re-raised once the
//! cancelled coroutines' cleanups have ended (see `cleanup`).

use crate::errors::{from_panic, to_py, Outcome};
use crate::runtime::runtime;
use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;

/// The pipeline's future for one execution.
pub(crate) type BoxedExecution = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Wakes the task that awaits an [`Execution`].
struct LoopWaker {
    /// Set by every wake; cleared before each poll.
    woken: AtomicBool,
    /// The asyncio future the task waits on while the Rust future is pending.
    pending: Mutex<Option<Py<PyAny>>>,
    /// The task's event loop and its thread: looked up at the first pending poll (an
    /// execution that completes in its first poll, the success path, never needs them).
    target: OnceLock<(Py<PyAny>, ThreadId)>,
}

#[pyfunction]
fn resolve(future: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = future.py();
    if !future.call_method0(intern!(py, "done"))?.is_truthy()? {
        future.call_method1(intern!(py, "set_result"), (py.None(),))?;
    }
    Ok(())
}

/// `resolve` as a Python callable, for `call_soon_threadsafe`.
fn resolver(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    RESOLVE.get_or_try_init(py, || {
        Ok(wrap_pyfunction!(resolve, py)?.into_any().unbind())
    })
}

impl Wake for LoopWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        let Some(future) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        // `pending` is only ever set after `target`.
        let Some((event_loop, loop_thread)) = self.target.get() else {
            return;
        };
        Python::attach(|py| {
            let result = if std::thread::current().id() == *loop_thread {
                resolve(future.bind(py))
            } else {
                resolver(py).and_then(|resolve| {
                    event_loop
                        .bind(py)
                        .call_method1(intern!(py, "call_soon_threadsafe"), (resolve, future))
                        .map(drop)
                })
            };
            if let Err(e) = result {
                // The loop is closed, most likely: nobody is left to wake.
                e.write_unraisable(py, None);
            }
        });
    }
}

/// The awaitable `pipeline.execute(..)` returns (a coroutine-like iterator: `__await__`,
/// `send`, `throw`, `close`).
#[pyclass(frozen, module = "stormwall._stormwall")]
pub(crate) struct Execution {
    /// `None` once finished (or cancelled).
    future: Mutex<Option<BoxedExecution>>,
    /// `None` for a direct execution (see [`Execution::direct`]).
    waker: Option<Arc<LoopWaker>>,
    /// The cleanups of cancelled attempts still running (see `cleanup`), and the answer
    /// kept until they have ended.
    cleanup: Mutex<Cleanup>,
    /// Whether `cleanup` holds anything (the success path looks at nothing else).
    cleaning: AtomicBool,
}

/// What an execution waits for before it answers.
#[derive(Default)]
struct Cleanup {
    /// Tasks driving cancelled attempts' coroutines to their end.
    tasks: Vec<Py<PyAny>>,
    /// The execution's answer, kept while `tasks` run.
    answer: Option<PyResult<Py<PyAny>>>,
}

thread_local! {
    /// What a direct execution's coroutine yielded during the poll running on this thread
    /// (set by [`pass_up`], taken by the driver right after the poll).
    static YIELDED: std::cell::RefCell<Option<Py<PyAny>>> = const { std::cell::RefCell::new(None) };
}

/// A direct execution's coroutine yielded `future` (an asyncio future it waits on, or
/// `None`): the driver hands it to the awaiting task, as `await` hands a coroutine's.
pub(crate) fn pass_up(future: Py<PyAny>) {
    YIELDED.with(|slot| *slot.borrow_mut() = Some(future));
}

/// What a poll of an execution gives the awaiting task.
enum Step {
    /// The pipeline's value.
    Done(Py<PyAny>),
    /// What to wait on (an asyncio future; `None`: step again on the next round).
    Wait(Py<PyAny>),
}

/// The running event loop (`asyncio.get_running_loop()`).
fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    crate::imported(py, &GET_RUNNING_LOOP, "asyncio", "get_running_loop")?.call0()
}

impl Execution {
    pub(crate) fn new(future: BoxedExecution) -> Self {
        Self::with_waker(
            future,
            Some(Arc::new(LoopWaker {
                woken: AtomicBool::new(false),
                pending: Mutex::new(None),
                target: OnceLock::new(),
            })),
        )
    }

    fn with_waker(future: BoxedExecution, waker: Option<Arc<LoopWaker>>) -> Self {
        Execution {
            future: Mutex::new(Some(future)),
            waker,
            cleanup: Mutex::new(Cleanup::default()),
            cleaning: AtomicBool::new(false),
        }
    }

    /// An execution whose future waits on nothing but its coroutine (a pipeline of one
    /// in-memory circuit breaker: no timer, no other attempt): its attempt is a
    /// `PyAttempt::transparent`, which passes whatever the coroutine yields up to the
    /// awaiting task ([`pass_up`]), so the task waits on the coroutine's own future and
    /// resumes the execution when it is done, as it would the coroutine awaited directly.
    /// Nothing else wakes it: no waker, no future of ours, no `call_soon_threadsafe`.
    pub(crate) fn direct(future: BoxedExecution) -> Self {
        Self::with_waker(future, None)
    }

    /// `__next__` and `send`: the value as `StopIteration(value)`, as a coroutine's
    /// iterator returns it (`am_send`, the path `await` takes, returns it directly).
    fn step(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.advance(py)? {
            Step::Done(value) => Err(PyStopIteration::new_err((value,))),
            Step::Wait(future) => Ok(future),
        }
    }

    /// Polls the pipeline's future once; its answer waits until the cleanups of the
    /// attempts it cancelled have ended (see `cleanup`).
    fn advance(&self, py: Python<'_>) -> PyResult<Step> {
        if self.cleaning.load(Ordering::Relaxed) {
            let mut cleanup = self.cleanup.lock().unwrap_or_else(|e| e.into_inner());
            if cleanup.answer.is_some() {
                return self.answer(py, &mut cleanup);
            }
        }
        let (step, started) = crate::cleanup::collecting(|| self.poll_once(py));
        if started.is_empty() && !self.cleaning.load(Ordering::Relaxed) {
            return step;
        }
        let mut cleanup = self.cleanup.lock().unwrap_or_else(|e| e.into_inner());
        cleanup.tasks.extend(started);
        self.cleaning.store(true, Ordering::Relaxed);
        cleanup.answer = match step {
            Ok(Step::Wait(future)) => return Ok(Step::Wait(future)),
            Ok(Step::Done(value)) => Some(Ok(value)),
            Err(e) => Some(Err(e)),
        };
        self.answer(py, &mut cleanup)
    }

    /// The kept answer once the cleanups have ended; until then a future to wait on.
    fn answer(&self, py: Python<'_>, cleanup: &mut Cleanup) -> PyResult<Step> {
        if let Some(waiter) = crate::cleanup::wait(py, &cleanup.tasks)? {
            return Ok(Step::Wait(waiter));
        }
        cleanup.tasks.clear();
        self.cleaning.store(false, Ordering::Relaxed);
        match cleanup.answer.take() {
            Some(Ok(value)) => Ok(Step::Done(value)),
            Some(Err(e)) => Err(e),
            None => Err(PyRuntimeError::new_err(
                "cannot await an execution that has finished; call execute again",
            )),
        }
    }

    /// Polls the pipeline's future once.
    fn poll_once(&self, py: Python<'_>) -> PyResult<Step> {
        let Ok(mut slot) = self.future.try_lock() else {
            return Err(PyRuntimeError::new_err(
                "this execution is being awaited elsewhere",
            ));
        };
        let Some(future) = slot.as_mut() else {
            return Err(PyRuntimeError::new_err(
                "cannot await an execution that has finished; call execute again",
            ));
        };
        let waker = match &self.waker {
            Some(loop_waker) => {
                loop_waker.woken.store(false, Ordering::SeqCst);
                Waker::from(Arc::clone(loop_waker))
            }
            None => Waker::noop().clone(),
        };
        let mut cx = Context::from_waker(&waker);
        let (polled, aborted) = {
            // A direct execution has no timer to register: it needs no runtime context.
            let _runtime = self.waker.as_ref().map(|_| runtime().enter());
            crate::abort::polled(|| {
                std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)))
            })
        };
        if let Some(error) = aborted {
            // Dropping the future cancels what runs and releases what the strategies hold.
            let _runtime = runtime().enter();
            *slot = None;
            return Err(error);
        }
        match polled {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(outcome)) => {
                *slot = None;
                return match outcome {
                    Ok(value) => Ok(Step::Done(value)),
                    Err(e) => Err(to_py(py, e)),
                };
            }
            Err(panic) => {
                *slot = None;
                return Err(from_panic(py, panic));
            }
        }
        drop(slot);
        let Some(loop_waker) = &self.waker else {
            // Direct: the task waits on what the coroutine yielded (`None`: a bare yield).
            let yielded = YIELDED.with(|slot| slot.borrow_mut().take());
            return Ok(Step::Wait(yielded.unwrap_or_else(|| py.None())));
        };
        if loop_waker.woken.load(Ordering::SeqCst) {
            // Woken while polling: a bare yield, the task steps again on the next round.
            return Ok(Step::Wait(py.None()));
        }
        if loop_waker.target.get().is_none() {
            let event_loop = running_loop(py)?.unbind();
            let _ = loop_waker
                .target
                .set((event_loop, std::thread::current().id()));
        }
        let Some((event_loop, _)) = loop_waker.target.get() else {
            return Err(PyRuntimeError::new_err("no event loop to wait on"));
        };
        let wakeup = event_loop
            .bind(py)
            .call_method0(intern!(py, "create_future"))?;
        wakeup.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        *loop_waker.pending.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(wakeup.clone().unbind());
        if loop_waker.woken.load(Ordering::SeqCst) {
            // Woken from the runtime's thread meanwhile: the waker may have missed the
            // future; step again on the next round.
            loop_waker
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            return Ok(Step::Wait(py.None()));
        }
        Ok(Step::Wait(wakeup.unbind()))
    }

    /// Drops the Rust future (cancelling what runs) with the runtime entered.
    fn abandon(&self, py: Python<'_>) {
        let future = self.future.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = py;
        if let Some(loop_waker) = &self.waker {
            loop_waker
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        let _runtime = runtime().enter();
        drop(future);
    }
}

#[pymethods]
impl Execution {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    /// The task resumes the awaitable (asyncio always sends `None`).
    fn send(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let _ = value;
        self.step(py)
    }

    /// The task was cancelled (or an exception thrown in): cancel what runs, re-raise.
    #[pyo3(signature = (error, value=None, traceback=None))]
    fn throw(
        &self,
        py: Python<'_>,
        error: &Bound<'_, PyAny>,
        value: Option<&Bound<'_, PyAny>>,
        traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let ((), started) = crate::cleanup::collecting(|| self.abandon(py));
        let _ = traceback;
        let exception = match value {
            Some(value) if !value.is_none() => value.clone(),
            _ if error.is_instance_of::<pyo3::types::PyType>() => error.call0()?,
            _ => error.clone(),
        };
        let error = PyErr::from_value(exception);
        let mut cleanup = self.cleanup.lock().unwrap_or_else(|e| e.into_inner());
        cleanup.tasks.extend(started);
        let waiter = if cleanup.answer.take().is_some() {
            // Cancelled again while waiting for the cleanups: they go on in their tasks.
            None
        } else {
            crate::cleanup::wait(py, &cleanup.tasks)?
        };
        match waiter {
            Some(waiter) => {
                // As an asyncio task does, the cancellation is raised once the cancelled
                // coroutines' cleanups have ended.
                cleanup.answer = Some(Err(error));
                self.cleaning.store(true, Ordering::Relaxed);
                Ok(waiter)
            }
            None => {
                cleanup.tasks.clear();
                self.cleaning.store(false, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// The awaiting coroutine was closed: cancel what runs.
    fn close(&self, py: Python<'_>) {
        self.abandon(py);
    }
}

/// An execution whose future panics when polled: shows (in the tests) that a Rust panic
/// reaches Python as `stormwall.InternalError`, not as a crash.
#[pyfunction]
#[pyo3(name = "_panicking_execution")]
pub(crate) fn panicking_execution() -> Execution {
    Execution::new(Box::pin(async { panic!("deliberate panic for the tests") }))
}

/// Gives `Execution` an `am_send` slot (PyO3 has no way to declare one): `await` then steps it
/// through `PyIter_Send`, which takes the value back as a return, where `__next__` has to
/// raise `StopIteration(value)` and the awaiting frame to catch it. That exception was the
/// largest single cost of an `await pipeline.execute(..)` that succeeds at once (see the
/// README's Performance section for the figures).
#[allow(unsafe_code)]
pub(crate) fn install_send_slot(py: Python<'_>) -> PyResult<()> {
    let class = py.get_type::<Execution>();
    let class = class.as_type_ptr();
    // SAFETY: `class` is the live type object PyO3 made for `Execution` with
    // `PyType_FromSpec`: a heap type, whose `tp_as_async` points at its own `as_async`
    // table (never shared with another type, never null). The extension module is being
    // initialized, before any `Execution` exists, with the GIL held.
    unsafe {
        let table = (*class).tp_as_async;
        if table.is_null() {
            return Err(PyRuntimeError::new_err("Execution has no async slots"));
        }
        (*table).am_send = Some(execution_send);
    }
    Ok(())
}

/// `am_send` of `Execution`: one step of the awaiting task, as `Execution::step`.
#[allow(unsafe_code)]
unsafe extern "C" fn execution_send(
    slf: *mut pyo3::ffi::PyObject,
    _arg: *mut pyo3::ffi::PyObject,
    result: *mut *mut pyo3::ffi::PyObject,
) -> pyo3::ffi::PySendResult {
    // CPython calls `am_send` with the GIL held; `attach` tells PyO3 so (references
    // dropped inside are then released at once, not deferred to its pool).
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        Python::attach(|py| {
            // SAFETY: `slf` is a live object (of the type the slot was installed on,
            // checked again by `cast`), borrowed for the call.
            let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
            let stepped = slf
                .cast::<Execution>()
                .map_err(PyErr::from)
                .and_then(|execution| execution.get().advance(py));
            let (status, value) = match stepped {
                Ok(Step::Done(value)) => (pyo3::ffi::PySendResult::PYGEN_RETURN, value.into_ptr()),
                Ok(Step::Wait(future)) => (pyo3::ffi::PySendResult::PYGEN_NEXT, future.into_ptr()),
                Err(error) => {
                    error.restore(py);
                    (pyo3::ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
                }
            };
            // SAFETY: `result` is CPython's valid out-pointer; it takes over the reference.
            unsafe { *result = value };
            status
        })
    }))
    .unwrap_or_else(|_| {
        // `advance` catches the pipeline's panics; one here is PyO3's (it could not
        // attach): no exception can be set without the interpreter, so abort as
        // unwinding into CPython would.
        std::process::abort()
    })
}
