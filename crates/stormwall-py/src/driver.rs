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
//! strategies held (bulkhead slots, half-open probes), and the error is re-raised.

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
    waker: Arc<LoopWaker>,
}

/// The running event loop (`asyncio.get_running_loop()`).
fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET_RUNNING_LOOP
        .get_or_try_init(py, || {
            PyResult::Ok(
                PyModule::import(py, "asyncio")?
                    .getattr("get_running_loop")?
                    .unbind(),
            )
        })?
        .bind(py)
        .call0()
}

impl Execution {
    pub(crate) fn new(future: BoxedExecution) -> Self {
        Execution {
            future: Mutex::new(Some(future)),
            waker: Arc::new(LoopWaker {
                woken: AtomicBool::new(false),
                pending: Mutex::new(None),
                target: OnceLock::new(),
            }),
        }
    }

    fn step(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let loop_waker = &self.waker;
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
        loop_waker.woken.store(false, Ordering::SeqCst);
        let waker = Waker::from(Arc::clone(loop_waker));
        let mut cx = Context::from_waker(&waker);
        let (polled, aborted) = {
            let _runtime = runtime().enter();
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
                    Ok(value) => Err(PyStopIteration::new_err((value,))),
                    Err(e) => Err(to_py(py, e)),
                };
            }
            Err(panic) => {
                *slot = None;
                return Err(from_panic(py, panic));
            }
        }
        drop(slot);
        if loop_waker.woken.load(Ordering::SeqCst) {
            // Woken while polling: a bare yield, the task steps again on the next round.
            return Ok(py.None());
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
            return Ok(py.None());
        }
        Ok(wakeup.unbind())
    }

    /// Drops the Rust future (cancelling what runs) with the runtime entered.
    fn abandon(&self, py: Python<'_>) {
        let future = self.future.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = py;
        self.waker
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
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
        self.abandon(py);
        let _ = traceback;
        let exception = match value {
            Some(value) if !value.is_none() => value.clone(),
            _ if error.is_instance_of::<pyo3::types::PyType>() => error.call0()?,
            _ => error.clone(),
        };
        Err(PyErr::from_value(exception))
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
