//! `handle=`: which outcomes a strategy acts on, and `retry_after=` / `delay_generator=`:
//! what replaces a retry's computed delay. Both look at the exception the caller would see.

use crate::abort::abort;
use crate::errors::{config_error, exception_of, Outcome};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};
use std::time::Duration;
use stormwall::pipeline::Predicate;
use stormwall::retry::DelayGenerator;
use stormwall::Error;

/// Which failures a strategy handles.
#[derive(Debug)]
enum Rule {
    /// Every `Exception` (never a `BaseException` such as `CancelledError` or
    /// `KeyboardInterrupt`); with `transient`, not the rejections of other strategies
    /// (open circuit, full bulkhead, rate limit, budget) — the retry strategy's default,
    /// as in Rust.
    Default { transient: bool },
    /// Exceptions that are instances of one of these classes.
    Types(Py<PyTuple>),
    /// Exceptions for which this callable returns true; the bool is the verdict while the
    /// execution is being aborted because the callable raised (see `abort`).
    Callable(Py<PyAny>, bool),
}

/// A strategy's `handle=`: the Python counterpart of the core's predicates.
#[derive(Debug)]
pub(crate) struct PyHandle(std::sync::Arc<Rule>);

impl Clone for PyHandle {
    fn clone(&self) -> Self {
        PyHandle(std::sync::Arc::clone(&self.0))
    }
}

impl PyHandle {
    /// Every `Exception` (the breaker's, fallback's and hedging's default: Rust's `OnError`).
    pub(crate) fn errors() -> Self {
        PyHandle(std::sync::Arc::new(Rule::Default { transient: false }))
    }

    /// Every `Exception` but other strategies' rejections (retry's default:
    /// Rust's `OnTransientError`).
    pub(crate) fn transient() -> Self {
        PyHandle(std::sync::Arc::new(Rule::Default { transient: true }))
    }

    /// `handle=`: an exception class, a tuple of them, or a predicate `(exc) -> bool`;
    /// `None` for `default`. `option` names it in errors (`retry.handle`). `if_it_raises`:
    /// the verdict of a predicate that raised, for the strategy to act on while the execution
    /// is aborted with the predicate's exception (a breaker counts the call as failed, as
    /// the operation did raise; a retry, hedging or fallback does nothing more).
    pub(crate) fn from_python(
        value: Option<&Bound<'_, PyAny>>,
        default: PyHandle,
        option: &str,
        if_it_raises: bool,
    ) -> PyResult<Self> {
        let Some(value) = value else {
            return Ok(default);
        };
        let py = value.py();
        if value.is_instance_of::<PyType>() {
            let types = PyTuple::new(py, [value])?;
            return Ok(PyHandle(std::sync::Arc::new(Rule::Types(types.unbind()))));
        }
        if let Ok(tuple) = value.cast::<PyTuple>() {
            if tuple.iter().all(|t| t.is_instance_of::<PyType>()) && !tuple.is_empty() {
                return Ok(PyHandle(std::sync::Arc::new(Rule::Types(
                    tuple.clone().unbind(),
                ))));
            }
        }
        if value.is_callable() {
            return Ok(PyHandle(std::sync::Arc::new(Rule::Callable(
                value.clone().unbind(),
                if_it_raises,
            ))));
        }
        Err(config_error(
            py,
            option,
            &value.repr()?.to_string(),
            "must be an exception class, a non-empty tuple of them, or a callable (exception) -> bool",
        ))
    }

    fn handles(&self, error: &Error<PyErr>) -> bool {
        match (&*self.0, error) {
            (Rule::Default { .. }, Error::Inner(e)) => {
                Python::attach(|py| e.is_instance_of::<PyException>(py))
            }
            (Rule::Default { transient }, other) => !transient || !other.is_rejection(),
            (Rule::Types(types), error) => Python::attach(|py| {
                exception_of(py, error)
                    .is_instance(types.bind(py).as_any())
                    .unwrap_or(false)
            }),
            (Rule::Callable(predicate, if_it_raises), error) => Python::attach(|py| {
                let exception = exception_of(py, error);
                match predicate
                    .bind(py)
                    .call1((exception.clone(),))
                    .and_then(|r| r.is_truthy())
                {
                    Ok(verdict) => verdict,
                    Err(e) => {
                        // A predicate that raises ends the execution with its exception
                        // (the one it judged as `__context__`).
                        callback_failed(py, e, &exception);
                        *if_it_raises
                    }
                }
            }),
        }
    }
}

/// A `handle=` predicate or a `delay_generator=` raised `error` while judging `exception`:
/// the execution ends with `error`, chained to `exception` as Python chains an error raised
/// in an `except` block (`__context__`).
fn callback_failed(py: Python<'_>, error: PyErr, exception: &Bound<'_, PyAny>) {
    if let Err(e) = error
        .value(py)
        .setattr(pyo3::intern!(py, "__context__"), exception)
    {
        e.write_unraisable(py, None);
    }
    abort(error);
}

impl Predicate<Py<PyAny>, PyErr> for PyHandle {
    #[inline]
    fn test(&self, outcome: &Outcome) -> bool {
        match outcome {
            Ok(_) => false,
            Err(e) => self.handles(e),
        }
    }
}

/// The retry's delay generator: `retry_after=True` honours a `retry_after` attribute (in
/// seconds) of the exception; `delay_generator=` is a callable `(exc, attempt) -> seconds
/// or None`. Neither: the computed backoff (Rust's `NoDelayGenerator`).
#[derive(Debug, Clone, Default)]
pub(crate) struct PyDelay {
    pub(crate) retry_after: bool,
    pub(crate) generator: Option<std::sync::Arc<Py<PyAny>>>,
}

fn as_delay(value: &Bound<'_, PyAny>) -> Option<Duration> {
    if value.is_none() {
        return None;
    }
    let seconds: f64 = value
        .extract()
        .or_else(|_| {
            value
                .call_method0("total_seconds")
                .and_then(|s| s.extract())
        })
        .ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

impl DelayGenerator<Py<PyAny>, PyErr> for PyDelay {
    fn delay(&self, outcome: &Outcome, attempt: u32) -> Option<Duration> {
        if !self.retry_after && self.generator.is_none() {
            return None;
        }
        let Err(error) = outcome else {
            return None;
        };
        Python::attach(|py| {
            let exception = exception_of(py, error);
            if let Some(generator) = &self.generator {
                match generator.bind(py).call1((exception.clone(), attempt)) {
                    Ok(delay) if delay.is_none() => {}
                    Ok(delay) => {
                        if let Some(delay) = as_delay(&delay) {
                            return Some(delay);
                        }
                        // Not a delay: the execution ends naming the generator and the value
                        // (a silent default would hide the bug).
                        let value = delay
                            .repr()
                            .map(|r| r.to_string())
                            .unwrap_or_else(|_| "<unrepresentable>".to_owned());
                        let error = config_error(
                            py,
                            "retry.delay_generator",
                            &value,
                            "returned a value that is no delay: must return finite seconds ≥ 0 \
                             (int or float), a timedelta, or None for the computed delay",
                        );
                        callback_failed(py, error, &exception);
                        return None;
                    }
                    Err(e) => {
                        callback_failed(py, e, &exception);
                        return None;
                    }
                }
            }
            if self.retry_after {
                if let Ok(hint) = exception.getattr("retry_after") {
                    return as_delay(&hint);
                }
            }
            None
        })
    }
}
