//! Where a breaker's state lives: the [`StateStore`] trait and the in-memory default.
//!
//! The breaker front end ([`CircuitBreaker`](super::CircuitBreaker)) decides what an
//! outcome *is* (failure? slow?); the store decides what it *means* (admit, reject, trip,
//! close). A shared store (Redis) implements the same trait.

use super::controller::{Controller, ProbeVerdict, WindowCounts};
use super::window::{CountWindow, TimeWindow, Window};
use super::{
    CircuitBreakerOptions, CircuitState, CircuitTransition, SamplingWindow, TransitionOrigin,
    TransitionReason,
};
use crate::clock::{saturating_nanos, Stopwatch};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// An admitted call, to be handed back to [`StateStore::record`] or
/// [`StateStore::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Admitted while closed (or disabled): its outcome feeds the window.
    Normal,
    /// A half-open probe, admitted in the half-open period numbered `generation`: its
    /// outcome closes or reopens the circuit, if that period is still current.
    Probe {
        /// The state generation the probe was admitted in.
        generation: u64,
        /// The lease that let it run, when the store shares its state (`None` in memory).
        lease: Option<ProbeLease>,
    },
}

/// A probe slot taken in a shared store: which slot, and the token that proves this
/// acquisition holds it (unique per acquisition, so a stale holder cannot free another's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeLease {
    /// The slot, 1..=`permitted_calls_in_half_open`.
    pub slot: u32,
    /// The holder's token.
    pub token: u64,
}

/// A call the store refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The state that refused it.
    pub state: CircuitState,
    /// How long until the break ends (Open only).
    pub retry_after: Option<Duration>,
}

/// How an admitted call ended, as the front end classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    /// The outcome counts as a failure.
    pub failure: bool,
    /// The call took at least the slow-call threshold.
    pub slow: bool,
}

/// What an attempt to acquire did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// The ticket, or why there is none.
    pub result: Result<Ticket, Rejection>,
    /// A transition the attempt caused (Open → HalfOpen when the break had elapsed).
    pub transition: Option<CircuitTransition>,
}

/// A manual command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Force open until told otherwise (reject everything).
    Isolate,
    /// Force closed, with a fresh window.
    Close,
    /// Admit everything and count nothing until told otherwise.
    Disable,
}

/// The state of one circuit breaker, wherever it lives.
///
/// Implementations must raise each transition exactly once (return it from exactly one
/// call) and number transitions without gaps.
pub trait StateStore: Send + Sync + 'static {
    /// Admits or rejects a call.
    fn try_acquire(&self) -> Acquired;
    /// Reports how an admitted call ended.
    fn record(&self, ticket: Ticket, outcome: CallOutcome) -> Option<CircuitTransition>;
    /// Hands back a ticket whose call was cancelled before it ended (frees a probe slot).
    fn release(&self, ticket: Ticket);
    /// Applies a manual command.
    fn command(&self, command: Command) -> Option<CircuitTransition>;
    /// The current state.
    fn state(&self) -> CircuitState;

    /// Where to raise transitions the store learns of later rather than as the result of
    /// a call (a shared store decides off the caller's path). The breaker sets it once when
    /// it is built; the default store returns every transition from its calls and ignores it.
    fn set_transition_sink(&self, _sink: TransitionSink) {}
}

/// Receives transitions a store raises on its own (see
/// [`StateStore::set_transition_sink`]).
pub type TransitionSink = std::sync::Arc<dyn Fn(CircuitTransition) + Send + Sync>;

/// The default store: atomics for the fast paths, one mutex for transitions.
///
/// Fast paths, lock-free: admitting a call while closed; recording a success while closed;
/// rejecting while open. Everything that may change the state (a failure, a slow call, the
/// end of a break, a probe's outcome, a command) takes the mutex, so transitions are
/// serialised and each is returned exactly once.
pub struct InMemoryStore {
    controller: Controller,
    /// Written only under `transitions`; read lock-free by the fast paths.
    state: AtomicU8,
    /// Nanoseconds since `origin` at which the break ends; meaningful while Open.
    open_until: AtomicU64,
    /// Failures in a row while closed; reset by a success (lock-free) or a close.
    consecutive_failures: AtomicU32,
    /// `None` when no ratio condition is configured.
    window: Option<Window>,
    /// Reads nanoseconds since the store was made: all times below are in that unit.
    stopwatch: Stopwatch,
    transitions: Mutex<Transitions>,
}

/// What only changes under the lock.
#[derive(Debug, Default)]
struct Transitions {
    /// Bumped by every transition; a probe from an older generation is ignored.
    generation: u64,
    /// The number of the last transition raised.
    sequence: u64,
    /// Opens since the last close (for the break duration generator).
    consecutive_opens: u32,
    probes_in_flight: u32,
    probe_successes: u32,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("state", &self.state())
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

impl InMemoryStore {
    /// A closed breaker with the thresholds of `options` (assumed validated).
    pub fn new<P>(options: &CircuitBreakerOptions<P>) -> Self {
        // Only ratio conditions read the window: a consecutive-failures breaker keeps none,
        // so its success path touches no clock.
        let controller = Controller::new(options);
        let window = match options.sampling_window {
            _ if !controller.needs_window() => None,
            SamplingWindow::Time => Some(Window::Time(TimeWindow::new(options.sampling_duration))),
            SamplingWindow::Count(n) => Some(Window::Count(CountWindow::new(n))),
        };
        InMemoryStore {
            controller,
            state: AtomicU8::new(CircuitState::Closed as u8),
            open_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            window,
            stopwatch: Stopwatch::start(options.clock),
            transitions: Mutex::new(Transitions::default()),
        }
    }

    #[inline]
    fn now(&self) -> u64 {
        self.stopwatch.nanos()
    }

    fn reset_window(&self) {
        if let Some(window) = &self.window {
            window.reset();
        }
    }

    #[inline]
    fn load_state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Transitions> {
        // A listener panicking elsewhere cannot leave `Transitions` half-written: every
        // change to it is a plain field store, so a poisoned lock is still consistent.
        self.transitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves to `to`; the caller holds the lock.
    fn transition(
        &self,
        t: &mut Transitions,
        to: CircuitState,
        reason: TransitionReason,
        now: u64,
    ) -> Option<CircuitTransition> {
        let from = self.load_state();
        if from == to {
            return None;
        }
        t.generation += 1;
        t.sequence += 1;
        t.probes_in_flight = 0;
        t.probe_successes = 0;
        let mut break_duration = None;
        match to {
            CircuitState::Open => {
                t.consecutive_opens += 1;
                let duration = self.controller.break_duration(t.consecutive_opens);
                let until = now.saturating_add(saturating_nanos(duration));
                self.open_until.store(until, Ordering::Release);
                break_duration = Some(duration);
            }
            CircuitState::Closed => {
                t.consecutive_opens = 0;
                self.reset_window();
                self.consecutive_failures.store(0, Ordering::Release);
            }
            _ => {}
        }
        self.state.store(to as u8, Ordering::Release);
        Some(CircuitTransition {
            from,
            to,
            reason,
            break_duration,
            sequence: t.sequence,
            origin: TransitionOrigin::Local,
        })
    }

    /// Whether the closed-state counters call for a trip, and why.
    fn trip_reason(&self, now: u64) -> Option<TransitionReason> {
        let consecutive = self.consecutive_failures.load(Ordering::Acquire);
        self.controller.trip_reason(consecutive, || {
            let counts = self.window.as_ref()?.counts(now);
            Some(WindowCounts {
                total: counts.total,
                failures: counts.failures,
                slow: counts.slow,
            })
        })
    }

    fn admit_probe(&self, t: &mut Transitions) -> Result<Ticket, Rejection> {
        if t.probes_in_flight < self.controller.permitted_calls_in_half_open() {
            t.probes_in_flight += 1;
            Ok(Ticket::Probe {
                generation: t.generation,
                lease: None,
            })
        } else {
            Err(Rejection {
                state: CircuitState::HalfOpen,
                retry_after: None,
            })
        }
    }

    /// A failure or slow call while closed: may trip, so under the lock.
    #[cold]
    #[inline(never)]
    fn record_closed_locked(&self, outcome: CallOutcome) -> Option<CircuitTransition> {
        let now = self.now();
        let mut t = self.lock();
        if self.load_state() != CircuitState::Closed {
            return None;
        }
        if let Some(window) = &self.window {
            window.record(now, outcome.failure, outcome.slow);
        }
        if outcome.failure {
            self.consecutive_failures.fetch_add(1, Ordering::AcqRel);
        } else {
            self.consecutive_failures.store(0, Ordering::Release);
        }
        let reason = self.trip_reason(now)?;
        self.transition(&mut t, CircuitState::Open, reason, now)
    }

    /// A half-open probe's outcome: closes or reopens the circuit.
    #[cold]
    #[inline(never)]
    fn record_probe(&self, generation: u64, outcome: CallOutcome) -> Option<CircuitTransition> {
        let mut t = self.lock();
        if self.load_state() != CircuitState::HalfOpen || t.generation != generation {
            return None;
        }
        t.probes_in_flight = t.probes_in_flight.saturating_sub(1);
        let now = self.now();
        let (to, reason) = match self.controller.probe_verdict(outcome, t.probe_successes) {
            ProbeVerdict::Reopen => (CircuitState::Open, TransitionReason::ProbeFailed),
            ProbeVerdict::Close => (CircuitState::Closed, TransitionReason::ProbesSucceeded),
            ProbeVerdict::Continue => {
                t.probe_successes += 1;
                return None;
            }
        };
        self.transition(&mut t, to, reason, now)
    }

    /// The decision the state makes on its own: `None` when the call may become a probe
    /// (the break has elapsed, or the circuit is half-open), which needs the lock.
    #[inline(always)]
    fn decide_unlocked(&self, state: CircuitState, now: impl FnOnce() -> u64) -> Option<Acquired> {
        match state {
            CircuitState::Closed | CircuitState::Disabled => Some(Acquired::admitted()),
            CircuitState::Isolated => Some(Acquired::rejected(CircuitState::Isolated, None)),
            CircuitState::Open => {
                let until = self.open_until.load(Ordering::Acquire);
                let remaining = until.checked_sub(now()).filter(|&r| r > 0)?;
                Some(Acquired::rejected(
                    CircuitState::Open,
                    Some(Duration::from_nanos(remaining)),
                ))
            }
            CircuitState::HalfOpen => None,
        }
    }

    /// The slow path of `try_acquire`: Open past its break, or HalfOpen. The state is read
    /// again under the lock, since another caller may have moved it meanwhile.
    #[cold]
    #[inline(never)]
    fn acquire_locked(&self, now: u64) -> Acquired {
        let mut t = self.lock();
        let state = self.load_state();
        if let Some(decided) = self.decide_unlocked(state, || now) {
            return decided;
        }
        let transition = if state == CircuitState::Open {
            self.transition(
                &mut t,
                CircuitState::HalfOpen,
                TransitionReason::BreakElapsed,
                now,
            )
        } else {
            None
        };
        Acquired {
            result: self.admit_probe(&mut t),
            transition,
        }
    }
}

impl InMemoryStore {
    /// Moves to `state` without raising a transition: for a store that keeps this one as
    /// a shadow of state decided elsewhere (a shared store whose replicas may lose their
    /// link), so that it continues from there. `remaining` is the rest of the break when
    /// `state` is Open. A move to Closed starts a fresh window.
    pub fn follow(&self, state: CircuitState, remaining: Option<Duration>) {
        let mut t = self.lock();
        let now = self.now();
        if state == CircuitState::Open {
            let until = now.saturating_add(saturating_nanos(remaining.unwrap_or_default()));
            self.open_until.store(until, Ordering::Release);
        }
        if self.load_state() == state {
            return;
        }
        t.generation += 1;
        t.probes_in_flight = 0;
        t.probe_successes = 0;
        match state {
            CircuitState::Open => t.consecutive_opens = t.consecutive_opens.max(1),
            CircuitState::Closed => {
                t.consecutive_opens = 0;
                self.reset_window();
                self.consecutive_failures.store(0, Ordering::Release);
            }
            _ => {}
        }
        self.state.store(state as u8, Ordering::Release);
    }
}

impl Acquired {
    /// A call admitted while closed, with no transition.
    pub fn admitted() -> Self {
        Acquired {
            result: Ok(Ticket::Normal),
            transition: None,
        }
    }

    /// A call refused by `state`, with no transition.
    pub fn rejected(state: CircuitState, retry_after: Option<Duration>) -> Self {
        Acquired {
            result: Err(Rejection { state, retry_after }),
            transition: None,
        }
    }
}

impl StateStore for InMemoryStore {
    #[inline(always)]
    fn try_acquire(&self) -> Acquired {
        let state = self.load_state();
        if matches!(state, CircuitState::Closed | CircuitState::Disabled) {
            // The hot path: no clock, no lock.
            return Acquired::admitted();
        }
        // While open, the common case is a rejection, also without the lock. The clock is
        // read only when the state needs it (open: has the break ended?).
        let mut now = None;
        self.decide_unlocked(state, || *now.get_or_insert_with(|| self.now()))
            .unwrap_or_else(|| self.acquire_locked(now.unwrap_or_else(|| self.now())))
    }

    #[inline(always)]
    fn record(&self, ticket: Ticket, outcome: CallOutcome) -> Option<CircuitTransition> {
        match ticket {
            Ticket::Normal => {
                if self.load_state() != CircuitState::Closed {
                    // Admitted before a trip, or while disabled: nothing to learn now.
                    return None;
                }
                if !outcome.failure && !outcome.slow {
                    // The hot path: a success cannot trip the breaker, so no lock.
                    if let Some(window) = &self.window {
                        let now_nanos = if window.needs_clock() { self.now() } else { 0 };
                        window.record(now_nanos, false, false);
                    }
                    if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                        self.consecutive_failures.store(0, Ordering::Relaxed);
                    }
                    return None;
                }
                self.record_closed_locked(outcome)
            }
            Ticket::Probe { generation, .. } => self.record_probe(generation, outcome),
        }
    }

    fn release(&self, ticket: Ticket) {
        if let Ticket::Probe { generation, .. } = ticket {
            let mut t = self.lock();
            if self.load_state() == CircuitState::HalfOpen && t.generation == generation {
                t.probes_in_flight = t.probes_in_flight.saturating_sub(1);
            }
        }
    }

    fn command(&self, command: Command) -> Option<CircuitTransition> {
        let mut t = self.lock();
        let now = self.now();
        let to = match command {
            Command::Isolate => CircuitState::Isolated,
            Command::Close => CircuitState::Closed,
            Command::Disable => CircuitState::Disabled,
        };
        if to == CircuitState::Closed && self.load_state() == CircuitState::Closed {
            // Already closed: a close still starts a fresh window.
            self.reset_window();
            self.consecutive_failures.store(0, Ordering::Release);
            return None;
        }
        self.transition(&mut t, to, TransitionReason::Manual, now)
    }

    fn state(&self) -> CircuitState {
        self.load_state()
    }
}
