use crate::clock::Clock;
use crate::error::{check, ConfigError};
use crate::pipeline::OnError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What the breaker counts its failure ratio over. In a config file: `"time"` or
/// `{ count = 100 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum SamplingWindow {
    /// The calls that ended within the last `sampling_duration`, kept in 10 buckets of
    /// `sampling_duration / 10` each (so the window slides in steps of a tenth). Default.
    #[default]
    Time,
    /// The last `n` calls, however old (resilience4j's count-based window).
    /// Valid: `n ≥ minimum_throughput`.
    Count(u32),
}

/// The slow-call condition: the breaker also trips when at least `ratio` of the calls in the
/// window took `duration_threshold` or longer.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct SlowCallOptions {
    /// A call this long or longer is slow. Valid: > 0.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub duration_threshold: Duration,
    /// The slow-call ratio that trips the breaker. Valid: (0, 1].
    pub ratio: f64,
}

/// What a break duration generator is told: how many times in a row the breaker has opened
/// without closing in between (1 the first time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakDurationArgs {
    /// 1 for the first open, 2 when a half-open probe failed once, and so on.
    pub consecutive_opens: u32,
}

/// Computes the break duration from [`BreakDurationArgs`] (e.g. growing backoff).
#[derive(Clone)]
pub struct BreakDurationGenerator(Arc<dyn Fn(BreakDurationArgs) -> Duration + Send + Sync>);

impl BreakDurationGenerator {
    /// Wraps `generator`.
    pub fn new(generator: impl Fn(BreakDurationArgs) -> Duration + Send + Sync + 'static) -> Self {
        BreakDurationGenerator(Arc::new(generator))
    }

    /// The break duration for `args`.
    pub fn generate(&self, args: BreakDurationArgs) -> Duration {
        (self.0)(args)
    }
}

/// The same generator: one made by the same [`new`](Self::new) call (and its clones).
impl PartialEq for BreakDurationGenerator {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl fmt::Debug for BreakDurationGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BreakDurationGenerator(..)")
    }
}

/// Options of the circuit breaker.
///
/// The circuit opens when, within the sampling window, at least `minimum_throughput` calls
/// ended and the proportion of them that failed is at least `failure_ratio`; or when
/// `consecutive_failures` calls in a row failed; or when the proportion of slow calls
/// reached the slow-call ratio. It stays open for `break_duration`, then admits up to
/// `permitted_calls_in_half_open` probes at once: `success_threshold` successful probes
/// close it, any failed probe opens it again.
///
/// With the `serde` feature the data fields read from and write to config files; the
/// predicate, the break duration generator and the clock are code and keep their defaults.
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
pub struct CircuitBreakerOptions<P = OnError> {
    /// The failure ratio that trips the breaker; `None` turns the ratio condition off.
    /// Default: `Some(0.1)` (Polly's). Valid: (0, 1]. In a config file, `"off"` for `None`.
    #[cfg_attr(feature = "serde", serde(with = "ratio_or_off"))]
    pub failure_ratio: Option<f64>,
    /// How many calls the window must hold before the ratios are considered.
    /// Default: 100 (Polly's). Valid: ≥ 2 and ≤ 30,000.
    pub minimum_throughput: u32,
    /// The time the window covers (for [`SamplingWindow::Time`]).
    /// Default: 30 s (Polly's). Valid: ≥ 10 ms and ≤ 1 day.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub sampling_duration: Duration,
    /// Time buckets (default) or the last N calls.
    pub sampling_window: SamplingWindow,
    /// Trip after this many failures in a row, whatever the window says.
    /// Default: `None` (off). Valid: ≥ 1.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub consecutive_failures: Option<u32>,
    /// Trip on the slow-call ratio. Default: `None` (off).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub slow_call: Option<SlowCallOptions>,
    /// How long the circuit stays open before it admits a probe.
    /// Default: 5 s (Polly's). Valid: > 0 and ≤ 1 day.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub break_duration: Duration,
    /// Replaces `break_duration` with a computed one (growing backoff). Default: `None`.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub break_duration_generator: Option<BreakDurationGenerator>,
    /// How many probes may run at once while half-open; further calls are rejected, not
    /// queued. Default: 1 (Polly's). Valid: ≥ 1.
    pub permitted_calls_in_half_open: u32,
    /// How many successful probes close the circuit. Default: 1 (Polly's). Valid: ≥ 1.
    pub success_threshold: u32,
    /// Which outcomes count as failures. Default: [`OnError`] (every `Err`).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub should_handle: P,
    /// The clock for the window and the break. Default: [`Clock::Auto`]: tokio's clock when
    /// the breaker is made on a paused one (tests), else the 1 ms recent time (one atomic
    /// load, see [`crate::clock`]).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub clock: Clock,
}

impl Default for CircuitBreakerOptions {
    fn default() -> Self {
        CircuitBreakerOptions {
            failure_ratio: Some(0.1),
            minimum_throughput: 100,
            sampling_duration: Duration::from_secs(30),
            sampling_window: SamplingWindow::Time,
            consecutive_failures: None,
            slow_call: None,
            break_duration: Duration::from_secs(5),
            break_duration_generator: None,
            permitted_calls_in_half_open: 1,
            success_threshold: 1,
            should_handle: OnError,
            clock: Clock::Auto,
        }
    }
}

impl CircuitBreakerOptions {
    /// Polly's defaults (see each field).
    pub fn new() -> Self {
        Self::default()
    }

    /// A breaker that trips only after `n` failures in a row (no ratio condition).
    pub fn consecutive(n: u32) -> Self {
        CircuitBreakerOptions {
            failure_ratio: None,
            consecutive_failures: Some(n),
            ..Default::default()
        }
    }
}

impl<P> CircuitBreakerOptions<P> {
    /// Sets [`failure_ratio`](Self::failure_ratio).
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = Some(ratio);
        self
    }

    /// Sets [`minimum_throughput`](Self::minimum_throughput).
    pub fn minimum_throughput(mut self, calls: u32) -> Self {
        self.minimum_throughput = calls;
        self
    }

    /// Sets [`sampling_duration`](Self::sampling_duration).
    pub fn sampling_duration(mut self, duration: Duration) -> Self {
        self.sampling_duration = duration;
        self
    }

    /// Counts over the last `calls` calls instead of a time window.
    pub fn count_window(mut self, calls: u32) -> Self {
        self.sampling_window = SamplingWindow::Count(calls);
        self
    }

    /// Sets [`consecutive_failures`](Self::consecutive_failures).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Trips when at least `ratio` of the calls took `threshold` or longer.
    pub fn slow_call(mut self, threshold: Duration, ratio: f64) -> Self {
        self.slow_call = Some(SlowCallOptions {
            duration_threshold: threshold,
            ratio,
        });
        self
    }

    /// Sets [`break_duration`](Self::break_duration).
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self
    }

    /// Sets [`break_duration_generator`](Self::break_duration_generator).
    pub fn break_duration_generator(
        mut self,
        generator: impl Fn(BreakDurationArgs) -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.break_duration_generator = Some(BreakDurationGenerator::new(generator));
        self
    }

    /// Sets [`permitted_calls_in_half_open`](Self::permitted_calls_in_half_open).
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.permitted_calls_in_half_open = calls;
        self
    }

    /// Sets [`success_threshold`](Self::success_threshold).
    pub fn success_threshold(mut self, successes: u32) -> Self {
        self.success_threshold = successes;
        self
    }

    /// Sets [`should_handle`](Self::should_handle): any `Fn(&Result<T, Error<E>>) -> bool`.
    pub fn handle<Q>(self, should_handle: Q) -> CircuitBreakerOptions<Q> {
        CircuitBreakerOptions {
            failure_ratio: self.failure_ratio,
            minimum_throughput: self.minimum_throughput,
            sampling_duration: self.sampling_duration,
            sampling_window: self.sampling_window,
            consecutive_failures: self.consecutive_failures,
            slow_call: self.slow_call,
            break_duration: self.break_duration,
            break_duration_generator: self.break_duration_generator,
            permitted_calls_in_half_open: self.permitted_calls_in_half_open,
            success_threshold: self.success_threshold,
            should_handle,
            clock: self.clock,
        }
    }

    /// Sets [`clock`](Self::clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(ratio) = self.failure_ratio {
            check::ratio("failure_ratio", ratio)?;
        }
        check::at_least("minimum_throughput", self.minimum_throughput, 2)?;
        if self.minimum_throughput > MAX_THROUGHPUT {
            return Err(ConfigError::new(
                "minimum_throughput",
                self.minimum_throughput,
                format!("must be ≤ {MAX_THROUGHPUT}"),
            ));
        }
        if self.sampling_duration < Duration::from_millis(10) || self.sampling_duration > DAY {
            return Err(ConfigError::new(
                "sampling_duration",
                self.sampling_duration,
                "must be ≥ 10ms and ≤ 1 day",
            ));
        }
        if let SamplingWindow::Count(n) = self.sampling_window {
            if n < self.minimum_throughput || n > MAX_COUNT_WINDOW {
                return Err(ConfigError::new(
                    "sampling_window",
                    n,
                    format!(
                        "a count window must hold ≥ minimum_throughput ({}) and ≤ {MAX_COUNT_WINDOW} calls",
                        self.minimum_throughput
                    ),
                ));
            }
        }
        if let Some(n) = self.consecutive_failures {
            check::at_least("consecutive_failures", n, 1)?;
        }
        if let Some(slow) = &self.slow_call {
            check::positive("slow_call.duration_threshold", slow.duration_threshold)?;
            check::ratio("slow_call.ratio", slow.ratio)?;
        }
        check::positive("break_duration", self.break_duration)?;
        if self.break_duration > DAY {
            return Err(ConfigError::new(
                "break_duration",
                self.break_duration,
                "must be ≤ 1 day",
            ));
        }
        check::at_least(
            "permitted_calls_in_half_open",
            self.permitted_calls_in_half_open,
            1,
        )?;
        check::at_least("success_threshold", self.success_threshold, 1)?;
        if self.failure_ratio.is_none()
            && self.consecutive_failures.is_none()
            && self.slow_call.is_none()
        {
            return Err(ConfigError::new(
                "failure_ratio",
                "None",
                "at least one of failure_ratio, consecutive_failures, slow_call must be set",
            ));
        }
        Ok(())
    }
}

/// The defaults of every field, whatever the predicate (serde fills the keys a file leaves
/// out from it).
#[cfg(feature = "serde")]
fn serde_default<P: Default>() -> CircuitBreakerOptions<P> {
    CircuitBreakerOptions::default().handle(P::default())
}

/// `failure_ratio`: a number, or `"off"` for `None` (a file cannot leave out a key to turn
/// off what is on by default).
#[cfg(feature = "serde")]
mod ratio_or_off {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub(super) fn serialize<S: Serializer>(ratio: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match ratio {
            Some(ratio) => s.serialize_f64(*ratio),
            None => s.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        struct RatioOrOff;
        impl Visitor<'_> for RatioOrOff {
            type Value = Option<f64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a ratio in (0, 1] or \"off\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Some(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "off" => Ok(None),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(RatioOrOff)
    }
}

const DAY: Duration = Duration::from_secs(86_400);
/// Time buckets count in 16 bits; a window of 10 buckets must be able to reach the minimum.
pub(crate) const MAX_THROUGHPUT: u32 = 30_000;
const MAX_COUNT_WINDOW: u32 = 1_000_000;
