//! `fallback(value=..)` and `fallback(handler=..)`: what a handled failure is replaced with.

use crate::attempt::PyAttempt;
use crate::chain::BoxFuture;
use crate::errors::{exception_of, fallback_error, Outcome};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use stormwall::fallback::FallbackAction;
use stormwall::Error;

thread_local! {
    /// Set while `execute_sync` drives a pipeline on this thread: a handler must then
    /// answer at once (it cannot return a coroutine).
    static SYNC: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the thread marked as driving a synchronous execution.
pub(crate) fn in_sync_mode<R>(f: impl FnOnce() -> R) -> R {
    let before = SYNC.with(|s| s.replace(true));
    let result = f();
    SYNC.with(|s| s.set(before));
    result
}

/// The fallback's answer.
#[derive(Clone)]
pub(crate) enum PyFallback {
    /// This value (the same object every time).
    Value(Arc<Py<PyAny>>),
    /// What `handler(exception)` returns, awaited when it is awaitable.
    Handler(Arc<Py<PyAny>>),
}

impl FallbackAction<Py<PyAny>, PyErr> for PyFallback {
    fn fallback(&self, outcome: Outcome) -> impl Future<Output = Outcome> + Send {
        let answer: BoxFuture<'static> = match outcome {
            Ok(value) => Box::pin(std::future::ready(Ok(value))),
            Err(error) => Python::attach(|py| match self {
                PyFallback::Value(value) => {
                    Box::pin(std::future::ready(Ok(value.clone_ref(py)))) as BoxFuture<'static>
                }
                PyFallback::Handler(handler) => handle(py, handler, &error),
            }),
        };
        answer
    }
}

fn handle(py: Python<'_>, handler: &Py<PyAny>, error: &Error<PyErr>) -> BoxFuture<'static> {
    let original = exception_of(py, error);
    let failed = |cause: PyErr| -> BoxFuture<'static> {
        let e = fallback_error(py, &original, cause);
        Box::pin(std::future::ready(Err(Error::Inner(e))))
    };
    let answer = match handler.bind(py).call1((original.clone(),)) {
        Ok(answer) => answer,
        Err(cause) => return failed(cause),
    };
    if !answer
        .hasattr(pyo3::intern!(py, "__await__"))
        .unwrap_or(false)
    {
        return Box::pin(std::future::ready(Ok(answer.unbind())));
    }
    if SYNC.with(Cell::get) {
        let _ = answer.call_method0("close");
        return failed(PyTypeError::new_err(
            "the fallback handler returned an awaitable, but execute_sync runs plain functions: \
             give it a plain function",
        ));
    }
    let iterator = match crate::attempt::iterator_of(py, &answer, "the fallback handler") {
        Ok(it) => it,
        Err(cause) => return failed(cause),
    };
    let attempt = PyAttempt::running(iterator.unbind(), "the fallback handler");
    let original = original.unbind();
    Box::pin(async move {
        match attempt.await {
            Ok(value) => Ok(value),
            Err(cause) => {
                Python::attach(|py| Err(Error::Inner(fallback_error(py, original.bind(py), cause))))
            }
        }
    })
}
