//! Events to Python: a callback (`on_event=`) gets each event as a dict; `log_events=True`
//! writes the strategies' events to the `stormwall` logger of the `logging` module.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use stormwall::circuit_breaker::CircuitState;
use stormwall::telemetry::{strategy, Event, EventListener, EventSource};

/// Sends a pipeline's events to Python.
pub(crate) struct PyListener {
    pub(crate) callback: Option<Py<PyAny>>,
    pub(crate) log: bool,
}

/// The event as a dict: `pipeline`, `strategy`, `event` and the event's own fields
/// (durations in seconds, states as their names).
pub(crate) fn event_dict<'py>(
    py: Python<'py>,
    source: &EventSource<'_>,
    event: &Event,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("pipeline", source.pipeline)?;
    d.set_item("strategy", source.strategy)?;
    d.set_item("event", event.name())?;
    match event {
        Event::Retry(e) => {
            d.set_item("attempt", e.attempt)?;
            d.set_item("delay", e.delay.as_secs_f64())?;
        }
        Event::Timeout(e) => d.set_item("timeout", e.timeout.as_secs_f64())?,
        Event::CircuitTransition(t) => {
            d.set_item("from", t.from.as_str())?;
            d.set_item("to", t.to.as_str())?;
            d.set_item("reason", format!("{:?}", t.reason))?;
            d.set_item("origin", t.origin.as_str())?;
            d.set_item("break_duration", t.break_duration.map(|b| b.as_secs_f64()))?;
        }
        Event::CircuitRejected(r) => {
            d.set_item("state", r.state.as_str())?;
            d.set_item("retry_after", r.retry_after.map(|b| b.as_secs_f64()))?;
        }
        Event::Fallback(f) => d.set_item("outcome", f.outcome)?,
        Event::BulkheadRejected(b) => {
            d.set_item("in_use", b.in_use)?;
            d.set_item("queued", b.queued)?;
        }
        Event::RateLimited(r) => d.set_item("retry_after", r.retry_after.as_secs_f64())?,
        Event::HedgeStarted(h) => d.set_item("attempt", h.attempt)?,
        Event::AttemptCompleted(a) => {
            d.set_item("attempt", a.attempt)?;
            d.set_item("duration", a.duration.as_secs_f64())?;
            d.set_item("success", a.success)?;
        }
        Event::ExecutionCompleted(x) => {
            d.set_item("duration", x.duration.as_secs_f64())?;
            d.set_item("success", x.success)?;
        }
        other => d.set_item("detail", format!("{other:?}"))?,
    }
    Ok(d)
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            Ok(PyModule::import(py, "logging")?
                .call_method1("getLogger", ("stormwall",))?
                .unbind())
        })
        .map(|l| l.bind(py))
}

/// `logging` levels: WARNING when a breaker opens or a call is rejected or timed out,
/// INFO for the rest.
fn level(event: &Event) -> u32 {
    const INFO: u32 = 20;
    const WARNING: u32 = 30;
    match event {
        Event::CircuitTransition(t)
            if matches!(t.to, CircuitState::Open | CircuitState::Isolated) =>
        {
            WARNING
        }
        Event::CircuitRejected(_)
        | Event::BulkheadRejected(_)
        | Event::RateLimited(_)
        | Event::Timeout(_)
        | Event::RetryBudgetExhausted(_)
        | Event::Throttled(_) => WARNING,
        _ => INFO,
    }
}

/// An event callback (`on_event=`, `on_transition`) raised `error`: it is logged on the
/// `stormwall` logger at ERROR with its traceback (as `logging` handles a failing handler,
/// the call goes on: a listener observes the pipeline, it does not steer it).
///
/// A `BaseException` that is no `Exception` (`KeyboardInterrupt`, `SystemExit`) is not
/// logged: it ends the execution being driven on this thread (see `abort`).
pub(crate) fn log_callback_error(py: Python<'_>, callback: &str, error: PyErr) {
    if !error.is_instance_of::<pyo3::exceptions::PyException>(py) {
        crate::abort::abort(error);
        return;
    }
    let logged = logger(py).and_then(|logger| {
        let kwargs = pyo3::types::PyDict::new(py);
        // (type, value, traceback): the value alone can lack its traceback (PyO3 keeps it
        // beside the value), and the log would show none.
        let exc_info = (
            error.get_type(py),
            error.value(py),
            error.traceback(py).map(|tb| tb.into_any()),
        );
        kwargs.set_item("exc_info", exc_info)?;
        logger.call_method(
            "error",
            (
                "stormwall: the %s callback raised %r",
                callback,
                error.value(py),
            ),
            Some(&kwargs),
        )
    });
    if let Err(e) = logged {
        // The logging itself failed: what is left is sys.unraisablehook.
        error.write_unraisable(py, None);
        e.write_unraisable(py, None);
    }
}

impl EventListener for PyListener {
    fn on_event(&self, source: &EventSource<'_>, event: &Event) {
        // The pipeline's own events (one per attempt and execution) go to the callback only.
        let log = self.log && source.strategy != strategy::PIPELINE;
        if self.callback.is_none() && !log {
            return;
        }
        Python::attach(|py| {
            let reported = event_dict(py, source, event).and_then(|d| {
                if let Some(callback) = &self.callback {
                    if let Err(e) = callback.bind(py).call1((d.clone(),)) {
                        log_callback_error(py, "on_event", e);
                    }
                }
                if log {
                    logger(py)?.call_method1(
                        "log",
                        (
                            level(event),
                            "stormwall %s %s: %s",
                            source.pipeline,
                            event.name(),
                            d,
                        ),
                    )?;
                }
                Ok(())
            });
            if let Err(e) = reported {
                e.write_unraisable(py, None);
            }
        });
    }
}
