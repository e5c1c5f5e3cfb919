use crate::error::{check, ConfigError};
use std::time::Duration;

/// Options of the timeout strategy. In a config file, the duration itself: `"10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct TimeoutOptions {
    /// How long the operation (everything inside this strategy) may run.
    /// Default: 30 s (Polly's). Valid: > 0 and ≤ 1 day.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub timeout: Duration,
}

impl Default for TimeoutOptions {
    fn default() -> Self {
        TimeoutOptions {
            timeout: Duration::from_secs(30),
        }
    }
}

impl TimeoutOptions {
    /// A timeout of `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TimeoutOptions { timeout }
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check::positive("timeout", self.timeout)?;
        if self.timeout > Duration::from_secs(86_400) {
            return Err(ConfigError::new("timeout", self.timeout, "must be ≤ 1 day"));
        }
        Ok(())
    }
}

impl From<Duration> for TimeoutOptions {
    fn from(timeout: Duration) -> Self {
        TimeoutOptions::new(timeout)
    }
}
