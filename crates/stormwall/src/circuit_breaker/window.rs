//! The sampling windows: where the breaker counts calls, failures and slow calls.
//!
//! Both windows are lock-free, so recording a success never takes the breaker's lock.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// What a window holds at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub total: u32,
    pub failures: u32,
    pub slow: u32,
}

// Built once per breaker and kept in its shared store, never moved on a call's path: a box
// around the larger (striped) time window would only add a pointer chase to every record.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Window {
    Time(TimeWindow),
    Count(CountWindow),
}

impl Window {
    #[inline]
    pub(crate) fn record(&self, now_nanos: u64, failure: bool, slow: bool) {
        match self {
            Window::Time(w) => w.record(now_nanos, failure, slow),
            Window::Count(w) => w.record(failure, slow),
        }
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        match self {
            Window::Time(w) => w.counts(now_nanos),
            Window::Count(w) => w.counts(),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Time(w) => w.reset(),
            Window::Count(w) => w.reset(),
        }
    }

    /// `true` when recording needs the current time.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Window::Time(_))
    }
}

/// The calls that ended within the last `BUCKETS` bucket widths.
///
/// Each bucket is one `AtomicU64`: a 16-bit tag (the bucket's epoch, modulo 2^16) and three
/// 16-bit counters (total, failures, slow). A record whose epoch differs from the tag starts
/// the bucket afresh; one compare-and-swap keeps tag and counts consistent under contention.
/// A counter about to overflow halves all three, which keeps the ratios.
///
/// The ring is kept `STRIPES` times, each on its own cache line, and a thread records into
/// the stripe it was given: threads sharing one breaker do not fight over one word (two
/// threads on one breaker: 138 → 42 ns per call on tokio's clock; one thread pays nothing
/// measurable). `counts` sums the stripes.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    stripes: [Stripe; STRIPES],
    bucket_nanos: u64,
    /// The newest epoch any record started a bucket in; lets `counts` see that the whole
    /// window has gone stale without trusting 16-bit tags across a long silence.
    newest_epoch: AtomicU64,
}

/// One copy of the bucket ring, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; BUCKETS]);

pub(crate) const BUCKETS: usize = 10;
const STRIPES: usize = 4;
const FIELD: u64 = 0xFFFF;

/// The stripe this thread records into: threads are dealt stripes in turn.
#[inline]
fn stripe_of_thread() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

fn unpack(word: u64) -> (u16, u64, u64, u64) {
    (
        (word >> 48) as u16,
        (word >> 32) & FIELD,
        (word >> 16) & FIELD,
        word & FIELD,
    )
}

fn pack(tag: u16, total: u64, failures: u64, slow: u64) -> u64 {
    (u64::from(tag) << 48) | (total << 32) | (failures << 16) | slow
}

/// The word after recording (`f`, `s`) into `current` for the epoch tagged `tag`: a bucket
/// of another epoch (or empty) starts afresh; a counter about to overflow halves all three.
#[cold]
fn next_word(current: u64, tag: u16, f: u64, s: u64) -> u64 {
    let (old_tag, mut total, mut failures, mut slows) = unpack(current);
    if old_tag == tag && total > 0 {
        if total == FIELD {
            (total, failures, slows) = (total >> 1, failures >> 1, slows >> 1);
        }
        pack(tag, total + 1, failures + f, slows + s)
    } else {
        pack(tag, 1, f, s)
    }
}

impl TimeWindow {
    pub(crate) fn new(sampling: Duration) -> Self {
        let bucket_nanos = (sampling.as_nanos() as u64 / BUCKETS as u64).max(1);
        TimeWindow {
            stripes: Default::default(),
            bucket_nanos,
            newest_epoch: AtomicU64::new(0),
        }
    }

    // Always inlined: out of line, the call and its register saves cost more than the
    // record's own arithmetic.
    #[inline(always)]
    pub(crate) fn record(&self, now_nanos: u64, failure: bool, slow: bool) {
        let epoch = now_nanos / self.bucket_nanos;
        let tag = epoch as u16;
        let stripe = &self.stripes[stripe_of_thread()];
        let bucket = &stripe.0[(epoch % BUCKETS as u64) as usize];
        let (f, s) = (u64::from(failure), u64::from(slow));
        // The common case — this epoch's bucket, its total neither 0 (empty) nor about to
        // overflow (failures and slow calls never exceed the total) — adds to the packed
        // word as it is: no unpacking. The compare-and-swap checks the word it added to.
        let add = (1 << 32) | (f << 16) | s;
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let next = if current >> 48 == u64::from(tag)
                && ((current >> 32) & FIELD).wrapping_sub(1) < FIELD - 1
            {
                current + add
            } else {
                next_word(current, tag, f, s)
            };
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        if self.newest_epoch.load(Ordering::Relaxed) < epoch {
            self.newest_epoch.fetch_max(epoch, Ordering::Relaxed);
        }
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        let epoch = now_nanos / self.bucket_nanos;
        if epoch.saturating_sub(self.newest_epoch.load(Ordering::Relaxed)) >= BUCKETS as u64 {
            return Counts::default();
        }
        let tag = epoch as u16;
        let mut counts = Counts::default();
        for bucket in self.stripes.iter().flat_map(|stripe| &stripe.0) {
            let (bucket_tag, total, failures, slow) = unpack(bucket.load(Ordering::Acquire));
            if usize::from(tag.wrapping_sub(bucket_tag)) < BUCKETS {
                counts.total += total as u32;
                counts.failures += failures as u32;
                counts.slow += slow as u32;
            }
        }
        counts
    }

    fn reset(&self) {
        for bucket in self.stripes.iter().flat_map(|stripe| &stripe.0) {
            bucket.store(0, Ordering::Release);
        }
    }
}

/// The last `size` calls, however old.
///
/// Each slot holds one call's outcome (bit 0: recorded, bit 1: failure, bit 2: slow); the
/// recorded, failure and slow totals are kept alongside, adjusted by what each record
/// overwrites. The cursor wraps at the size by compare-and-swap, so taking a slot needs no
/// division.
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    /// The slot the next record takes (always below the size).
    cursor: AtomicU32,
    /// Slots recorded since the last reset: the window's total until it fills.
    recorded: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

const RECORDED: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        CountWindow {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            cursor: AtomicU32::new(0),
            recorded: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool) {
        let size = self.slots.len() as u32;
        let mut index = self.cursor.load(Ordering::Relaxed);
        loop {
            let next = if index + 1 >= size { 0 } else { index + 1 };
            match self.cursor.compare_exchange_weak(
                index,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => index = actual,
            }
        }
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        let new = RECORDED | if failure { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        // The steady state (a success replacing a success) changes nothing: skip the
        // read-modify-write. The counters still match the slots (each swap adjusts by what
        // it replaced); a concurrent writer to the same slot — only possible when the ring
        // wraps during this call — simply lands last.
        if slot.load(Ordering::Relaxed) == new {
            return;
        }
        let old = slot.swap(new, Ordering::AcqRel);
        if old & RECORDED == 0 {
            self.recorded.fetch_add(1, Ordering::AcqRel);
        }
        adjust(&self.failures, old & FAILED != 0, failure);
        adjust(&self.slow, old & SLOW != 0, slow);
    }

    fn counts(&self) -> Counts {
        Counts {
            total: self.recorded.load(Ordering::Acquire),
            failures: self.failures.load(Ordering::Acquire),
            slow: self.slow.load(Ordering::Acquire),
        }
    }

    fn reset(&self) {
        self.cursor.store(0, Ordering::Release);
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Release);
        }
        self.recorded.store(0, Ordering::Release);
        self.failures.store(0, Ordering::Release);
        self.slow.store(0, Ordering::Release);
    }
}

fn adjust(counter: &AtomicU32, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            counter.fetch_add(1, Ordering::AcqRel);
        }
        (true, false) => {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn time_window_counts_every_threads_records_across_its_stripes() {
        let w = TimeWindow::new(Duration::from_secs(10));
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let w = &w;
                scope.spawn(move || {
                    for i in 0..1_000u64 {
                        // Spread over two buckets; every fifth call of a thread fails.
                        w.record(
                            (t * 1_000 + i) * 1_000_000 % (2_000 * MS),
                            i % 5 == 0,
                            false,
                        );
                    }
                });
            }
        });
        assert_eq!(
            w.counts(1_999 * MS),
            Counts {
                total: 8_000,
                failures: 1_600,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_forgets_buckets_older_than_the_sampling_duration() {
        let w = TimeWindow::new(Duration::from_secs(1)); // 100 ms buckets
        w.record(0, true, false);
        w.record(50 * MS, false, false);
        w.record(450 * MS, false, true);
        assert_eq!(
            w.counts(450 * MS),
            Counts {
                total: 3,
                failures: 1,
                slow: 1
            }
        );
        // At 1000 ms, the bucket [0, 100) is 10 buckets old: gone.
        assert_eq!(
            w.counts(1000 * MS),
            Counts {
                total: 1,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(w.counts(1450 * MS), Counts::default());
    }

    #[test]
    fn time_window_reuses_a_bucket_for_a_new_epoch() {
        let w = TimeWindow::new(Duration::from_secs(1));
        w.record(10 * MS, true, false);
        w.record(1010 * MS, false, false); // same slot, next round
        assert_eq!(
            w.counts(1010 * MS),
            Counts {
                total: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_survives_a_silence_longer_than_its_tag_range() {
        let w = TimeWindow::new(Duration::from_millis(10)); // 1 ms buckets
        w.record(0, true, false);
        let later = 65_536 * MS; // same tag, 2^16 buckets later
        assert_eq!(w.counts(later), Counts::default());
    }

    #[test]
    fn time_window_halves_on_overflow_and_keeps_the_ratio() {
        let w = TimeWindow::new(Duration::from_secs(1));
        for i in 0..70_000u32 {
            w.record(0, i % 4 == 0, false);
        }
        let c = w.counts(0);
        let ratio = f64::from(c.failures) / f64::from(c.total);
        assert!(c.total > 30_000, "{c:?}");
        assert!((ratio - 0.25).abs() < 0.01, "{c:?}");
    }

    #[test]
    fn count_window_keeps_the_last_n_calls() {
        let w = CountWindow::new(3);
        w.record(true, false);
        w.record(true, true);
        assert_eq!(
            w.counts(),
            Counts {
                total: 2,
                failures: 2,
                slow: 1
            }
        );
        w.record(false, false);
        w.record(false, false); // overwrites the first failure
        assert_eq!(
            w.counts(),
            Counts {
                total: 3,
                failures: 1,
                slow: 1
            }
        );
        w.record(false, false);
        assert_eq!(
            w.counts(),
            Counts {
                total: 3,
                failures: 0,
                slow: 0
            }
        );
        w.reset();
        assert_eq!(w.counts(), Counts::default());
    }
}
