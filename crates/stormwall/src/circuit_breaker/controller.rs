//! The breaker's rules without its state: when the closed-state counts trip the circuit, how
//! long a break lasts, what a probe's outcome does.
//!
//! Both stores read their decisions from here: [`InMemoryStore`](super::InMemoryStore)
//! applies them to its atomics; a shared store (stormwall-redis) hands the same thresholds
//! to the script that applies them atomically in Redis. Nothing here reads a clock or holds
//! a lock, so every rule can be checked by calling it.

use super::store::CallOutcome;
use super::TransitionReason;
use super::{BreakDurationArgs, BreakDurationGenerator, CircuitBreakerOptions, SamplingWindow};
use std::time::Duration;

/// What a sampling window holds: calls, failures and slow calls in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowCounts {
    /// Calls that ended within the window.
    pub total: u32,
    /// Of those, failures.
    pub failures: u32,
    /// Of those, calls at least as slow as the slow-call threshold.
    pub slow: u32,
}

/// What a half-open probe's outcome does to the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// The probe failed: open again.
    Reopen,
    /// Enough probes succeeded: close.
    Close,
    /// A success, but more are needed.
    Continue,
}

/// The rules of one breaker, copied out of its options (the outcome predicate stays with
/// the front end).
#[derive(Debug, Clone)]
pub struct Controller {
    failure_ratio: Option<f64>,
    slow_call_ratio: Option<f64>,
    minimum_throughput: u32,
    consecutive_failures: Option<u32>,
    break_duration: Duration,
    generator: Option<BreakDurationGenerator>,
    permitted_calls_in_half_open: u32,
    success_threshold: u32,
    sampling_window: SamplingWindow,
    sampling_duration: Duration,
}

impl Controller {
    /// The rules of `options` (assumed validated).
    pub fn new<P>(options: &CircuitBreakerOptions<P>) -> Self {
        Controller {
            failure_ratio: options.failure_ratio,
            slow_call_ratio: options.slow_call.map(|s| s.ratio),
            minimum_throughput: options.minimum_throughput,
            consecutive_failures: options.consecutive_failures,
            break_duration: options.break_duration,
            generator: options.break_duration_generator.clone(),
            permitted_calls_in_half_open: options.permitted_calls_in_half_open,
            success_threshold: options.success_threshold,
            sampling_window: options.sampling_window,
            sampling_duration: options.sampling_duration,
        }
    }

    /// Whether a ratio condition is configured (only then does a window need keeping).
    pub fn needs_window(&self) -> bool {
        self.failure_ratio.is_some() || self.slow_call_ratio.is_some()
    }

    /// Why the closed-state counts call for a trip, if they do: `consecutive` failures in a
    /// row first, then the window's ratios (read only when a ratio is configured, and only
    /// counted once `minimum_throughput` calls are in it).
    pub fn trip_reason(
        &self,
        consecutive: u32,
        counts: impl FnOnce() -> Option<WindowCounts>,
    ) -> Option<TransitionReason> {
        if self.consecutive_failures.is_some_and(|n| consecutive >= n) {
            return Some(TransitionReason::ConsecutiveFailures);
        }
        if !self.needs_window() {
            return None;
        }
        let counts = counts()?;
        if counts.total == 0 || counts.total < self.minimum_throughput {
            return None;
        }
        let total = f64::from(counts.total);
        if self
            .failure_ratio
            .is_some_and(|r| f64::from(counts.failures) / total >= r)
        {
            return Some(TransitionReason::FailureRatio);
        }
        if self
            .slow_call_ratio
            .is_some_and(|r| f64::from(counts.slow) / total >= r)
        {
            return Some(TransitionReason::SlowCallRatio);
        }
        None
    }

    /// How long the circuit stays open the `consecutive_opens`-th time in a row (1 for the
    /// first open after a close).
    pub fn break_duration(&self, consecutive_opens: u32) -> Duration {
        match &self.generator {
            Some(g) => g.generate(BreakDurationArgs { consecutive_opens }),
            None => self.break_duration,
        }
    }

    /// Whether a probe's outcome counts as failed: a failure, or a slow call when the
    /// breaker watches slow calls.
    pub fn probe_failed(&self, outcome: CallOutcome) -> bool {
        outcome.failure || (outcome.slow && self.slow_call_ratio.is_some())
    }

    /// What a probe's outcome does, given the probes that already succeeded in this
    /// half-open period.
    pub fn probe_verdict(&self, outcome: CallOutcome, successes_before: u32) -> ProbeVerdict {
        if self.probe_failed(outcome) {
            ProbeVerdict::Reopen
        } else if successes_before + 1 >= self.success_threshold {
            ProbeVerdict::Close
        } else {
            ProbeVerdict::Continue
        }
    }

    /// `failure_ratio`, if configured.
    pub fn failure_ratio(&self) -> Option<f64> {
        self.failure_ratio
    }

    /// The slow-call ratio, if configured.
    pub fn slow_call_ratio(&self) -> Option<f64> {
        self.slow_call_ratio
    }

    /// `minimum_throughput`.
    pub fn minimum_throughput(&self) -> u32 {
        self.minimum_throughput
    }

    /// `consecutive_failures`, if configured.
    pub fn consecutive_failures(&self) -> Option<u32> {
        self.consecutive_failures
    }

    /// `permitted_calls_in_half_open`.
    pub fn permitted_calls_in_half_open(&self) -> u32 {
        self.permitted_calls_in_half_open
    }

    /// `success_threshold`.
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold
    }

    /// The kind of sampling window.
    pub fn sampling_window(&self) -> SamplingWindow {
        self.sampling_window
    }

    /// `sampling_duration` (time windows).
    pub fn sampling_duration(&self) -> Duration {
        self.sampling_duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(failure: bool, slow: bool) -> CallOutcome {
        CallOutcome { failure, slow }
    }

    #[test]
    fn ratios_count_only_from_minimum_throughput() {
        let c = Controller::new(
            &CircuitBreakerOptions::new()
                .failure_ratio(0.5)
                .minimum_throughput(4),
        );
        let counts = |total, failures| {
            move || {
                Some(WindowCounts {
                    total,
                    failures,
                    slow: 0,
                })
            }
        };
        assert_eq!(c.trip_reason(0, counts(3, 3)), None);
        assert_eq!(
            c.trip_reason(0, counts(4, 2)),
            Some(TransitionReason::FailureRatio)
        );
        assert_eq!(c.trip_reason(0, counts(4, 1)), None);
    }

    #[test]
    fn consecutive_failures_come_first() {
        let mut options = CircuitBreakerOptions::new().consecutive_failures(3);
        let all_failed = || {
            Some(WindowCounts {
                total: 100,
                failures: 100,
                slow: 0,
            })
        };
        let c = Controller::new(&options);
        assert_eq!(
            c.trip_reason(3, all_failed),
            Some(TransitionReason::ConsecutiveFailures)
        );
        assert_eq!(
            c.trip_reason(2, all_failed),
            Some(TransitionReason::FailureRatio)
        );
        // Without a ratio, the window is never read.
        options.failure_ratio = None;
        let c = Controller::new(&options);
        assert!(!c.needs_window());
        assert_eq!(
            c.trip_reason(2, || unreachable!("no ratio configured")),
            None
        );
    }

    #[test]
    fn probes_close_after_the_success_threshold_and_reopen_on_failure() {
        let c = Controller::new(&CircuitBreakerOptions::new().success_threshold(2));
        assert_eq!(
            c.probe_verdict(outcome(false, false), 0),
            ProbeVerdict::Continue
        );
        assert_eq!(
            c.probe_verdict(outcome(false, false), 1),
            ProbeVerdict::Close
        );
        assert_eq!(
            c.probe_verdict(outcome(true, false), 1),
            ProbeVerdict::Reopen
        );
        // Slow counts against a probe only when slow calls are watched.
        assert_eq!(
            c.probe_verdict(outcome(false, true), 1),
            ProbeVerdict::Close
        );
    }
}
