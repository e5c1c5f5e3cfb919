//! Python bindings of stormwall: the `stormwall._stormwall` extension module that the
//! `stormwall` package (python/stormwall) wraps. See the crate README for the Python API.
//!
//! How an `await pipeline.execute(fn)` runs: the pipeline's Rust future is polled on the
//! event loop's thread, inside the awaiting task (`driver.rs`); each attempt steps the
//! coroutine `fn` returned (`attempt.rs`), so the success path crosses no thread. Timers
//! (backoff, timeouts, break durations) and the Redis store run on a tokio runtime on a
//! background thread (`runtime.rs`), whose wake-ups reach the loop through
//! `call_soon_threadsafe`.

mod abort;
mod attempt;
mod breaker;
mod chain;
mod cleanup;
mod driver;
mod errors;
mod events;
mod fallback;
mod handle;
mod options;
mod pipeline;
mod runtime;

use pyo3::prelude::*;

/// `module.name`, imported once into `cell` (classes and functions of the standard library
/// the bindings call: `asyncio.CancelledError`, `contextvars.copy_context`, ...).
pub(crate) fn imported<'py>(
    py: Python<'py>,
    cell: &'static pyo3::sync::PyOnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || {
        PyModule::import(py, module)?
            .getattr(name)
            .map(Bound::unbind)
    })
    .map(|object| object.bind(py))
}

/// The extension module.
#[pymodule]
fn _stormwall(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<pipeline::PyPipelineBuilder>()?;
    m.add_class::<pipeline::PyPipeline>()?;
    m.add_class::<breaker::PyCircuitBreaker>()?;
    m.add_class::<driver::Execution>()?;
    driver::install_send_slot(m.py())?;
    m.add_function(wrap_pyfunction!(driver::panicking_execution, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Plain functions abandoned by a timeout or a hedge finish before the interpreter is
    // finalized (see `attempt::wait_for_running_calls`).
    let wait = wrap_pyfunction!(attempt::wait_for_running_calls, m)?;
    m.py().import("atexit")?.call_method1("register", (wait,))?;
    Ok(())
}
