//! Where strategies read the time.
//!
//! The default is tokio's clock, so `tokio::time::pause` and `advance` drive every strategy
//! in tests. On this project's machines reading it costs ≈ 23 ns (`clock_gettime`); for the
//! hottest paths (a rate limiter, a breaker's time window) [`Clock::Fast`] reads the CPU's
//! time-stamp counter through `quanta` instead, a few ns, at the price of ignoring tokio's
//! paused clock.

use std::time::Duration;

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
        match &self.fast {
            // Raw counter readings scale to nanoseconds without a `Duration` in between.
            Some((counter, start)) => counter.delta_as_nanos(*start, counter.raw()),
            None => {
                saturating_nanos(tokio::time::Instant::now().saturating_duration_since(self.tokio))
            }
        }
    }
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

    /// The current moment.
    #[inline]
    pub(crate) fn mark(&self) -> Mark {
        match &self.fast {
            Some(counter) => Mark::Fast(counter.raw()),
            None => Mark::Tokio(tokio::time::Instant::now()),
        }
    }

    /// The time since `mark`.
    #[inline]
    pub(crate) fn elapsed(&self, mark: Mark) -> Duration {
        match (&self.fast, mark) {
            (Some(counter), Mark::Fast(start)) => {
                Duration::from_nanos(counter.delta_as_nanos(start, counter.raw()))
            }
            (_, Mark::Tokio(start)) => start.elapsed(),
            (None, Mark::Fast(_)) => Duration::ZERO,
        }
    }
}
