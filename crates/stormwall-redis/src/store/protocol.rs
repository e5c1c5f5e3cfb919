//! What travels between a replica and Redis: the scripts' answers and the pub/sub messages,
//! parsed into one [`Snapshot`], and the names both sides use for states, reasons and
//! probe results.

use stormwall::circuit_breaker::{CircuitState, TransitionReason};

/// The shared state as one script answer or message saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub epoch: String,
    pub version: u64,
    pub state: CircuitState,
    /// Of the break, when Open (Redis's clock, at the time of the answer).
    pub remaining_ms: u64,
    /// The reason of the last change, as Redis named it (`created`, `manual`, ...).
    pub reason: String,
    pub from: CircuitState,
}

/// A script's answer: the state, plus what the script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub snapshot: Snapshot,
    /// The script moved the state (this replica decided the transition).
    pub transitioned: bool,
    /// The keys held something that is not a state (replaced by a new epoch).
    pub corrupt: bool,
    /// The half-open period's number.
    pub generation: u64,
    /// The probe-lease slot this script took (`ACQUIRE`), if any.
    pub lease: Option<u32>,
}

/// A pub/sub message: a change of state, and which replica's script made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub snapshot: Snapshot,
    pub replica: String,
}

/// How a probe ended, as the `PROBE` script reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeResult {
    Succeeded,
    Failed,
}

impl ProbeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Succeeded => "succeeded",
            ProbeResult::Failed => "failed",
        }
    }
}

pub(crate) fn state_from(name: &str) -> Option<CircuitState> {
    Some(match name {
        "closed" => CircuitState::Closed,
        "open" => CircuitState::Open,
        "half_open" => CircuitState::HalfOpen,
        "isolated" => CircuitState::Isolated,
        "disabled" => CircuitState::Disabled,
        _ => return None,
    })
}

/// The reason a transition is raised with. `created` and `rebased` (a new epoch) and
/// anything unknown are a resynchronisation.
pub(crate) fn reason_from(name: &str) -> TransitionReason {
    match name {
        "consecutive_failures" => TransitionReason::ConsecutiveFailures,
        "failure_ratio" => TransitionReason::FailureRatio,
        "slow_call_ratio" => TransitionReason::SlowCallRatio,
        "break_elapsed" => TransitionReason::BreakElapsed,
        "probe_failed" => TransitionReason::ProbeFailed,
        "probes_succeeded" => TransitionReason::ProbesSucceeded,
        "manual" => TransitionReason::Manual,
        _ => TransitionReason::Resynchronised,
    }
}

/// Parses a script's answer; `None` if it is not one.
pub(crate) fn parse_reply(values: &[String]) -> Option<Reply> {
    let n = |i: usize| values.get(i).and_then(|v| v.parse::<u64>().ok());
    let lease = n(8)? as u32;
    Some(Reply {
        snapshot: Snapshot {
            state: state_from(values.first()?)?,
            version: n(1)?,
            remaining_ms: n(2)?,
            reason: values.get(4)?.clone(),
            from: state_from(values.get(5)?)?,
            epoch: values.get(9)?.clone(),
        },
        transitioned: n(3)? == 1,
        corrupt: n(6)? == 1,
        generation: n(7)?,
        lease: (lease > 0).then_some(lease),
    })
}

/// Parses a message `epoch|version|state|remaining_ms|reason|from|replica`; `None` if it
/// is not one (someone else publishing on the channel).
pub(crate) fn parse_message(payload: &str) -> Option<Message> {
    let mut parts = payload.split('|');
    let mut next = || parts.next();
    let epoch = next()?.to_owned();
    let version = next()?.parse().ok()?;
    let state = state_from(next()?)?;
    let remaining_ms = next()?.parse().ok()?;
    let reason = next()?.to_owned();
    let from = state_from(next()?)?;
    let replica = next()?.to_owned();
    if epoch.is_empty() {
        return None;
    }
    Some(Message {
        snapshot: Snapshot {
            epoch,
            version,
            state,
            remaining_ms,
            reason,
            from,
        },
        replica,
    })
}

/// Random 64-bit ids (epochs, lease tokens, replica ids): std's per-process random hash
/// keys over a counter, so no two calls in a process repeat and processes differ.
pub(crate) fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_foreign_ones_are_refused() {
        let m = parse_message("ab12|7|open|2500|probe_failed|half_open|r1").unwrap();
        assert_eq!(m.snapshot.version, 7);
        assert_eq!(m.snapshot.state, CircuitState::Open);
        assert_eq!(m.snapshot.from, CircuitState::HalfOpen);
        assert_eq!(m.replica, "r1");
        for foreign in [
            "",
            "hello",
            "1|open|0",
            "e|x|open|0|r|closed|1",
            "e|1|banana|0|r|closed|1",
        ] {
            assert_eq!(parse_message(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| random_id()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
