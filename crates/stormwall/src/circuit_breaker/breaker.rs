use super::store::{Acquired, CallOutcome, Command, InMemoryStore, Rejection, StateStore, Ticket};
use super::{CircuitBreakerOptions, CircuitRejected, CircuitState, CircuitTransition};
use crate::pipeline::{Attach, Context, OnError, Predicate, Strategy};
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// Stops calling a dependency that keeps failing, and tries it again after a break.
///
/// A `CircuitBreaker` is a handle: clones share one state, so the same breaker can sit in a
/// pipeline, answer a health check and take manual commands. See
/// [`CircuitBreakerOptions`] for when it opens and closes.
pub struct CircuitBreaker<P = OnError, S = InMemoryStore> {
    shared: Arc<Shared<S>>,
    should_handle: P,
}

/// Called with every transition the breaker raises (see [`CircuitBreaker::on_transition`]).
pub type TransitionObserver = Arc<dyn Fn(CircuitTransition) + Send + Sync>;

struct Shared<S> {
    store: S,
    /// Added by `on_transition`; read on transitions only (rare), so a lock is fine.
    observers: std::sync::RwLock<Vec<TransitionObserver>>,
    /// `Some` only when the slow-call condition is configured (then calls are timed).
    slow_threshold: Option<Duration>,
    /// Set by the first pipeline the breaker is attached to.
    telemetry: OnceLock<Telemetry>,
}

impl<P: Clone, S> Clone for CircuitBreaker<P, S> {
    // Not derived: a derive would demand `S: Clone`, but clones share the store.
    fn clone(&self) -> Self {
        CircuitBreaker {
            shared: Arc::clone(&self.shared),
            should_handle: self.should_handle.clone(),
        }
    }
}

impl<P, S: StateStore> std::fmt::Debug for CircuitBreaker<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl<P> CircuitBreaker<P, InMemoryStore> {
    /// A breaker with `options`, validated, keeping its state in memory.
    pub fn new(options: CircuitBreakerOptions<P>) -> Result<Self, crate::ConfigError> {
        options
            .validate()
            .map_err(|e| e.within("circuit_breaker"))?;
        let store = InMemoryStore::new(&options);
        Ok(Self::from_parts(options, store))
    }
}

impl<P> CircuitBreaker<P, InMemoryStore> {
    /// A breaker with `options` that were validated already (a keyed breaker's per key).
    pub(crate) fn from_validated(options: CircuitBreakerOptions<P>) -> Self {
        let store = InMemoryStore::new(&options);
        Self::from_parts(options, store)
    }
}

impl<P, S> CircuitBreaker<P, S> {
    /// Reports to `telemetry` from now on, unless a pipeline attached one before (the
    /// first wins, as with [`Attach`]).
    pub(crate) fn report_to(&self, telemetry: &Telemetry) {
        let _ = self.shared.telemetry.set(telemetry.clone());
    }
}

impl<P, S: StateStore> CircuitBreaker<P, S> {
    /// A breaker with `options`, validated, keeping its state in `store` (which was built
    /// from the same options).
    pub fn with_store(
        options: CircuitBreakerOptions<P>,
        store: S,
    ) -> Result<Self, crate::ConfigError> {
        options
            .validate()
            .map_err(|e| e.within("circuit_breaker"))?;
        Ok(Self::from_parts(options, store))
    }

    fn from_parts(options: CircuitBreakerOptions<P>, store: S) -> Self {
        let shared = Arc::new(Shared {
            store,
            observers: std::sync::RwLock::new(Vec::new()),
            slow_threshold: options.slow_call.map(|s| s.duration_threshold),
            telemetry: OnceLock::new(),
        });
        // Weak: the store lives inside `shared`; a strong reference would keep it alive.
        let weak = Arc::downgrade(&shared);
        shared.store.set_transition_sink(Arc::new(move |t| {
            if let Some(shared) = weak.upgrade() {
                shared.emit(t);
            }
        }));
        CircuitBreaker {
            shared,
            should_handle: options.should_handle,
        }
    }

    /// Whether `outcome` counts as a failure (the options' `should_handle`).
    pub(crate) fn is_failure<T, E>(&self, outcome: &Result<T, Error<E>>) -> bool
    where
        P: Predicate<T, E>,
    {
        self.should_handle.test(outcome)
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.shared.store.state()
    }

    /// The store holding the state.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Asks to run one call. On `Ok`, run it and report its outcome through the permit; a
    /// permit dropped without a report (a cancelled call) gives back its half-open slot.
    ///
    /// This is the breaker without a pipeline, for code that is not a closure (a proxy).
    #[inline(always)]
    pub fn try_acquire(&self) -> Result<Permit<'_, S>, CircuitRejected> {
        let Acquired { result, transition } = self.shared.store.try_acquire();
        if let Some(t) = transition {
            self.shared.emit(t);
        }
        match result {
            Ok(ticket) => Ok(Permit {
                shared: &self.shared,
                ticket: Some(ticket),
                started: self.shared.slow_threshold.map(|_| Instant::now()),
            }),
            Err(r) => Err(self.shared.rejected(r)),
        }
    }

    /// Calls `observe` with every transition from now on, on the thread that caused it
    /// (keep it short). Feature switches bound to the breaker use it.
    pub fn on_transition(&self, observe: impl Fn(CircuitTransition) + Send + Sync + 'static) {
        self.shared
            .observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(observe));
    }

    /// Forces the circuit open until [`close`](Self::close): every call is rejected.
    pub fn isolate(&self) {
        self.command(Command::Isolate);
    }

    /// Forces the circuit closed, with a fresh window (also ends isolation or disabling).
    pub fn close(&self) {
        self.command(Command::Close);
    }

    /// Admits every call and counts nothing until [`close`](Self::close).
    pub fn disable(&self) {
        self.command(Command::Disable);
    }

    fn command(&self, command: Command) {
        if let Some(t) = self.shared.store.command(command) {
            self.shared.emit(t);
        }
    }
}

impl<S> Shared<S> {
    #[inline(never)]
    fn rejected(&self, r: Rejection) -> CircuitRejected {
        let rejected = CircuitRejected {
            state: r.state,
            retry_after: r.retry_after,
        };
        if let Some(telemetry) = self.telemetry.get() {
            telemetry.emit(crate::telemetry::strategy::CIRCUIT_BREAKER, || {
                Event::CircuitRejected(rejected)
            });
        }
        rejected
    }

    #[cold]
    fn emit(&self, transition: CircuitTransition) {
        if let Some(telemetry) = self.telemetry.get() {
            telemetry.emit(crate::telemetry::strategy::CIRCUIT_BREAKER, || {
                Event::CircuitTransition(transition)
            });
        }
        let observers = self.observers.read().unwrap_or_else(|e| e.into_inner());
        for observe in observers.iter() {
            observe(transition);
        }
    }
}

/// The right to run one call through a [`CircuitBreaker`]. Report the outcome with
/// [`record_success`](Self::record_success) or [`record_failure`](Self::record_failure);
/// dropping it unreported means the call was cancelled.
#[must_use = "report the call's outcome, or drop the permit if the call was cancelled"]
pub struct Permit<'a, S: StateStore = InMemoryStore> {
    shared: &'a Shared<S>,
    /// Taken by the first report; `None` afterwards so `Drop` does nothing.
    ticket: Option<Ticket>,
    /// When the call started; `Some` only when slow calls are counted.
    started: Option<Instant>,
}

impl<S: StateStore> std::fmt::Debug for Permit<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("ticket", &self.ticket)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl<S: StateStore> Permit<'_, S> {
    /// The call succeeded.
    pub fn record_success(mut self) {
        self.record(false);
    }

    /// The call failed.
    pub fn record_failure(mut self) {
        self.record(true);
    }

    /// The call ended; `failure` says how.
    #[inline(always)]
    pub fn record(&mut self, failure: bool) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let slow = match (self.started, self.shared.slow_threshold) {
            (Some(started), Some(threshold)) => started.elapsed() >= threshold,
            _ => false,
        };
        if let Some(t) = self
            .shared
            .store
            .record(ticket, CallOutcome { failure, slow })
        {
            self.shared.emit(t);
        }
    }
}

impl<S: StateStore> Drop for Permit<'_, S> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.store.release(ticket);
        }
    }
}

impl<P, S> Attach for CircuitBreaker<P, S> {
    fn attach(&mut self, telemetry: &Telemetry) {
        // The first pipeline wins: a breaker shared by several reports under the first name.
        self.report_to(telemetry);
    }
}

impl<T, E, P, S> Strategy<T, E> for CircuitBreaker<P, S>
where
    P: Predicate<T, E> + Send + Sync,
    S: StateStore,
{
    #[inline]
    fn execute<F, Fut>(
        &self,
        ctx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send
    where
        F: Fn(Context) -> Fut + Copy + Send + Sync,
        Fut: Future<Output = Result<T, Error<E>>> + Send,
        T: Send,
        E: Send,
    {
        // A hand-written future rather than an `async` block: the permit and the
        // operation sit side by side, and the success path is one poll and one report.
        match self.try_acquire() {
            Ok(permit) => BreakerFuture::Admitted {
                inner: op(ctx),
                permit: Some(permit),
                should_handle: &self.should_handle,
            },
            Err(rejected) => BreakerFuture::Rejected {
                retry_after: Some(rejected.retry_after),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The operation, holding the breaker's permit until it reports the outcome (a dropped
    /// future drops the permit: a probe's slot is given back).
    #[project = BreakerProjection]
    enum BreakerFuture<'a, Fut, P, S: StateStore> {
        Admitted {
            #[pin]
            inner: Fut,
            permit: Option<Permit<'a, S>>,
            should_handle: &'a P,
        },
        Rejected {
            retry_after: Option<Option<Duration>>,
        },
    }
}

impl<T, E, Fut, P, S> Future for BreakerFuture<'_, Fut, P, S>
where
    Fut: Future<Output = Result<T, Error<E>>>,
    P: Predicate<T, E>,
    S: StateStore,
{
    type Output = Result<T, Error<E>>;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            BreakerProjection::Admitted {
                inner,
                permit,
                should_handle,
            } => {
                let outcome = std::task::ready!(inner.poll(cx));
                if let Some(mut permit) = permit.take() {
                    permit.record(should_handle.test(&outcome));
                }
                std::task::Poll::Ready(outcome)
            }
            BreakerProjection::Rejected { retry_after } => {
                std::task::Poll::Ready(Err(Error::CircuitOpen {
                    retry_after: retry_after.take().flatten(),
                }))
            }
        }
    }
}
