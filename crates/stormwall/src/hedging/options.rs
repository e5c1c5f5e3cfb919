use crate::error::{check, ConfigError};
use crate::pipeline::OnError;
use std::time::Duration;

/// When hedged attempts start. In a config file, the `delay` key: a duration (`"100ms"`,
/// latency mode), `"parallel"` or `"fallback"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgingMode {
    /// The next attempt starts when the previous ones have not answered within the delay
    /// (or at once when one fails). Polly's default, with 2 s.
    Latency(Duration),
    /// All attempts start at once.
    Parallel,
    /// The next attempt starts only when one fails (Polly's negative delay).
    Fallback,
}

/// Options of the hedging strategy.
///
/// With the `serde` feature: `{ delay = "100ms", max_hedged_attempts = 1 }`; the predicate is
/// code and keeps its default.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(
        default = "serde_default",
        deny_unknown_fields,
        bound(deserialize = "P: Default", serialize = "")
    )
)]
pub struct HedgingOptions<P = OnError> {
    /// Attempts beyond the first. Default: 1 (Polly's). Valid: 1 – 10.
    pub max_hedged_attempts: u32,
    /// When they start. Default: `Latency(2 s)` (Polly's). Valid: a latency delay > 0 and
    /// ≤ 1 day. The `delay` key in a config file.
    #[cfg_attr(feature = "serde", serde(rename = "delay"))]
    pub mode: HedgingMode,
    /// Which outcomes are not acceptable (a hedge may still win). Default: every `Err`.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub should_handle: P,
}

impl Default for HedgingOptions {
    fn default() -> Self {
        HedgingOptions {
            max_hedged_attempts: 1,
            mode: HedgingMode::Latency(Duration::from_secs(2)),
            should_handle: OnError,
        }
    }
}

impl HedgingOptions {
    /// Latency mode: a further attempt after `delay` without an answer.
    pub fn latency(delay: Duration) -> Self {
        HedgingOptions {
            mode: HedgingMode::Latency(delay),
            ..Default::default()
        }
    }

    /// Parallel mode: every attempt at once.
    pub fn parallel() -> Self {
        HedgingOptions {
            mode: HedgingMode::Parallel,
            ..Default::default()
        }
    }

    /// Fallback mode: a further attempt only after a failure.
    pub fn fallback() -> Self {
        HedgingOptions {
            mode: HedgingMode::Fallback,
            ..Default::default()
        }
    }
}

impl<P> HedgingOptions<P> {
    /// Sets [`max_hedged_attempts`](Self::max_hedged_attempts).
    pub fn max_hedged_attempts(mut self, attempts: u32) -> Self {
        self.max_hedged_attempts = attempts;
        self
    }

    /// Sets [`should_handle`](Self::should_handle): any `Fn(&Result<T, Error<E>>) -> bool`.
    pub fn handle<Q>(self, should_handle: Q) -> HedgingOptions<Q> {
        HedgingOptions {
            max_hedged_attempts: self.max_hedged_attempts,
            mode: self.mode,
            should_handle,
        }
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check::at_least("max_hedged_attempts", self.max_hedged_attempts, 1)?;
        if self.max_hedged_attempts > 10 {
            return Err(ConfigError::new(
                "max_hedged_attempts",
                self.max_hedged_attempts,
                "must be ≤ 10",
            ));
        }
        if let HedgingMode::Latency(delay) = self.mode {
            check::positive("delay", delay)?;
            if delay > Duration::from_secs(86_400) {
                return Err(ConfigError::new("delay", delay, "must be ≤ 1 day"));
            }
        }
        Ok(())
    }
}

/// The defaults of every field, whatever the predicate.
#[cfg(feature = "serde")]
fn serde_default<P: Default>() -> HedgingOptions<P> {
    HedgingOptions::default().handle(P::default())
}

#[cfg(feature = "serde")]
impl serde::Serialize for HedgingMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgingMode::Latency(delay) => humantime_serde::serialize(delay, serializer),
            HedgingMode::Parallel => serializer.serialize_str("parallel"),
            HedgingMode::Fallback => serializer.serialize_str("fallback"),
        }
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for HedgingMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Mode;
        impl serde::de::Visitor<'_> for Mode {
            type Value = HedgingMode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration (\"100ms\"), \"parallel\" or \"fallback\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HedgingMode, E> {
                match text {
                    "parallel" => Ok(HedgingMode::Parallel),
                    "fallback" => Ok(HedgingMode::Fallback),
                    _ => humantime_serde::re::humantime::parse_duration(text)
                        .map(HedgingMode::Latency)
                        .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(text), &self)),
                }
            }
        }
        deserializer.deserialize_str(Mode)
    }
}
