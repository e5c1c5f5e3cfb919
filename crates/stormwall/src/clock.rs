//! Where strategies read the time.
//!
//! Reading tokio's clock costs a `clock_gettime` (≈ 23 ns on this project's machines), more
//! than a breaker's whole success path. So the default, [`Clock::Auto`], picks when a
//! strategy is made:
//!
//! - **made on a paused tokio clock** (`#[tokio::test(start_paused = true)]`, or after
//!   `tokio::time::pause()`): tokio's clock, so `advance` drives the strategy as before;
//! - **otherwise**, for what only needs coarse time — a breaker's time-window buckets and
//!   break expiry, a rate limiter's GCRA, a retry budget's and an adaptive throttle's
//!   windows — a *recent time*: one atomic load (≈ 1 ns), kept current by one background
//!   thread (`stormwall-clock`, started on first use) that stores the monotonic time every
//!   millisecond. Its resolution is 1 ms, plus whatever the scheduler delays the thread by;
//! - for durations (the telemetry's attempt and execution times), the CPU's counter through
//!   `quanta` (feature `fast-clock`, default), else tokio's clock.
//!
//! A strategy made *before* the clock is paused keeps its recent time: in tests, build the
//! pipeline inside the paused runtime, or name [`Clock::Tokio`].

use std::cell::Cell;
use std::time::Duration;

thread_local! {
    /// While a timeout polls its operation: `Some(moment)` once something read tokio's
    /// clock in this poll, `Some(None)` before; `None` outside.
    static POLL_NOW: Cell<Option<Option<tokio::time::Instant>>> = const { Cell::new(None) };

    /// The end of the last attempt that succeeded in the current poll of an observed
    /// execution ([`success_end_in`]).
    static SUCCESS_END: Cell<Option<Mark>> = const { Cell::new(None) };

    /// An observed execution's start mark, while it is offered to its first attempt
    /// ([`sharing_start`]).
    static SHARED_START: Cell<Option<Mark>> = const { Cell::new(None) };
}

/// Offers `start` (an observed execution's start mark) to the first attempt that starts
/// until [`StartOffer::end`]: while the execution is made, and in its first poll.
///
/// An execution and its first attempt start in the same synchronous stretch: what runs
/// between the two readings is the outer strategies' admission (a breaker's state, a
/// limiter's check), nanoseconds. So the first attempt starts at the execution's start
/// instead of reading the counter again (12.7 ns here, the `clock reading` bench). The
/// offer is taken once: a second attempt in the same poll (a hedge after a failure) reads
/// afresh. A guard rather than a closure, so the execution's (large) future is not moved
/// once more on its way out.
#[inline]
pub(crate) fn offer_start(start: Option<Mark>) -> StartOffer {
    StartOffer {
        around: SHARED_START.replace(start),
        offered: start.is_some(),
    }
}

/// An open [`offer_start`].
#[must_use = "end the offer to restore the one around it"]
pub(crate) struct StartOffer {
    around: Option<Mark>,
    offered: bool,
}

impl StartOffer {
    /// Ends the offer (restoring the one around it); `true` if an attempt took it.
    #[inline]
    pub(crate) fn end(self) -> bool {
        let left = SHARED_START.replace(self.around);
        self.offered && left.is_none()
    }
}

/// Takes the start mark offered by [`offer_start`], if it is still there.
#[inline]
pub(crate) fn take_shared_start() -> Option<Mark> {
    SHARED_START.take()
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
    let shared = share_now(seed);
    let result = poll();
    shared.end();
    result
}

/// [`sharing_now`] as a guard, for a caller whose result is a large future: returned
/// through a closure it would be moved once more.
#[inline]
pub(crate) fn share_now(seed: Option<tokio::time::Instant>) -> SharedNow {
    SharedNow {
        around: POLL_NOW.replace(Some(seed)),
    }
}

/// An open [`share_now`].
#[must_use = "end the sharing to restore the reading around it"]
pub(crate) struct SharedNow {
    around: Option<Option<tokio::time::Instant>>,
}

impl SharedNow {
    /// Restores the reading of the poll around it.
    #[inline]
    pub(crate) fn end(self) {
        POLL_NOW.set(self.around);
    }
}

/// Which clock a strategy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// Default: tokio's clock when the strategy is made on a paused tokio clock (tests);
    /// otherwise the recent time (1 ms resolution, one atomic load) for windows, breaks and
    /// rate limits, and the CPU counter for durations. See the [module](self) docs.
    #[default]
    Auto,
    /// tokio's clock, always (follows `tokio::time::pause` whenever it is called).
    Tokio,
    /// The CPU's time-stamp counter, through `quanta` (feature `fast-clock`): nanosecond
    /// resolution, cheaper than tokio's clock, but not paused by `tokio::time::pause` — do
    /// not use it in paused-clock tests. Without the feature: the same as [`Clock::Auto`].
    Fast,
}

/// What a [`Clock`] reads, decided when a strategy is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Tokio,
    Recent,
    #[cfg(feature = "fast-clock")]
    Counter,
}

impl Clock {
    /// The source for coarse readings (windows, breaks, rate limits).
    fn coarse(self) -> Source {
        match self {
            Clock::Tokio => Source::Tokio,
            #[cfg(feature = "fast-clock")]
            Clock::Fast => Source::Counter,
            _ if tokio_is_paused() => Source::Tokio,
            _ if recent::start() => Source::Recent,
            _ => Source::Tokio,
        }
    }

    /// The source for durations (fine readings).
    #[cfg(feature = "fast-clock")]
    fn fine(self) -> Source {
        match self {
            Clock::Tokio => Source::Tokio,
            Clock::Fast => Source::Counter,
            Clock::Auto if !tokio_is_paused() => Source::Counter,
            Clock::Auto => Source::Tokio,
        }
    }
}

/// Whether the current thread runs inside a tokio runtime whose clock is paused: tokio's
/// clock then stands still while real time passes (it only moves when the runtime idles or
/// is told to advance, and this reads it twice without yielding). Costs ≈ 2 µs, once per
/// strategy made.
fn tokio_is_paused() -> bool {
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    let before = tokio::time::Instant::now();
    let real = std::time::Instant::now();
    while real.elapsed() < Duration::from_micros(2) {
        std::hint::spin_loop();
    }
    tokio::time::Instant::now() == before
}

/// The recent time: nanoseconds since a process-wide origin, stored every millisecond by a
/// background thread, read with one relaxed load.
mod recent {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// How often the thread stores the time.
    const RESOLUTION: Duration = Duration::from_millis(1);
    static RECENT: AtomicU64 = AtomicU64::new(0);

    fn read() -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        super::saturating_nanos(ORIGIN.get_or_init(Instant::now).elapsed())
    }

    /// Starts the thread once; `false` if it could not be started (then callers read
    /// tokio's clock instead).
    pub(super) fn start() -> bool {
        static RUNNING: OnceLock<bool> = OnceLock::new();
        *RUNNING.get_or_init(|| {
            RECENT.store(read(), Ordering::Relaxed);
            std::thread::Builder::new()
                .name("stormwall-clock".into())
                .spawn(|| loop {
                    std::thread::sleep(RESOLUTION);
                    // The only writer, and `Instant` is monotonic: readings never go back.
                    RECENT.store(read(), Ordering::Relaxed);
                })
                .is_ok()
        })
    }

    #[inline(always)]
    pub(super) fn now() -> u64 {
        RECENT.load(Ordering::Relaxed)
    }
}

/// A clock and the moment it was started: reads nanoseconds since then.
#[derive(Debug, Clone)]
pub(crate) struct Stopwatch {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// tokio's clock, from this moment.
    Tokio(tokio::time::Instant),
    /// The recent time, from this reading.
    Recent(u64),
    /// The calibrated counter and its raw reading at the start.
    #[cfg(feature = "fast-clock")]
    Counter(quanta::Clock, u64),
}

impl Stopwatch {
    pub(crate) fn start(clock: Clock) -> Self {
        let kind = match clock.coarse() {
            Source::Tokio => Kind::Tokio(tokio::time::Instant::now()),
            Source::Recent => Kind::Recent(recent::now()),
            #[cfg(feature = "fast-clock")]
            Source::Counter => {
                let counter = quanta::Clock::new();
                let start = counter.raw();
                Kind::Counter(counter, start)
            }
        };
        Stopwatch { kind }
    }

    /// Nanoseconds since the start. Always inlined, with [`ticks`](Self::ticks): a
    /// breaker's success path reads it once, and out of line the call cost more than the
    /// recent time's one load.
    #[inline(always)]
    pub(crate) fn nanos(&self) -> u64 {
        self.nanos_from_ticks(self.ticks())
    }

    /// The time since the start in the stopwatch's own *ticks*: nanoseconds on tokio's
    /// clock and the recent time, raw counter ticks on the fast one (no scaling per
    /// reading). Convert durations with [`ticks_from_nanos`](Self::ticks_from_nanos) once,
    /// and answers back with [`nanos_from_ticks`](Self::nanos_from_ticks).
    #[inline(always)]
    pub(crate) fn ticks(&self) -> u64 {
        match &self.kind {
            Kind::Recent(start) => recent::now().saturating_sub(*start),
            #[cfg(feature = "fast-clock")]
            Kind::Counter(counter, start) => counter.raw().saturating_sub(*start),
            Kind::Tokio(start) => tokio_nanos(*start),
        }
    }

    /// `nanos` in this stopwatch's ticks (rounded up, at least 1 for a non-zero span).
    pub(crate) fn ticks_from_nanos(&self, nanos: u64) -> u64 {
        match &self.kind {
            #[cfg(feature = "fast-clock")]
            Kind::Counter(counter, _) => {
                // Nanoseconds per 2^32 ticks, from the counter's own calibration.
                let per = u128::from(counter.delta_as_nanos(0, 1 << 32).max(1));
                let ticks = (u128::from(nanos) << 32).div_ceil(per);
                ticks.min(u128::from(u64::MAX)) as u64
            }
            _ => nanos,
        }
    }

    /// `ticks` of this stopwatch in nanoseconds (raw counter ticks scale without a
    /// `Duration` in between).
    #[inline]
    pub(crate) fn nanos_from_ticks(&self, ticks: u64) -> u64 {
        match &self.kind {
            #[cfg(feature = "fast-clock")]
            Kind::Counter(counter, _) => counter.delta_as_nanos(0, ticks),
            _ => ticks,
        }
    }
}

/// Out of line: the cheap clocks' paths stay small enough to inline.
#[inline(never)]
fn tokio_nanos(start: tokio::time::Instant) -> u64 {
    saturating_nanos(poll_now().saturating_duration_since(start))
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
    /// The calibrated counter, when the clock resolved to it.
    #[cfg(feature = "fast-clock")]
    fast: Option<quanta::Clock>,
}

/// A moment read by a [`Timer`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    Tokio(tokio::time::Instant),
    #[cfg(feature = "fast-clock")]
    Fast(u64),
}

impl Timer {
    pub(crate) fn new(clock: Clock) -> Self {
        #[cfg(not(feature = "fast-clock"))]
        let _ = clock;
        Timer {
            #[cfg(feature = "fast-clock")]
            fast: (clock.fine() == Source::Counter).then(quanta::Clock::new),
        }
    }

    /// The current moment (a start: shared within a pipeline's poll, see [`poll_now`]).
    #[inline]
    pub(crate) fn mark(&self) -> Mark {
        #[cfg(feature = "fast-clock")]
        if let Some(counter) = &self.fast {
            return Mark::Fast(counter.raw());
        }
        Mark::Tokio(poll_now())
    }

    /// The current moment, read afresh (an end).
    #[inline]
    pub(crate) fn now(&self) -> Mark {
        #[cfg(feature = "fast-clock")]
        if let Some(counter) = &self.fast {
            return Mark::Fast(counter.raw());
        }
        Mark::Tokio(tokio::time::Instant::now())
    }

    /// The time from `start` to `end` (zero if they were read on different clocks).
    #[inline]
    pub(crate) fn between(&self, start: Mark, end: Mark) -> Duration {
        match (start, end) {
            #[cfg(feature = "fast-clock")]
            (Mark::Fast(start), Mark::Fast(end)) => match &self.fast {
                Some(counter) => Duration::from_nanos(counter.delta_as_nanos(start, end)),
                None => Duration::ZERO,
            },
            (Mark::Tokio(start), Mark::Tokio(end)) => end.saturating_duration_since(start),
            #[cfg(feature = "fast-clock")]
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "fast-clock")]
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

    #[tokio::test(start_paused = true)]
    async fn auto_follows_a_paused_tokio_clock() {
        let stopwatch = Stopwatch::start(Clock::Auto);
        assert!(matches!(stopwatch.kind, Kind::Tokio(_)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(stopwatch.nanos(), 3_000_000_000);
        let timer = Timer::new(Clock::Auto);
        assert!(matches!(timer.mark(), Mark::Tokio(_)));
    }

    #[tokio::test]
    async fn auto_reads_the_recent_time_on_a_running_clock() {
        let stopwatch = Stopwatch::start(Clock::Auto);
        assert!(matches!(stopwatch.kind, Kind::Recent(_)));
        // The background thread moves it on: wait (bounded) until it has passed 5 ms.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stopwatch.nanos() < 5_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the recent time stood still"
            );
            tokio::task::yield_now().await;
            std::thread::yield_now();
        }
    }

    #[test]
    fn auto_outside_a_runtime_reads_the_recent_time() {
        assert!(!tokio_is_paused());
        assert!(matches!(
            Stopwatch::start(Clock::Auto).kind,
            Kind::Recent(_)
        ));
    }
}
