//! Where strategies read the time.
//!
//! The default is tokio's clock, so `tokio::time::pause` and `advance` drive every strategy
//! in tests. On this project's machines reading it costs ≈ 23 ns (`clock_gettime`); for the
//! hottest paths (a rate limiter, a breaker's time window) [`Clock::Fast`] reads the CPU's
//! time-stamp counter through `quanta` instead, a few ns, at the price of ignoring tokio's
//! paused clock.

use std::cell::Cell;
use std::time::Duration;

thread_local! {
    /// While a timeout polls its operation: `Some(moment)` once something read tokio's
    /// clock in this poll, `Some(None)` before; `None` outside.
    static POLL_NOW: Cell<Option<Option<tokio::time::Instant>>> = const { Cell::new(None) };

    /// The end of the last attempt that succeeded in the current poll of an observed
    /// execution ([`success_end_in`]).
    static SUCCESS_END: Cell<Option<Mark>> = const { Cell::new(None) };
}

/// Records `end` as the moment an attempt succeeded, for the execution around it.
#[inline]
pub(crate) fn note_success_end(end: Mark) {
    SUCCESS_END.set(Some(end));
}

/// Runs `poll` (one poll of an observed execution) and returns with its result the end
/// reading of the last attempt that succeeded during it, if one did.
///
/// An execution that succeeds in the same poll as its last attempt ended with that
/// attempt: what runs between the two is the strategies' bookkeeping on the way out
/// (a breaker's record, a retry's check), nanoseconds. So the execution's duration ends at
/// the attempt's reading instead of a second `clock_gettime` (≈ 23 ns here). Everything
/// else — a failure, a fallback, a poll without an attempt — reads the clock afresh.
#[inline]
pub(crate) fn success_end_in<R>(poll: impl FnOnce() -> R) -> (R, Option<Mark>) {
    let around = SUCCESS_END.replace(None);
    let result = poll();
    (result, SUCCESS_END.replace(around))
}

/// tokio's `Instant::now()`, read at most once per poll inside a timeout: the strategies
/// that need a *start* — an inner timeout's deadline, a breaker's window bucket, a rate
/// limiter's check, the telemetry's attempt start marks — share the reading the enclosing
/// timeout took. Within one synchronous poll no timer fires and (paused or not) tokio's
/// clock does not advance for anyone waiting, so the shared reading is as good as a fresh
/// one; it saves a `clock_gettime` (≈ 23 ns here) per strategy. Ends of durations are
/// read fresh (an execution's may reuse its last attempt's, see [`success_end_in`]).
/// Outside a timeout's poll: a fresh reading.
#[inline]
pub(crate) fn poll_now() -> tokio::time::Instant {
    POLL_NOW.with(|cell| match cell.get() {
        Some(Some(now)) => now,
        Some(None) => {
            let now = tokio::time::Instant::now();
            cell.set(Some(Some(now)));
            now
        }
        None => tokio::time::Instant::now(),
    })
}

/// Runs `poll` with `seed` as the poll's shared reading (`None`: read on first use), then
/// restores the reading of the poll around it. A timeout calls it around each poll of its
/// operation: the strategies inside share one reading per poll, and on its first poll the
/// reading its own deadline was computed from.
#[inline]
pub(crate) fn sharing_now<R>(seed: Option<tokio::time::Instant>, poll: impl FnOnce() -> R) -> R {
    let around = POLL_NOW.replace(Some(seed));
    let result = poll();
    POLL_NOW.set(around);
    result
}

/// Which clock a strategy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// tokio's clock (follows `tokio::time::pause`). Default.
    #[default]
    Tokio,
    /// The CPU's time-stamp counter, through `quanta`: several times cheaper to read, but
    /// not paused by `tokio::time::pause` — do not use it in paused-clock tests.
    Fast,
}

/// A clock and the moment it was started: reads nanoseconds since then.
#[derive(Debug, Clone)]
pub(crate) struct Stopwatch {
    tokio: tokio::time::Instant,
    /// The calibrated counter and its raw reading at the start, for [`Clock::Fast`].
    fast: Option<(quanta::Clock, u64)>,
}

impl Stopwatch {
    pub(crate) fn start(clock: Clock) -> Self {
        Stopwatch {
            tokio: tokio::time::Instant::now(),
            fast: (clock == Clock::Fast).then(|| {
                let counter = quanta::Clock::new();
                let start = counter.raw();
                (counter, start)
            }),
        }
    }

    /// Nanoseconds since the start.
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        self.nanos_from_ticks(self.ticks())
    }

    /// The time since the start in the stopwatch's own *ticks*: nanoseconds on tokio's
    /// clock, raw counter ticks on the fast one (no scaling per reading). Convert durations
    /// with [`ticks_from_nanos`](Self::ticks_from_nanos) once, and answers back with
    /// [`nanos_from_ticks`](Self::nanos_from_ticks).
    #[inline]
    pub(crate) fn ticks(&self) -> u64 {
        match &self.fast {
            Some((counter, start)) => counter.raw().saturating_sub(*start),
            None => self.tokio_nanos(),
        }
    }

    /// `nanos` in this stopwatch's ticks (rounded up, at least 1 for a non-zero span).
    pub(crate) fn ticks_from_nanos(&self, nanos: u64) -> u64 {
        match &self.fast {
            Some((counter, _)) => {
                // Nanoseconds per 2^32 ticks, from the counter's own calibration.
                let per = u128::from(counter.delta_as_nanos(0, 1 << 32).max(1));
                let ticks = (u128::from(nanos) << 32).div_ceil(per);
                ticks.min(u128::from(u64::MAX)) as u64
            }
            None => nanos,
        }
    }

    /// `ticks` of this stopwatch in nanoseconds (raw counter ticks scale without a
    /// `Duration` in between).
    #[inline]
    pub(crate) fn nanos_from_ticks(&self, ticks: u64) -> u64 {
        match &self.fast {
            Some((counter, _)) => counter.delta_as_nanos(0, ticks),
            None => ticks,
        }
    }

    /// Out of line: the fast clock's path stays small enough to inline.
    #[inline(never)]
    fn tokio_nanos(&self) -> u64 {
        saturating_nanos(poll_now().saturating_duration_since(self.tokio))
    }
}

/// How far a deadline that would overflow `Instant` is put instead: 30 years on, tokio's
/// own rule for `sleep(Duration::MAX)`.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `now + after`, saturating: a wait that would overflow `Instant` (a delay generator's
/// `Duration::MAX`, a hedging delay of centuries) waits 30 years instead of panicking.
#[inline]
pub(crate) fn deadline_after(now: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    now.checked_add(after)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// A duration in nanoseconds, saturating at `u64::MAX` (585 years).
pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Reads moments on a [`Clock`] and measures the time between them: what the pipeline
/// times attempts and executions with.
#[derive(Debug, Clone)]
pub(crate) struct Timer {
    /// The calibrated counter, for [`Clock::Fast`].
    fast: Option<quanta::Clock>,
}

/// A moment read by a [`Timer`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    Tokio(tokio::time::Instant),
    Fast(u64),
}

impl Timer {
    pub(crate) fn new(clock: Clock) -> Self {
        Timer {
            fast: (clock == Clock::Fast).then(quanta::Clock::new),
        }
    }

    /// The current moment (a start: shared within a pipeline's poll, see [`poll_now`]).
    #[inline]
    pub(crate) fn mark(&self) -> Mark {
        match &self.fast {
            Some(counter) => Mark::Fast(counter.raw()),
            None => Mark::Tokio(poll_now()),
        }
    }

    /// The current moment, read afresh (an end).
    #[inline]
    pub(crate) fn now(&self) -> Mark {
        match &self.fast {
            Some(counter) => Mark::Fast(counter.raw()),
            None => Mark::Tokio(tokio::time::Instant::now()),
        }
    }

    /// The time from `start` to `end` (zero if they were read on different clocks).
    #[inline]
    pub(crate) fn between(&self, start: Mark, end: Mark) -> Duration {
        match (&self.fast, start, end) {
            (Some(counter), Mark::Fast(start), Mark::Fast(end)) => {
                Duration::from_nanos(counter.delta_as_nanos(start, end))
            }
            (_, Mark::Tokio(start), Mark::Tokio(end)) => end.saturating_duration_since(start),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_ticks_convert_to_and_from_nanoseconds() {
        let fast = Stopwatch::start(Clock::Fast);
        for nanos in [1, 1_000, 1_000_000_007, 3_600_000_000_000] {
            let back = fast.nanos_from_ticks(fast.ticks_from_nanos(nanos));
            // Rounded up to whole ticks, then scaled back: within a few ns, never below.
            assert!(
                back + 2 >= nanos && back <= nanos + nanos / 1_000_000 + 2,
                "{nanos} -> {back}"
            );
        }
        assert_eq!(fast.ticks_from_nanos(0), 0);
        let tokio = Stopwatch::start(Clock::Tokio);
        assert_eq!(tokio.ticks_from_nanos(1_234), 1_234);
        assert_eq!(tokio.nanos_from_ticks(1_234), 1_234);
    }
}
