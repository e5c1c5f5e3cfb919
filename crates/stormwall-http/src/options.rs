//! The standard handler's options: Microsoft.Extensions.Http.Resilience's defaults, every
//! value settable in code and from serde (TOML/JSON, durations like `"250ms"`).

use serde::Deserialize;
use std::time::Duration;
use stormwall::ConfigError;

/// Options of the [standard handler](crate::StandardLayer). Defaults are those of .NET's
/// `AddStandardResilienceHandler()`:
///
/// | option | default |
/// |---|---|
/// | `rate_limiter.permit_limit` / `queue_limit` | 1000 concurrent requests / no queue |
/// | `total_request_timeout` | 30 s |
/// | `retry.max_retries`, `retry.delay`, backoff | 3, 2 s, exponential with jitter |
/// | `retry.max_retry_after` | 60 s (longer `Retry-After`s are capped) |
/// | `retry.retry_unsafe_methods` | false (POST/PATCH only with an `Idempotency-Key`) |
/// | `circuit_breaker.failure_ratio` | 0.1 |
/// | `circuit_breaker.minimum_throughput` | 100 |
/// | `circuit_breaker.sampling_duration` | 30 s |
/// | `circuit_breaker.break_duration` | 5 s |
/// | `attempt_timeout` | 10 s |
/// | `deadline_header` | none (e.g. `x-request-timeout-ms`) |
///
/// ```
/// let options: stormwall_http::StandardOptions = toml::from_str(r#"
///     total_request_timeout = "5s"
///     attempt_timeout = "1s"
///     [retry]
///     max_retries = 2
///     delay = "100ms"
///     [circuit_breaker]
///     sampling_duration = "10s"
/// "#).unwrap();
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StandardOptions {
    /// Concurrency limit per authority (the outermost strategy).
    pub rate_limiter: RateLimiterOptions,
    /// Bounds the whole request, retries included. Default 30 s. Valid: > 0.
    #[serde(with = "humantime_serde")]
    pub total_request_timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryOptions,
    /// One breaker per authority.
    pub circuit_breaker: CircuitBreakerOptions,
    /// Bounds each attempt. Default 10 s. Valid: > 0 and ≤ `total_request_timeout`.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// A request header that carries the remaining time budget in milliseconds to the
    /// upstream, so it can stop work its caller gave up on. Default: none.
    pub deadline_header: Option<String>,
}

/// The concurrency limiter (.NET's "rate limiter" of the standard handler).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimiterOptions {
    /// Requests in flight per authority. Default 1000. Valid: ≥ 1.
    pub permit_limit: u32,
    /// Requests waiting for a permit. Default 0 (reject at once).
    pub queue_limit: u32,
}

/// Retry options.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryOptions {
    /// Retries after the first attempt. Default 3. Valid: ≥ 1.
    pub max_retries: u32,
    /// The first retry's base delay (exponential, with jitter). Default 2 s. Valid: > 0.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// The longest `Retry-After` honoured; longer ones wait this long. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Retry POST and PATCH without an `Idempotency-Key` too. Default false.
    pub retry_unsafe_methods: bool,
}

/// Circuit breaker options (one breaker per scheme + host + port).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerOptions {
    /// Failure ratio that opens the circuit. Default 0.1. Valid: 0 < r ≤ 1.
    pub failure_ratio: f64,
    /// Calls in the window before the ratio counts. Default 100. Valid: ≥ 2.
    pub minimum_throughput: u32,
    /// The window. Default 30 s. Valid: ≥ 2 × `attempt_timeout`.
    #[serde(with = "humantime_serde")]
    pub sampling_duration: Duration,
    /// How long the circuit stays open. Default 5 s. Valid: > 0.
    #[serde(with = "humantime_serde")]
    pub break_duration: Duration,
}

impl Default for StandardOptions {
    fn default() -> Self {
        StandardOptions {
            rate_limiter: RateLimiterOptions::default(),
            total_request_timeout: Duration::from_secs(30),
            retry: RetryOptions::default(),
            circuit_breaker: CircuitBreakerOptions::default(),
            attempt_timeout: Duration::from_secs(10),
            deadline_header: None,
        }
    }
}

impl Default for RateLimiterOptions {
    fn default() -> Self {
        RateLimiterOptions {
            permit_limit: 1000,
            queue_limit: 0,
        }
    }
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            max_retries: 3,
            delay: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(60),
            retry_unsafe_methods: false,
        }
    }
}

impl Default for CircuitBreakerOptions {
    fn default() -> Self {
        CircuitBreakerOptions {
            failure_ratio: 0.1,
            minimum_throughput: 100,
            sampling_duration: Duration::from_secs(30),
            break_duration: Duration::from_secs(5),
        }
    }
}

fn positive(field: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(field, value, "> 0"));
    }
    Ok(())
}

impl StandardOptions {
    /// Checks every value and the rules between them; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("total_request_timeout", self.total_request_timeout)?;
        positive("attempt_timeout", self.attempt_timeout)?;
        positive("retry.delay", self.retry.delay)?;
        positive("retry.max_retry_after", self.retry.max_retry_after)?;
        positive(
            "circuit_breaker.sampling_duration",
            self.circuit_breaker.sampling_duration,
        )?;
        positive(
            "circuit_breaker.break_duration",
            self.circuit_breaker.break_duration,
        )?;
        if self.rate_limiter.permit_limit == 0 {
            return Err(ConfigError::new("rate_limiter.permit_limit", 0, "≥ 1"));
        }
        if self.retry.max_retries == 0 {
            return Err(ConfigError::new("retry.max_retries", 0, "≥ 1"));
        }
        let ratio = self.circuit_breaker.failure_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(ConfigError::new(
                "circuit_breaker.failure_ratio",
                ratio,
                "in (0, 1]",
            ));
        }
        if self.circuit_breaker.minimum_throughput < 2 {
            return Err(ConfigError::new(
                "circuit_breaker.minimum_throughput",
                self.circuit_breaker.minimum_throughput,
                "≥ 2",
            ));
        }
        if self.attempt_timeout > self.total_request_timeout {
            return Err(ConfigError::new(
                "attempt_timeout",
                self.attempt_timeout,
                format!("≤ total_request_timeout ({:?})", self.total_request_timeout),
            ));
        }
        if self.circuit_breaker.sampling_duration < 2 * self.attempt_timeout {
            return Err(ConfigError::new(
                "circuit_breaker.sampling_duration",
                self.circuit_breaker.sampling_duration,
                format!("≥ 2 × attempt_timeout ({:?})", 2 * self.attempt_timeout),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_dotnets_and_valid() {
        let o = StandardOptions::default();
        assert_eq!(o.rate_limiter.permit_limit, 1000);
        assert_eq!(o.total_request_timeout, Duration::from_secs(30));
        assert_eq!(o.retry.max_retries, 3);
        assert_eq!(o.retry.delay, Duration::from_secs(2));
        assert_eq!(o.circuit_breaker.failure_ratio, 0.1);
        assert_eq!(o.circuit_breaker.minimum_throughput, 100);
        assert_eq!(o.circuit_breaker.sampling_duration, Duration::from_secs(30));
        assert_eq!(o.circuit_breaker.break_duration, Duration::from_secs(5));
        assert_eq!(o.attempt_timeout, Duration::from_secs(10));
        o.validate().unwrap();
    }

    #[test]
    fn rules_between_values_name_the_field() {
        let mut o = StandardOptions {
            attempt_timeout: Duration::from_secs(40),
            ..StandardOptions::default()
        };
        let e = o.validate().unwrap_err();
        assert_eq!(e.field, "attempt_timeout");
        assert!(e.to_string().contains("≤ total_request_timeout"), "{e}");
        o.attempt_timeout = Duration::from_secs(20);
        let e = o.validate().unwrap_err();
        assert_eq!(e.field, "circuit_breaker.sampling_duration");
        o.attempt_timeout = Duration::ZERO;
        assert_eq!(o.validate().unwrap_err().field, "attempt_timeout");
        let o = StandardOptions {
            circuit_breaker: CircuitBreakerOptions {
                failure_ratio: 1.5,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            o.validate().unwrap_err().field,
            "circuit_breaker.failure_ratio"
        );
    }

    #[test]
    fn serde_reads_durations_and_rejects_unknown_keys() {
        let o: StandardOptions =
            serde_json::from_str(r#"{"attempt_timeout": "250ms", "retry": {"max_retries": 5}}"#)
                .unwrap();
        assert_eq!(o.attempt_timeout, Duration::from_millis(250));
        assert_eq!(o.retry.max_retries, 5);
        assert_eq!(o.retry.delay, Duration::from_secs(2));
        let e = serde_json::from_str::<StandardOptions>(r#"{"retry": {"max_retires": 5}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("max_retires"), "{e}");
        let e =
            serde_json::from_str::<StandardOptions>(r#"{"attempt_timeout": "soon"}"#).unwrap_err();
        assert!(
            e.to_string().contains("soon") || e.to_string().contains("duration"),
            "{e}"
        );
    }
}
