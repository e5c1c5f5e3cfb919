//! `stormwall.CircuitBreaker`: a breaker handle Python code keeps (for health checks and
//! manual control) and puts in pipelines; in memory, or shared through Redis with every
//! replica, Rust or Python, that uses the same name.

use crate::chain::Breaker;
use crate::errors::{config_error, redis_unavailable};
use crate::events::{event_dict, log_callback_error};
use crate::handle::PyHandle;
use crate::options::{deserialize, invalid, kwargs_to_json, take};
use crate::runtime::runtime;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, CircuitState};
use stormwall::telemetry::{strategy, Event, EventSource};
use stormwall_redis::{RedisStateStore, RedisStoreError, RedisStoreOptions};

/// A circuit breaker (see the stubs for the Python API).
#[pyclass(frozen, name = "CircuitBreaker", module = "stormwall._stormwall")]
pub(crate) struct PyCircuitBreaker {
    pub(crate) inner: Breaker,
    /// The shared breaker's name; `None` in memory.
    name: Option<String>,
}

/// The breaker's options from keyword arguments (`handle=` included).
pub(crate) fn breaker_options(
    py: Python<'_>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<CircuitBreakerOptions<PyHandle>> {
    let handle = take(options, "handle")?;
    let handle = PyHandle::from_python(
        handle.as_ref(),
        PyHandle::errors(),
        "circuit_breaker.handle",
        true,
    )?;
    let json = kwargs_to_json(options, "circuit_breaker")?;
    let parsed: CircuitBreakerOptions = deserialize(py, json, "circuit_breaker")?;
    Ok(parsed.handle(handle))
}

/// A new in-memory breaker from keyword arguments.
pub(crate) fn local(py: Python<'_>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Breaker> {
    let options = breaker_options(py, options)?;
    CircuitBreaker::new(options)
        .map(Breaker::Local)
        .map_err(invalid(py))
}

impl PyCircuitBreaker {
    fn state_of(&self) -> CircuitState {
        match &self.inner {
            Breaker::Local(b) => b.state(),
            Breaker::Redis(b) => b.state(),
        }
    }
}

#[pymethods]
impl PyCircuitBreaker {
    /// An in-memory breaker; options as in Rust's `CircuitBreakerOptions`.
    #[new]
    #[pyo3(signature = (**options))]
    fn new(py: Python<'_>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Ok(PyCircuitBreaker {
            inner: local(py, options)?,
            name: None,
        })
    }

    /// A breaker whose state lives in Redis at `url` under `name`, shared with every
    /// replica (Rust's `RedisStateStore`) that uses the same name and options.
    #[staticmethod]
    #[pyo3(signature = (url, *, name, key_prefix=None, require_connection=true, **options))]
    fn redis(
        py: Python<'_>,
        url: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        key_prefix: Option<String>,
        require_connection: bool,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let url: String = match url.extract() {
            Ok(url) => url,
            Err(_) => {
                let value = url.repr()?.to_string();
                return Err(config_error(
                    py,
                    "url",
                    &value,
                    "must be a str (redis://host:port/db)",
                ));
            }
        };
        let url = url.as_str();
        let name: String = match name.extract() {
            Ok(name) if !String::is_empty(&name) => name,
            _ => {
                let value = name.repr()?.to_string();
                return Err(config_error(py, "name", &value, "must be a non-empty str"));
            }
        };
        let name = name.as_str();
        let options = breaker_options(py, options)?;
        let mut store_options = RedisStoreOptions::default();
        if let Some(prefix) = key_prefix {
            store_options.key_prefix = prefix;
        }
        let connect_options = options.clone();
        let connected = py.detach(|| {
            runtime().block_on(RedisStateStore::connect(
                url,
                name,
                &connect_options,
                store_options,
            ))
        });
        let store = match connected {
            Ok(store) => store,
            Err(RedisStoreError::InvalidUrl { url, reason }) => {
                return Err(config_error(py, "url", &format!("{url:?}"), &reason))
            }
            Err(RedisStoreError::Config(e)) => return Err(invalid(py)(e)),
            Err(other) => return Err(redis_unavailable(py, url, &other.to_string())),
        };
        if require_connection && !store.is_connected() {
            return Err(redis_unavailable(
                py,
                url,
                "no answer within the connect timeout (pass require_connection=False to start on \
                 the local breaker and join when Redis answers)",
            ));
        }
        let breaker = CircuitBreaker::with_store(options, store).map_err(invalid(py))?;
        Ok(PyCircuitBreaker {
            inner: Breaker::Redis(breaker),
            name: Some(name.to_owned()),
        })
    }

    /// `"closed"`, `"open"`, `"half_open"`, `"isolated"` or `"disabled"`.
    #[getter]
    fn state(&self) -> &'static str {
        self.state_of().as_str()
    }

    /// The shared breaker's name (`None` in memory).
    #[getter]
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the shared state is reachable (always `True` in memory).
    #[getter]
    fn is_connected(&self) -> bool {
        match &self.inner {
            Breaker::Local(_) => true,
            Breaker::Redis(b) => b.store().is_connected(),
        }
    }

    /// Forces the circuit open until `close()` (on every replica when shared).
    fn isolate(&self) {
        match &self.inner {
            Breaker::Local(b) => b.isolate(),
            Breaker::Redis(b) => b.isolate(),
        }
    }

    /// Closes the circuit (ends an isolation, or a break) and resets its counts.
    fn close(&self) {
        match &self.inner {
            Breaker::Local(b) => b.close(),
            Breaker::Redis(b) => b.close(),
        }
    }

    /// Forces the circuit closed: every call flows, nothing is counted.
    fn disable(&self) {
        match &self.inner {
            Breaker::Local(b) => b.disable(),
            Breaker::Redis(b) => b.disable(),
        }
    }

    /// Calls `callback(event)` with every transition (a dict as `on_event` gets), from
    /// whichever thread raised it.
    fn on_transition(&self, py: Python<'_>, callback: Py<PyAny>) -> PyResult<()> {
        if !callback.bind(py).is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "on_transition: callback must be callable, got {}",
                callback.bind(py).repr()?
            )));
        }
        let observe = move |transition: stormwall::circuit_breaker::CircuitTransition| {
            Python::attach(|py| {
                let source = EventSource {
                    pipeline: "",
                    strategy: strategy::CIRCUIT_BREAKER,
                };
                let event = Event::CircuitTransition(transition);
                let called = event_dict(py, &source, &event)
                    .and_then(|d| callback.bind(py).call1((d,)).map(drop));
                if let Err(e) = called {
                    log_callback_error(py, "on_transition", e);
                }
            });
        };
        match &self.inner {
            Breaker::Local(b) => b.on_transition(observe),
            Breaker::Redis(b) => b.on_transition(observe),
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        match &self.name {
            Some(name) => format!(
                "CircuitBreaker.redis(name={name:?}, state={:?})",
                self.state()
            ),
            None => format!("CircuitBreaker(state={:?})", self.state()),
        }
    }
}

impl PyCircuitBreaker {
    /// A handle on `breaker` (a pipeline's).
    pub(crate) fn from_breaker(breaker: Breaker) -> Self {
        PyCircuitBreaker {
            inner: breaker,
            name: None,
        }
    }
}
