use super::CircuitState;
use std::time::Duration;

/// Why a circuit breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransitionReason {
    /// The failure ratio over the sampling window reached `failure_ratio` with at least
    /// `minimum_throughput` calls.
    FailureRatio,
    /// `consecutive_failures` calls in a row failed.
    ConsecutiveFailures,
    /// The slow-call ratio over the sampling window reached the slow-call ratio.
    SlowCallRatio,
    /// The break duration elapsed and a call arrived (Open → HalfOpen).
    BreakElapsed,
    /// A half-open probe failed (HalfOpen → Open).
    ProbeFailed,
    /// Enough half-open probes succeeded (HalfOpen → Closed).
    ProbesSucceeded,
    /// Manual control: isolate, close or disable.
    Manual,
    /// The breaker took a state decided elsewhere without a transition of its own to show
    /// for it: a shared store found its state recreated (Redis lost its keys: a new epoch)
    /// or took over from its local shadow when the shared state became unreachable.
    Resynchronised,
}

/// Raised exactly once for every change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitTransition {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Why.
    pub reason: TransitionReason,
    /// For transitions to Open: how long the circuit stays open.
    pub break_duration: Option<Duration>,
    /// 1 for the breaker's first transition, then counting up without gaps: listeners that
    /// receive events from several threads can restore the order.
    pub sequence: u64,
    /// Whether this breaker decided the transition or adopted it from another replica
    /// sharing its state.
    pub origin: TransitionOrigin,
}

/// Where a transition was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TransitionOrigin {
    /// Here: by this breaker's own calls or commands.
    #[default]
    Local,
    /// By another replica sharing the state (a Redis-shared breaker), and adopted here.
    Remote,
}

impl TransitionOrigin {
    /// `local` or `remote`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionOrigin::Local => "local",
            TransitionOrigin::Remote => "remote",
        }
    }
}

/// Raised when the breaker rejects a call without running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitRejected {
    /// The state that rejected the call: Open, HalfOpen (all probes taken) or Isolated.
    pub state: CircuitState,
    /// The time until the break ends (Open only).
    pub retry_after: Option<Duration>,
}
