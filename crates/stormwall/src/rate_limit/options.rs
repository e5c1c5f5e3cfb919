use crate::clock::Clock;
use crate::error::{check, ConfigError};
use std::time::Duration;

/// How a rate limiter counts. In a config file: `"gcra"`, `"token_bucket"`,
/// `"fixed_window"` or `{ sliding_window = { segments = 10 } }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum RateLimitAlgorithm {
    /// Generic cell rate algorithm: permits are spaced evenly (`period / permits` apart),
    /// with up to `burst` at once after a quiet spell. Smooth, one atomic word. Default.
    #[default]
    Gcra,
    /// Polly's token bucket: `permits` tokens are added every `period`, up to `burst`.
    TokenBucket,
    /// Polly's fixed window: at most `permits` per `period`, counted from zero at the start
    /// of each window (allows up to 2 × permits across a window boundary).
    FixedWindow,
    /// Polly's sliding window: at most `permits` in the last `period`, tracked in
    /// `segments` segments (the window slides a segment at a time).
    SlidingWindow {
        /// Segments per window. Valid: 1 – 1000.
        segments: u32,
    },
}

/// Options of the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RateLimitOptions {
    /// Permits per `period`. Default: 1000 per second (the HTTP standard handler's).
    /// Valid: ≥ 1.
    pub permits: u32,
    /// The period `permits` refer to. Default: 1 s. Valid: > 0 and ≤ 1 day. Also read as
    /// `per`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde", alias = "per"))]
    pub period: Duration,
    /// How many permits may be taken at once after a quiet spell (GCRA, token bucket).
    /// Default: `None`, equal to `permits`. Valid: ≥ 1.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub burst: Option<u32>,
    /// The algorithm. Default: [`RateLimitAlgorithm::Gcra`].
    pub algorithm: RateLimitAlgorithm,
    /// The clock. Default: [`Clock::Auto`] (tokio's when made on a paused clock, else the
    /// 1 ms recent time: permits are decided at millisecond resolution); [`Clock::Fast`]
    /// for nanosecond resolution.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub clock: Clock,
}

impl Default for RateLimitOptions {
    fn default() -> Self {
        RateLimitOptions::per_second(1000)
    }
}

impl RateLimitOptions {
    /// `permits` per second, burst of `permits`, GCRA.
    pub fn per_second(permits: u32) -> Self {
        Self::per(permits, Duration::from_secs(1))
    }

    /// `permits` per minute, burst of `permits`, GCRA.
    pub fn per_minute(permits: u32) -> Self {
        Self::per(permits, Duration::from_secs(60))
    }

    /// `permits` per `period`, burst of `permits`, GCRA.
    pub fn per(permits: u32, period: Duration) -> Self {
        RateLimitOptions {
            permits,
            period,
            burst: None,
            algorithm: RateLimitAlgorithm::Gcra,
            clock: Clock::Auto,
        }
    }

    /// The burst in force: [`burst`](Self::burst) when set, else `permits`.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or(self.permits)
    }

    /// Sets [`burst`](Self::burst).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Sets [`algorithm`](Self::algorithm).
    pub fn algorithm(mut self, algorithm: RateLimitAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets [`clock`](Self::clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check::at_least("permits", self.permits, 1)?;
        check::positive("period", self.period)?;
        if self.period > Duration::from_secs(86_400) {
            return Err(ConfigError::new("period", self.period, "must be ≤ 1 day"));
        }
        check::at_least("burst", self.effective_burst(), 1)?;
        if let RateLimitAlgorithm::SlidingWindow { segments } = self.algorithm {
            if !(1..=1000).contains(&segments) {
                return Err(ConfigError::new(
                    "algorithm.segments",
                    segments,
                    "must be between 1 and 1000",
                ));
            }
        }
        Ok(())
    }
}
