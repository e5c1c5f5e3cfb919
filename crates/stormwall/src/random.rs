//! A small lock-free random source that can be seeded, for strategies that decide by
//! chance (chaos injection, adaptive throttling): reproducible runs from a seed.

use std::sync::atomic::{AtomicU64, Ordering};

/// splitmix64 over an atomic counter: one atomic add per draw, shareable across threads.
#[derive(Debug)]
pub(crate) struct SplitMix {
    state: AtomicU64,
}

impl SplitMix {
    /// Seeded with `seed`, or randomly when `None`.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        SplitMix {
            state: AtomicU64::new(seed.unwrap_or_else(|| fastrand::u64(..))),
        }
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&self) -> f64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
