//! `stormwall.PipelineBuilder` and `stormwall.Pipeline`.

use crate::attempt::{Call, PyAttempt, SyncAttempt};
use crate::breaker::PyCircuitBreaker;
use crate::chain::{Breaker, Chain, Layer};
use crate::driver::Execution;
use crate::errors::{config_error, from_panic, to_py, Outcome};
use crate::events::PyListener;
use crate::fallback::{in_sync_mode, PyFallback};
use crate::handle::{PyDelay, PyHandle};
use crate::options::{deserialize, invalid, kwargs_to_json, take, to_json};
use crate::runtime::runtime;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;
use stormwall::bulkhead::{Bulkhead, BulkheadOptions, KeyedBulkhead};
use stormwall::circuit_breaker::{CircuitBreaker, InMemoryStore};
use stormwall::fallback::{Fallback, FallbackOptions};
use stormwall::hedging::{Hedging, HedgingOptions};
use stormwall::pipeline::{Identity, Stack, Strategy};
use stormwall::rate_limit::{KeyedRateLimiter, RateLimitOptions, RateLimiter};
use stormwall::registry::{PipelineSpec, StrategySpec, MAX_STRATEGIES};
use stormwall::retry::{Retry, RetryOptions};
use stormwall::timeout::{Timeout, TimeoutOptions};
use stormwall::{Context, Pipeline};

/// How many keys a keyed rate limiter or bulkhead tracks at most, unless `max_keys=` says.
const DEFAULT_MAX_KEYS: usize = 10_000;

/// Composes a pipeline, outer to inner: the first strategy added is the outermost, as in
/// Rust's `PipelineBuilder`. Each method validates its options at once and raises
/// `ConfigError` naming the field.
#[pyclass(name = "PipelineBuilder", module = "stormwall._stormwall")]
pub(crate) struct PyPipelineBuilder {
    layers: Vec<Layer>,
    name: String,
    on_event: Option<Py<PyAny>>,
    log_events: bool,
    built: bool,
}

fn retry_layer(py: Python<'_>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Layer> {
    let handle = take(kwargs, "handle")?;
    let handle = PyHandle::from_python(
        handle.as_ref(),
        PyHandle::transient(),
        "retry.handle",
        false,
    )?;
    let retry_after = match take(kwargs, "retry_after")? {
        Some(flag) => flag.is_truthy()?,
        None => false,
    };
    let generator = match take(kwargs, "delay_generator")? {
        Some(g) if g.is_callable() => Some(Arc::new(g.unbind())),
        Some(g) => {
            return Err(config_error(
                py,
                "retry.delay_generator",
                &g.repr()?.to_string(),
                "must be a callable (exception, attempt) -> seconds or None",
            ))
        }
        None => None,
    };
    let json = kwargs_to_json(kwargs, "retry")?;
    let options: RetryOptions = deserialize(py, json, "retry")?;
    let options = options.handle(handle).delay_generator(PyDelay {
        retry_after,
        generator,
    });
    Retry::new(options).map(Layer::Retry).map_err(invalid(py))
}

fn timeout_layer(py: Python<'_>, timeout: &Bound<'_, PyAny>) -> PyResult<Layer> {
    let json = to_json(timeout, "timeout", true)?;
    let options: TimeoutOptions = deserialize(py, json, "timeout")?;
    Timeout::new(options)
        .map(Layer::Timeout)
        .map_err(invalid(py))
}

fn max_keys(
    py: Python<'_>,
    kwargs: Option<&Bound<'_, PyDict>>,
    prefix: &str,
) -> PyResult<Option<usize>> {
    let keyed = match take(kwargs, "keyed")? {
        Some(flag) => flag.is_truthy()?,
        None => false,
    };
    let max = take(kwargs, "max_keys")?;
    match (keyed, max) {
        (false, None) => Ok(None),
        (_, None) => Ok(Some(DEFAULT_MAX_KEYS)),
        (_, Some(n)) => match n.extract::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(config_error(
                py,
                &format!("{prefix}.max_keys"),
                &n.repr()?.to_string(),
                "must be an integer ≥ 1",
            )),
        },
    }
}

impl PyPipelineBuilder {
    /// Adds a strategy: at most `MAX_STRATEGIES`, as `from_spec` (and Rust's `PipelineSpec`)
    /// accepts, with the same error.
    fn push(&mut self, layer: Layer) -> PyResult<()> {
        if self.layers.len() >= MAX_STRATEGIES {
            let error = stormwall::ConfigError::new(
                "strategies",
                self.layers.len() + 1,
                format!("at most {MAX_STRATEGIES} strategies"),
            );
            return Python::attach(|py| Err(invalid(py)(error)));
        }
        self.layers.push(layer);
        Ok(())
    }
}

#[pymethods]
impl PyPipelineBuilder {
    #[new]
    fn new() -> Self {
        PyPipelineBuilder {
            layers: Vec::new(),
            name: "default".to_owned(),
            on_event: None,
            log_events: false,
            built: false,
        }
    }

    /// Names the pipeline in its events. Default: `"default"`.
    fn name(mut slf: PyRefMut<'_, Self>, name: String) -> PyRefMut<'_, Self> {
        slf.name = name;
        slf
    }

    /// Calls `callback(event: dict)` for every event of every strategy.
    fn on_event(mut slf: PyRefMut<'_, Self>, callback: Py<PyAny>) -> PyResult<PyRefMut<'_, Self>> {
        if !callback.bind(slf.py()).is_callable() {
            return Err(PyTypeError::new_err("on_event: callback must be callable"));
        }
        slf.on_event = Some(callback);
        Ok(slf)
    }

    /// Writes the strategies' events to the `stormwall` logger.
    #[pyo3(signature = (enabled=true))]
    fn log_events(mut slf: PyRefMut<'_, Self>, enabled: bool) -> PyRefMut<'_, Self> {
        slf.log_events = enabled;
        slf
    }

    /// Adds a retry (options of Rust's `RetryOptions`, plus `handle=`, `retry_after=`,
    /// `delay_generator=`).
    #[pyo3(signature = (**options))]
    fn retry<'py>(
        mut slf: PyRefMut<'py, Self>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let layer = retry_layer(slf.py(), options)?;
        slf.push(layer)?;
        Ok(slf)
    }

    /// Adds a timeout: outermost it bounds the whole execution, inside retry each attempt.
    fn timeout<'py>(
        mut slf: PyRefMut<'py, Self>,
        timeout: &Bound<'py, PyAny>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let layer = timeout_layer(slf.py(), timeout)?;
        slf.push(layer)?;
        Ok(slf)
    }

    /// Adds a circuit breaker: a `CircuitBreaker` (shared with whoever holds it) or options
    /// for a new one.
    #[pyo3(signature = (breaker=None, **options))]
    fn circuit_breaker<'py>(
        mut slf: PyRefMut<'py, Self>,
        breaker: Option<&Bound<'py, PyCircuitBreaker>>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let py = slf.py();
        let breaker = match breaker {
            Some(b) => {
                if options.is_some_and(|o| !o.is_empty()) {
                    return Err(PyTypeError::new_err(
                        "circuit_breaker: give a CircuitBreaker or options, not both",
                    ));
                }
                b.get().inner.clone()
            }
            None => crate::breaker::local(py, options)?,
        };
        slf.push(Layer::Breaker(breaker))?;
        Ok(slf)
    }

    /// Adds a bulkhead (`max_concurrency`, `queue_limit`, `queue_timeout`; `keyed=True` for
    /// one per key).
    #[pyo3(signature = (**options))]
    fn bulkhead<'py>(
        mut slf: PyRefMut<'py, Self>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let py = slf.py();
        let keys = max_keys(py, options, "bulkhead")?;
        let parsed: BulkheadOptions =
            deserialize(py, kwargs_to_json(options, "bulkhead")?, "bulkhead")?;
        let layer = match keys {
            None => Bulkhead::new(parsed).map(Layer::Bulkhead),
            Some(n) => KeyedBulkhead::new(parsed, n).map(Layer::KeyedBulkhead),
        }
        .map_err(invalid(py))?;
        slf.push(layer)?;
        Ok(slf)
    }

    /// Adds a rate limiter (`permits`, `period`, `burst`, `algorithm`; `keyed=True` for a
    /// quota per key).
    #[pyo3(signature = (**options))]
    fn rate_limit<'py>(
        mut slf: PyRefMut<'py, Self>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let py = slf.py();
        let keys = max_keys(py, options, "rate_limit")?;
        let parsed: RateLimitOptions =
            deserialize(py, kwargs_to_json(options, "rate_limit")?, "rate_limit")?;
        let layer = match keys {
            None => RateLimiter::new(parsed).map(Layer::RateLimit),
            Some(n) => KeyedRateLimiter::new(parsed, n).map(Layer::KeyedRateLimit),
        }
        .map_err(invalid(py))?;
        slf.push(layer)?;
        Ok(slf)
    }

    /// Adds hedging (`delay`: seconds, `"parallel"` or `"fallback"`; `max_hedged_attempts`;
    /// `handle=`).
    #[pyo3(signature = (**options))]
    fn hedging<'py>(
        mut slf: PyRefMut<'py, Self>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let py = slf.py();
        let handle = take(options, "handle")?;
        let handle =
            PyHandle::from_python(handle.as_ref(), PyHandle::errors(), "hedging.handle", false)?;
        let parsed: HedgingOptions =
            deserialize(py, kwargs_to_json(options, "hedging")?, "hedging")?;
        let layer = Hedging::new(parsed.handle(handle))
            .map(Layer::Hedging)
            .map_err(invalid(py))?;
        slf.push(layer)?;
        Ok(slf)
    }

    /// Adds a fallback: `value=` (returned instead) or `handler=` (called with the
    /// exception; may be async); `handle=` chooses which failures.
    #[pyo3(signature = (**options))]
    fn fallback<'py>(
        mut slf: PyRefMut<'py, Self>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let py = slf.py();
        let action = fallback_action(py, options)?;
        let handle = take(options, "handle")?;
        let handle = PyHandle::from_python(
            handle.as_ref(),
            PyHandle::errors(),
            "fallback.handle",
            false,
        )?;
        if let Some(unknown) = options.and_then(|o| o.keys().iter().next()) {
            return Err(config_error(
                py,
                &format!("fallback.{unknown}"),
                "?",
                "unknown option, expected one of `value`, `handler`, `handle`",
            ));
        }
        let layer = Layer::Fallback(Fallback::new(
            FallbackOptions::action(action).handle(handle),
        ));
        slf.push(layer)?;
        Ok(slf)
    }

    /// Validates and builds the pipeline (a builder builds once).
    fn build(&mut self) -> PyResult<PyPipeline> {
        if self.built {
            return Err(PyRuntimeError::new_err(
                "this builder was built already; make a new one",
            ));
        }
        self.built = true;
        let chain = Chain(std::mem::take(&mut self.layers));
        PyPipeline::new(
            chain,
            std::mem::take(&mut self.name),
            self.on_event.take(),
            self.log_events,
        )
    }
}

fn fallback_action(py: Python<'_>, options: Option<&Bound<'_, PyDict>>) -> PyResult<PyFallback> {
    let has_value = match options {
        Some(o) => o.contains("value")?,
        None => false,
    };
    let value = if has_value {
        let o = options.expect("checked above");
        let v = o.get_item("value")?.map(Bound::unbind);
        o.del_item("value")?;
        v
    } else {
        None
    };
    let handler = take(options, "handler")?;
    match (value, handler) {
        (Some(value), None) => Ok(PyFallback::Value(Arc::new(value))),
        (None, Some(handler)) if handler.is_callable() => {
            Ok(PyFallback::Handler(Arc::new(handler.unbind())))
        }
        (None, Some(handler)) => Err(config_error(
            py,
            "fallback.handler",
            &handler.repr()?.to_string(),
            "must be a callable (exception) -> value (or an awaitable of one)",
        )),
        (Some(_), Some(_)) => Err(config_error(
            py,
            "fallback",
            "value and handler",
            "give one of `value`, `handler`",
        )),
        (None, None) => Err(config_error(
            py,
            "fallback",
            "nothing",
            "give one of `value`, `handler`",
        )),
    }
}

/// A built pipeline: `await pipeline.execute(fn, *args, **kwargs)` or
/// `pipeline.execute_sync(fn, *args, **kwargs)`.
#[pyclass(frozen, name = "Pipeline", module = "stormwall._stormwall")]
pub(crate) struct PyPipeline {
    inner: Arc<Pipeline<Stack<Identity, Chain>>>,
    /// Plain functions run on a blocking thread (the pipeline may abandon them).
    blocking: bool,
    /// The pipeline's only strategy when it is an in-memory circuit breaker and nothing
    /// listens to the pipeline's events: `execute` then runs it around the coroutine
    /// directly (see `Execution::direct`), the breaker's admission and outcome exactly as
    /// in the pipeline, without the pipeline's machinery around them.
    direct: Option<CircuitBreaker<PyHandle, InMemoryStore>>,
    name: String,
}

impl PyPipeline {
    fn new(
        chain: Chain,
        name: String,
        on_event: Option<Py<PyAny>>,
        log_events: bool,
    ) -> PyResult<Self> {
        let blocking = chain.abandons_attempts();
        let direct = match chain.0.as_slice() {
            [Layer::Breaker(Breaker::Local(breaker))] if on_event.is_none() && !log_events => {
                Some(breaker.clone())
            }
            _ => None,
        };
        let mut builder = Pipeline::builder().name(name.as_str());
        if on_event.is_some() || log_events {
            builder = builder.listener(Arc::new(PyListener {
                callback: on_event,
                log: log_events,
            }));
        }
        let pipeline = Python::attach(|py| builder.strategy(chain).build().map_err(invalid(py)))?;
        Ok(PyPipeline {
            inner: Arc::new(pipeline),
            blocking,
            direct,
            name,
        })
    }

    /// The call of `func`; `on_worker`: its attempts run on worker threads, in a copy of the
    /// caller's `contextvars` context taken now.
    fn call(
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        on_worker: bool,
    ) -> PyResult<Arc<Call>> {
        if !func.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "func must be callable, not {}",
                func.get_type().name()?
            )));
        }
        let context = if on_worker {
            Some(copy_context(func.py())?)
        } else {
            None
        };
        Ok(Arc::new(Call {
            func: func.clone().unbind(),
            args: args.clone().unbind(),
            kwargs: kwargs.map(|k| k.clone().unbind()),
            context,
        }))
    }

    fn start(&self, key: Option<String>, call: Arc<Call>) -> Execution {
        let ctx = match key {
            Some(key) => Context::new().with_key(key),
            None => Context::new(),
        };
        if let Some(breaker) = &self.direct {
            let breaker = breaker.clone();
            return Execution::direct(Box::pin(async move {
                let call = &call;
                Strategy::<Py<PyAny>, PyErr>::execute(&breaker, ctx, move |_| {
                    let attempt = PyAttempt::transparent(Arc::clone(call));
                    async move { attempt.await.map_err(stormwall::Error::Inner) }
                })
                .await
            }));
        }
        let pipeline = Arc::clone(&self.inner);
        Execution::new(Box::pin(async move {
            pipeline
                .execute_with(ctx, move |_| PyAttempt::new(Arc::clone(&call)))
                .await
        }))
    }

    fn run_sync(
        &self,
        py: Python<'_>,
        key: Option<String>,
        call: Arc<Call>,
    ) -> PyResult<Py<PyAny>> {
        let pipeline = Arc::clone(&self.inner);
        let blocking = self.blocking;
        let ctx = match key {
            Some(key) => Context::new().with_key(key),
            None => Context::new(),
        };
        // `None` once dropped: the execution ends here whatever happened (an interrupt drops
        // it, cancelling what runs and releasing bulkhead slots and breaker permits).
        let mut slot = std::pin::pin!(Some(async move {
            pipeline
                .execute_with(ctx, move |_| SyncAttempt::new(Arc::clone(&call), blocking))
                .await
        }));
        let finish = {
            let mut driven = std::pin::pin!(std::future::poll_fn(|cx| {
                let Some(future) = slot.as_mut().as_pin_mut() else {
                    return Poll::Pending;
                };
                let (poll, aborted) = crate::abort::polled(|| future.poll(cx));
                match aborted {
                    Some(error) => Poll::Ready(Err(error)),
                    None => poll.map(Ok),
                }
            }));
            // The first poll keeps the GIL: a call that succeeds at once (the success path)
            // then costs no GIL hand-over. A pipeline that has to wait (backoff, a queue, a
            // worker thread) is driven on with the GIL released, in slices of
            // `SIGNAL_CHECK`, between which the GIL is taken back to run signal handlers
            // (Ctrl-C raises `KeyboardInterrupt` within a slice, not when the wait ends).
            let first = in_sync_mode(|| {
                let _runtime = runtime().enter();
                let mut cx = TaskContext::from_waker(Waker::noop());
                std::panic::catch_unwind(AssertUnwindSafe(|| driven.as_mut().poll(&mut cx)))
            });
            match first {
                Ok(Poll::Ready(done)) => Finish::Done(Ok(done)),
                Err(panic) => Finish::Done(Err(panic)),
                Ok(Poll::Pending) => loop {
                    let slice = py.detach(|| {
                        in_sync_mode(|| {
                            std::panic::catch_unwind(AssertUnwindSafe(|| {
                                // Made inside `block_on`: a timer needs the runtime's context.
                                runtime().block_on(async {
                                    tokio::time::timeout(SIGNAL_CHECK, driven.as_mut()).await
                                })
                            }))
                        })
                    });
                    match slice {
                        Ok(Ok(done)) => break Finish::Done(Ok(done)),
                        Err(panic) => break Finish::Done(Err(panic)),
                        Ok(Err(_elapsed)) => {
                            if let Err(interrupt) = py.check_signals() {
                                break Finish::Interrupted(interrupt);
                            }
                        }
                    }
                },
            }
        };
        {
            let _runtime = runtime().enter();
            slot.set(None);
        }
        match finish {
            Finish::Done(Ok(Ok(Ok(value)))) => Ok(value),
            Finish::Done(Ok(Ok(Err(e)))) => Err(to_py(py, e)),
            Finish::Done(Ok(Err(aborted))) => Err(aborted),
            Finish::Done(Err(panic)) => Err(from_panic(py, panic)),
            Finish::Interrupted(interrupt) => Err(interrupt),
        }
    }
}

/// `contextvars.copy_context()`.
fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    static COPY_CONTEXT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    crate::imported(py, &COPY_CONTEXT, "contextvars", "copy_context")?
        .call0()
        .map(Bound::unbind)
}

/// How long `execute_sync` waits with the GIL released before it runs the signal handlers
/// (`KeyboardInterrupt`) and waits on.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// How a synchronous execution ended.
enum Finish {
    /// The pipeline's outcome, an abort (see `abort`), or a panic.
    Done(std::thread::Result<PyResult<Outcome>>),
    /// A signal handler raised (`KeyboardInterrupt`) while the pipeline waited.
    Interrupted(PyErr),
}

#[pymethods]
impl PyPipeline {
    /// A new builder.
    #[staticmethod]
    fn builder() -> PyPipelineBuilder {
        PyPipelineBuilder::new()
    }

    /// A pipeline from a spec: the `[pipelines.<name>]` table of a config file as a dict,
    /// its strategies in order, the first the outermost
    /// (`{"strategies": [{"timeout": "30s"}, {"retry": {...}}, {"timeout": "10s"}]}`).
    #[staticmethod]
    #[pyo3(signature = (spec, *, name="default".to_owned(), on_event=None, log_events=false))]
    fn from_spec(
        py: Python<'_>,
        spec: &Bound<'_, PyAny>,
        name: String,
        on_event: Option<Py<PyAny>>,
        log_events: bool,
    ) -> PyResult<Self> {
        let json = to_json(spec, "", false)?;
        let spec: PipelineSpec = deserialize(py, json, "")?;
        spec.validate().map_err(invalid(py))?;
        PyPipeline::new(chain_of(py, spec)?, name, on_event, log_events)
    }

    /// Runs the coroutine function `func(*args, **kwargs)` through the pipeline (each attempt
    /// calls it again). Returns an awaitable.
    #[pyo3(signature = (func, /, *args, **kwargs))]
    fn execute(
        &self,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Execution> {
        Ok(self.start(None, Self::call(func, args, kwargs, false)?))
    }

    /// `execute` with a key (the tenant of keyed rate limiters and bulkheads).
    #[pyo3(signature = (key, func, /, *args, **kwargs))]
    fn execute_keyed(
        &self,
        key: String,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Execution> {
        Ok(self.start(Some(key), Self::call(func, args, kwargs, false)?))
    }

    /// Runs the plain function `func(*args, **kwargs)` through the pipeline, blocking; the
    /// GIL is released while the pipeline waits (backoff, queue, timeouts).
    #[pyo3(signature = (func, /, *args, **kwargs))]
    fn execute_sync(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.run_sync(py, None, Self::call(func, args, kwargs, self.blocking)?)
    }

    /// `execute_sync` with a key.
    #[pyo3(signature = (key, func, /, *args, **kwargs))]
    fn execute_sync_keyed(
        &self,
        py: Python<'_>,
        key: String,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.run_sync(
            py,
            Some(key),
            Self::call(func, args, kwargs, self.blocking)?,
        )
    }

    /// The pipeline's name (in its events).
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The pipeline's (outermost) circuit breaker, for health checks and manual control.
    #[getter]
    fn circuit_breaker(&self) -> Option<PyCircuitBreaker> {
        self.inner
            .strategy()
            .inner()
            .breaker()
            .map(|b| PyCircuitBreaker::from_breaker(b.clone()))
    }
}

/// The strategies of `spec`, in its order.
fn chain_of(py: Python<'_>, spec: PipelineSpec) -> PyResult<Chain> {
    let mut layers = Vec::new();
    for (i, strategy) in spec.strategies.into_iter().enumerate() {
        let at = |e: stormwall::ConfigError| invalid(py)(e.within(&format!("strategies[{i}]")));
        layers.push(match strategy {
            StrategySpec::RateLimit(o) => Layer::RateLimit(RateLimiter::new(o).map_err(at)?),
            StrategySpec::Bulkhead(o) => Layer::Bulkhead(Bulkhead::new(o).map_err(at)?),
            StrategySpec::Timeout(o) => Layer::Timeout(Timeout::new(o).map_err(at)?),
            StrategySpec::Hedging(o) => {
                let o = o.handle(PyHandle::errors());
                Layer::Hedging(Hedging::new(o).map_err(at)?)
            }
            StrategySpec::Retry(o) => {
                let o = o
                    .handle(PyHandle::transient())
                    .delay_generator(PyDelay::default());
                Layer::Retry(Retry::new(o).map_err(at)?)
            }
            StrategySpec::CircuitBreaker(o) => {
                let o = o.handle(PyHandle::errors());
                Layer::Breaker(Breaker::Local(CircuitBreaker::new(o).map_err(at)?))
            }
        });
    }
    Ok(Chain(layers))
}
