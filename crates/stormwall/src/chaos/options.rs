use crate::error::ConfigError;
use crate::random::SplitMix;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Options shared by every chaos strategy.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ChaosOptions {
    /// The chance that a call gets the injection. Default: 0.001 (Polly's). Valid: 0 – 1.
    pub injection_rate: f64,
    /// Whether injection is on at start. Default: `true`. Change it at runtime through
    /// [`ChaosControl`].
    pub enabled: bool,
    /// Seeds the random choice, for reproducible runs. Default: `None` (random).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub seed: Option<u64>,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            injection_rate: 0.001,
            enabled: true,
            seed: None,
        }
    }
}

impl ChaosOptions {
    /// Inject into `injection_rate` of the calls.
    pub fn rate(injection_rate: f64) -> Self {
        ChaosOptions {
            injection_rate,
            ..Default::default()
        }
    }

    /// Sets [`seed`](Self::seed).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets [`enabled`](Self::enabled).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_rate(self.injection_rate)
    }
}

fn check_rate(rate: f64) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(ConfigError::new(
            "injection_rate",
            rate,
            "must be between 0 and 1",
        ));
    }
    Ok(())
}

/// Turns a chaos strategy on or off, and changes its injection rate, while it runs.
/// Clones control the same strategy.
#[derive(Debug, Clone)]
pub struct ChaosControl {
    inner: Arc<ControlState>,
}

#[derive(Debug)]
pub(crate) struct ControlState {
    enabled: AtomicBool,
    /// The rate's `f64` bits.
    rate: AtomicU64,
    random: SplitMix,
}

impl ChaosControl {
    pub(crate) fn new(options: &ChaosOptions) -> Self {
        ChaosControl {
            inner: Arc::new(ControlState {
                enabled: AtomicBool::new(options.enabled),
                rate: AtomicU64::new(options.injection_rate.to_bits()),
                random: SplitMix::new(options.seed),
            }),
        }
    }

    /// Starts injecting.
    pub fn enable(&self) {
        self.inner.enabled.store(true, Ordering::Release);
    }

    /// Stops injecting: every call runs as it is.
    pub fn disable(&self) {
        self.inner.enabled.store(false, Ordering::Release);
    }

    /// Whether injection is on.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Acquire)
    }

    /// Changes the injection rate; a rate outside 0 – 1 is refused and changes nothing.
    pub fn set_injection_rate(&self, rate: f64) -> Result<(), ConfigError> {
        check_rate(rate).map_err(|e| e.within("chaos"))?;
        self.inner.rate.store(rate.to_bits(), Ordering::Release);
        Ok(())
    }

    /// The injection rate now.
    pub fn injection_rate(&self) -> f64 {
        f64::from_bits(self.inner.rate.load(Ordering::Acquire))
    }

    /// Decides whether this call gets the injection.
    #[inline]
    pub(crate) fn should_inject(&self) -> bool {
        if !self.is_enabled() {
            return false;
        }
        let rate = self.injection_rate();
        rate > 0.0 && self.inner.random.next_f64() < rate
    }
}
