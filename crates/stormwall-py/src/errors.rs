//! Rust errors as the Python exceptions of `stormwall._errors`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::time::Duration;
use stormwall::{ConfigError, Error};

/// What a pipeline's execution ends with: the operation's value, or why not.
pub(crate) type Outcome = Result<Py<PyAny>, Error<PyErr>>;

/// The class `name` of `stormwall._errors`, looked up once.
fn class<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || {
        PyModule::import(py, "stormwall._errors").map(Bound::unbind)
    })?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// An instance of `stormwall._errors.<name>(*args)` as a `PyErr`.
fn raise<'py, A>(py: Python<'py>, name: &'static str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    match class(py, name).and_then(|c| c.call1(args)) {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

/// A `ConfigError` with `field`, `value` and `reason`.
pub(crate) fn config_error(py: Python<'_>, field: &str, value: &str, reason: &str) -> PyErr {
    raise(py, "ConfigError", (field, value, reason))
}

/// The core's configuration error, keeping its key path.
pub(crate) fn from_config(py: Python<'_>, e: &ConfigError) -> PyErr {
    config_error(py, &e.field, &e.value, &e.reason)
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The exception a caller sees for `error`: the operation's own, or the strategy's.
pub(crate) fn to_py(py: Python<'_>, error: Error<PyErr>) -> PyErr {
    match error {
        Error::Inner(e) => e,
        Error::Timeout(d) => raise(py, "TimeoutRejected", (seconds(d),)),
        Error::CircuitOpen { retry_after } => {
            raise(py, "CircuitOpenError", (retry_after.map(seconds),))
        }
        Error::BulkheadFull => raise(py, "BulkheadFull", ()),
        Error::RateLimited { retry_after } => raise(py, "RateLimited", (seconds(retry_after),)),
        Error::BudgetExhausted => raise(py, "BudgetExhausted", ()),
        Error::Throttled => raise(py, "Throttled", ()),
        // `Error` is non-exhaustive: a variant added later is still a StormwallError.
        other => raise(py, "StormwallError", (other.to_string(),)),
    }
}

/// The exception object for `error` without consuming it (predicates and fallbacks look at
/// it while the strategy keeps the error).
pub(crate) fn exception_of<'py>(py: Python<'py>, error: &Error<PyErr>) -> Bound<'py, PyAny> {
    let err = match error {
        Error::Inner(e) => e.clone_ref(py),
        Error::Timeout(d) => to_py(py, Error::Timeout(*d)),
        Error::CircuitOpen { retry_after } => to_py(
            py,
            Error::CircuitOpen {
                retry_after: *retry_after,
            },
        ),
        Error::BulkheadFull => to_py(py, Error::BulkheadFull),
        Error::RateLimited { retry_after } => to_py(
            py,
            Error::RateLimited {
                retry_after: *retry_after,
            },
        ),
        Error::BudgetExhausted => to_py(py, Error::BudgetExhausted),
        Error::Throttled => to_py(py, Error::Throttled),
        other => raise(py, "StormwallError", (other.to_string(),)),
    };
    err.into_value(py).into_bound(py).into_any()
}

/// `FallbackError(original)` caused by `cause`.
pub(crate) fn fallback_error(py: Python<'_>, original: &Bound<'_, PyAny>, cause: PyErr) -> PyErr {
    let e = raise(py, "FallbackError", (original.clone(),));
    e.set_cause(py, Some(cause));
    e
}

/// `RedisUnavailable(url, reason)`.
pub(crate) fn redis_unavailable(py: Python<'_>, url: &str, reason: &str) -> PyErr {
    raise(py, "RedisUnavailable", (url, reason))
}

/// A Rust panic caught at the boundary, as `InternalError`.
pub(crate) fn from_panic(py: Python<'_>, payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a Rust panic".to_owned());
    raise(
        py,
        "InternalError",
        (format!(
            "stormwall panicked (a bug, please report it): {message}"
        ),),
    )
}
