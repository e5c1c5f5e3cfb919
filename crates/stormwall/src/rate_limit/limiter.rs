//! The counting algorithms. Each decides on one permit at `now` (ticks of the limiter's
//! stopwatch since it was made: nanoseconds on tokio's clock, raw counter ticks on the fast
//! clock, so a reading needs no scaling) and, on refusal, says how long until a permit is
//! available, in the same ticks.

use super::{RateLimitAlgorithm, RateLimitOptions};
use crate::clock::{saturating_nanos, Stopwatch};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// One rate limiter's state.
#[derive(Debug)]
pub(crate) struct Limiter {
    stopwatch: Stopwatch,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Lock-free: the theoretical arrival time of the next permit, in one atomic.
    Gcra {
        tat: AtomicU64,
        interval: u64,
        tolerance: u64,
    },
    /// The rest are counted under a lock: simple, and not the default.
    TokenBucket {
        state: Mutex<(u64, u64)>, // (period index of the last refill, tokens)
        period: u64,
        permits: u64,
        burst: u64,
    },
    FixedWindow {
        state: Mutex<(u64, u64)>, // (window index, permits taken in it)
        period: u64,
        permits: u64,
    },
    SlidingWindow {
        segments: Mutex<VecDeque<(u64, u64)>>, // (segment index, permits taken in it)
        width: u64,
        count: u64,
        permits: u64,
    },
}

/// GCRA: admits when the theoretical arrival time is at most `tolerance` ahead of `now`,
/// moving it on by `interval`; otherwise says how long until it would admit.
#[inline(always)]
fn gcra(tat: &AtomicU64, interval: u64, tolerance: u64, now: u64) -> Result<(), u64> {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let start = current.max(now);
        let ahead = start - now;
        if ahead > tolerance {
            return Err(ahead - tolerance);
        }
        match tat.compare_exchange_weak(
            current,
            start.saturating_add(interval),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Ok(()),
            Err(actual) => current = actual,
        }
    }
}

/// Ticks from `now` to the end of window `index` of `width` ticks (saturating: with a
/// period of a day in raw counter ticks, the boundary may lie beyond `u64`).
fn next_boundary(index: u64, width: u64, now: u64) -> u64 {
    index
        .saturating_add(1)
        .saturating_mul(width)
        .saturating_sub(now)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section writes plain numbers: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Limiter {
    /// A limiter with `options` (assumed validated), full at creation.
    pub(crate) fn new(options: &RateLimitOptions) -> Self {
        let stopwatch = Stopwatch::start(options.clock);
        let period = stopwatch
            .ticks_from_nanos(saturating_nanos(options.period))
            .max(1);
        let permits = u64::from(options.permits);
        let burst = u64::from(options.effective_burst());
        let kind = match options.algorithm {
            RateLimitAlgorithm::Gcra => {
                let interval = (period / permits).max(1);
                Kind::Gcra {
                    tat: AtomicU64::new(0),
                    interval,
                    tolerance: interval.saturating_mul(burst - 1),
                }
            }
            RateLimitAlgorithm::TokenBucket => Kind::TokenBucket {
                state: Mutex::new((0, burst)),
                period,
                permits,
                burst,
            },
            RateLimitAlgorithm::FixedWindow => Kind::FixedWindow {
                state: Mutex::new((0, 0)),
                period,
                permits,
            },
            RateLimitAlgorithm::SlidingWindow { segments } => Kind::SlidingWindow {
                segments: Mutex::new(VecDeque::new()),
                width: (period / u64::from(segments)).max(1),
                count: u64::from(segments),
                permits,
            },
        };
        Limiter { stopwatch, kind }
    }

    #[inline]
    fn now(&self) -> u64 {
        self.stopwatch.ticks()
    }

    /// Takes one permit now, or says how long until one is available.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Result<(), Duration> {
        self.try_acquire_at(self.now())
            .map_err(|ticks| Duration::from_nanos(self.stopwatch.nanos_from_ticks(ticks)))
    }

    /// [`try_acquire`](Self::try_acquire) at `now`: GCRA inline (the default, lock-free),
    /// the locked algorithms out of line.
    #[inline]
    pub(crate) fn try_acquire_at(&self, now: u64) -> Result<(), u64> {
        let Kind::Gcra {
            tat,
            interval,
            tolerance,
        } = &self.kind
        else {
            return self.try_acquire_locked(now);
        };
        gcra(tat, *interval, *tolerance, now)
    }

    #[inline(never)]
    fn try_acquire_locked(&self, now: u64) -> Result<(), u64> {
        match &self.kind {
            Kind::Gcra {
                tat,
                interval,
                tolerance,
            } => gcra(tat, *interval, *tolerance, now),
            Kind::TokenBucket {
                state,
                period,
                permits,
                burst,
            } => {
                let mut s = lock(state);
                let index = now / period;
                if index > s.0 {
                    let added = (index - s.0).saturating_mul(*permits);
                    s.1 = s.1.saturating_add(added).min(*burst);
                    s.0 = index;
                }
                if s.1 == 0 {
                    return Err(next_boundary(index, *period, now));
                }
                s.1 -= 1;
                Ok(())
            }
            Kind::FixedWindow {
                state,
                period,
                permits,
            } => {
                let mut s = lock(state);
                let index = now / period;
                if index != s.0 {
                    *s = (index, 0);
                }
                if s.1 >= *permits {
                    return Err(next_boundary(index, *period, now));
                }
                s.1 += 1;
                Ok(())
            }
            Kind::SlidingWindow {
                segments,
                width,
                count,
                permits,
            } => {
                let mut q = lock(segments);
                let index = now / width;
                while q.front().is_some_and(|&(i, _)| i + count <= index) {
                    q.pop_front();
                }
                let taken: u64 = q.iter().map(|&(_, n)| n).sum();
                if taken >= *permits {
                    // A permit frees when the oldest non-empty segment leaves the window.
                    let oldest = q.front().map_or(index, |&(i, _)| i);
                    return Err(next_boundary(oldest + count - 1, *width, now));
                }
                match q.back_mut() {
                    Some((i, n)) if *i == index => *n += 1,
                    _ => q.push_back((index, 1)),
                }
                Ok(())
            }
        }
    }

    /// `true` when the limiter is back to its initial state (forgetting it loses nothing).
    pub(crate) fn is_idle(&self) -> bool {
        let now = self.now();
        match &self.kind {
            Kind::Gcra { tat, .. } => tat.load(Ordering::Acquire) <= now,
            Kind::TokenBucket {
                state,
                period,
                permits,
                burst,
            } => {
                let s = lock(state);
                let refilled =
                    s.1.saturating_add((now / period).saturating_sub(s.0).saturating_mul(*permits));
                refilled >= *burst
            }
            Kind::FixedWindow { state, period, .. } => {
                let s = lock(state);
                s.1 == 0 || s.0 != now / period
            }
            Kind::SlidingWindow {
                segments,
                width,
                count,
                ..
            } => lock(segments)
                .back()
                .is_none_or(|&(i, _)| i + count <= now / width),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limiter(options: RateLimitOptions) -> Limiter {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async { Limiter::new(&options) })
    }

    fn admitted(l: &Limiter, times_ms: &[u64]) -> Vec<bool> {
        times_ms
            .iter()
            .map(|&t| l.try_acquire_at(t * MS).is_ok())
            .collect()
    }

    #[test]
    fn gcra_allows_a_burst_then_spaces_permits() {
        // 10 per second = one per 100 ms, burst 3.
        let l = limiter(RateLimitOptions::per_second(10).burst(3));
        assert_eq!(
            admitted(&l, &[0, 0, 0, 0, 50, 100, 150, 200]),
            [true, true, true, false, false, true, false, true]
        );
        // Refused: the wait until the next permit.
        assert_eq!(l.try_acquire_at(200 * MS), Err(100 * MS));
    }

    #[test]
    fn token_bucket_refills_permits_each_period() {
        let l = limiter(
            RateLimitOptions::per_second(2)
                .burst(3)
                .algorithm(RateLimitAlgorithm::TokenBucket),
        );
        assert_eq!(
            admitted(&l, &[0, 0, 0, 0, 999, 1000, 1000, 1000]),
            [true, true, true, false, false, true, true, false]
        );
        assert_eq!(l.try_acquire_at(1500 * MS), Err(500 * MS));
    }

    #[test]
    fn fixed_window_resets_at_each_window() {
        let l = limiter(RateLimitOptions::per_second(2).algorithm(RateLimitAlgorithm::FixedWindow));
        assert_eq!(
            admitted(&l, &[0, 10, 20, 999, 1000, 1001, 1002]),
            [true, true, false, false, true, true, false]
        );
        assert_eq!(l.try_acquire_at(1250 * MS), Err(750 * MS));
    }

    #[test]
    fn sliding_window_counts_the_last_period() {
        // 2 per second in 4 segments of 250 ms.
        let l = limiter(
            RateLimitOptions::per_second(2)
                .algorithm(RateLimitAlgorithm::SlidingWindow { segments: 4 }),
        );
        assert_eq!(admitted(&l, &[0, 600, 700]), [true, true, false]);
        // The permit taken at 0 leaves the window at 1000 ms.
        assert_eq!(l.try_acquire_at(700 * MS), Err(300 * MS));
        assert_eq!(admitted(&l, &[999, 1000, 1100]), [false, true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_back_to_the_initial_state() {
        let l = Limiter::new(&RateLimitOptions::per_second(10));
        assert!(l.is_idle());
        for _ in 0..10 {
            assert!(l.try_acquire().is_ok());
        }
        assert!(!l.is_idle());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!l.is_idle());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l.is_idle());
    }
}
