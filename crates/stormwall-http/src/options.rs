//! The standard handler's options: Microsoft.Extensions.Http.Resilience's defaults, every
//! value settable in code and from serde (TOML/JSON, durations like `"250ms"`). Each
//! strategy is configured with the core's own options type, so every core option is
//! settable here, with the same key, default and range.

use serde::de::MapAccess;
use serde::{Deserialize, Deserializer, Serialize};
use std::ops::{Deref, DerefMut};
use std::time::Duration;
use stormwall::bulkhead::BulkheadOptions;
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::registry::{
    deserialize_with_extra, ExtraKeys, PipelineSpec, StrategyKind, StrategySpec,
};
use stormwall::retry::RetryOptions;
use stormwall::timeout::TimeoutOptions;
use stormwall::ConfigError;

/// Options of the [standard handler](crate::StandardLayer). Defaults are those of .NET's
/// `AddStandardResilienceHandler()`:
///
/// | option | default |
/// |---|---|
/// | `rate_limiter.max_concurrency` (or `permit_limit`) / `queue_limit` | 1000 concurrent requests / no queue |
/// | `total_request_timeout` | 30 s |
/// | `retry.max_retries`, `retry.delay`, `retry.backoff`, `retry.jitter` | 3, 2 s, exponential, `decorrelated_v2` |
/// | `retry.max_retry_after` | 60 s (longer `Retry-After`s are capped) |
/// | `retry.retry_unsafe_methods` | false (POST/PATCH only with an `Idempotency-Key`) |
/// | `circuit_breaker.failure_ratio` | 0.1 |
/// | `circuit_breaker.minimum_throughput` | 100 |
/// | `circuit_breaker.sampling_duration` | 30 s |
/// | `circuit_breaker.break_duration` | 5 s |
/// | `attempt_timeout` | 10 s |
/// | `deadline_header` | none (e.g. `x-request-timeout-ms`) |
///
/// `rate_limiter` is the core's [`BulkheadOptions`], `retry` the core's [`RetryOptions`]
/// plus two HTTP keys, `circuit_breaker` the core's [`CircuitBreakerOptions`]: every key
/// of docs/configuration.md for those strategies works here.
///
/// ```
/// let options: stormwall_http::StandardOptions = toml::from_str(r#"
///     total_request_timeout = "5s"
///     attempt_timeout = "1s"
///     [retry]
///     max_retries = 2
///     delay = "100ms"
///     jitter = "full"
///     max_delay = "2s"
///     [circuit_breaker]
///     sampling_duration = "10s"
/// "#).unwrap();
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandardOptions {
    /// Concurrency limit per authority (the outermost strategy; .NET calls it the rate
    /// limiter).
    pub rate_limiter: BulkheadOptions,
    /// Bounds the whole request, retries included. Default 30 s. Valid: > 0 and ≤ 1 day.
    #[serde(with = "humantime_serde")]
    pub total_request_timeout: Duration,
    /// Retries of transient failures.
    pub retry: HttpRetryOptions,
    /// One breaker per authority.
    pub circuit_breaker: CircuitBreakerOptions,
    /// Bounds each attempt. Default 10 s. Valid: > 0 and ≤ `total_request_timeout`.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// A request header that carries the remaining time budget in milliseconds to the
    /// upstream, so it can stop work its caller gave up on. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_header: Option<String>,
}

/// The core's [`RetryOptions`] (every key: `max_retries`, `backoff`, `delay`, `max_delay`,
/// `jitter`) and the HTTP handler's own two, in one `[retry]` table. Derefs to the core
/// options, so `options.retry.max_retries = 5` works.
///
/// Read key by key ([`deserialize_with_extra`]), not through `#[serde(flatten)]`: an error
/// inside the table keeps its key path (`retry.delay`) and unknown keys are refused.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRetryOptions {
    /// The core retry options.
    #[serde(flatten)]
    pub options: RetryOptions,
    /// The longest `Retry-After` honoured; longer ones wait this long. Default 60 s.
    /// Valid: > 0.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Retry POST and PATCH without an `Idempotency-Key` too. Default false.
    pub retry_unsafe_methods: bool,
}

impl Default for HttpRetryOptions {
    fn default() -> Self {
        HttpRetryOptions {
            options: RetryOptions::default(),
            max_retry_after: Duration::from_secs(60),
            retry_unsafe_methods: false,
        }
    }
}

/// The HTTP handler's own keys of `[retry]`.
struct HttpRetryKeys {
    max_retry_after: Duration,
    retry_unsafe_methods: bool,
}

impl Default for HttpRetryKeys {
    fn default() -> Self {
        let defaults = HttpRetryOptions::default();
        HttpRetryKeys {
            max_retry_after: defaults.max_retry_after,
            retry_unsafe_methods: defaults.retry_unsafe_methods,
        }
    }
}

impl<'de> ExtraKeys<'de> for HttpRetryKeys {
    fn accepts(key: &str) -> bool {
        matches!(key, "max_retry_after" | "retry_unsafe_methods")
    }

    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if key == "max_retry_after" {
            self.max_retry_after = map
                .next_value::<humantime_serde::Serde<Duration>>()?
                .into_inner();
        } else {
            self.retry_unsafe_methods = map.next_value()?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for HttpRetryOptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (options, http) =
            deserialize_with_extra::<_, RetryOptions, HttpRetryKeys>(deserializer)?;
        Ok(HttpRetryOptions {
            options,
            max_retry_after: http.max_retry_after,
            retry_unsafe_methods: http.retry_unsafe_methods,
        })
    }
}

impl Deref for HttpRetryOptions {
    type Target = RetryOptions;
    fn deref(&self) -> &RetryOptions {
        &self.options
    }
}

impl DerefMut for HttpRetryOptions {
    fn deref_mut(&mut self) -> &mut RetryOptions {
        &mut self.options
    }
}

impl Default for StandardOptions {
    fn default() -> Self {
        StandardOptions {
            rate_limiter: BulkheadOptions::default(),
            total_request_timeout: Duration::from_secs(30),
            retry: HttpRetryOptions::default(),
            circuit_breaker: CircuitBreakerOptions::default(),
            attempt_timeout: Duration::from_secs(10),
            deadline_header: None,
        }
    }
}

/// `timeout` as the timeout strategy checks it, named `key`.
fn check_timeout(key: &str, timeout: Duration) -> Result<(), ConfigError> {
    TimeoutOptions::new(timeout).validate().map_err(|mut e| {
        e.field = key.to_owned();
        e
    })
}

impl StandardOptions {
    /// The standard handler configured from a named pipeline of a config file (a
    /// [`PipelineSpec`], e.g. `[pipelines.payment]` of examples/stormwall.toml), whose
    /// strategies follow the handler's order, each optional: `bulkhead` (the concurrency
    /// limit) → `timeout` (total) → `retry` → `circuit_breaker` → `timeout` (each attempt).
    /// A timeout before the retry and the breaker is the total one, after them the attempt
    /// one. What the pipeline leaves out keeps the standard default. Another order, or a
    /// `rate_limit` or `hedging` (the standard handler has none: see
    /// [`HedgingLayer`](crate::HedgingLayer)), is refused naming the entry
    /// (`strategies[0].rate_limit`).
    pub fn from_pipeline(spec: &PipelineSpec) -> Result<StandardOptions, ConfigError> {
        const ORDER: [StrategyKind; 5] = [
            StrategyKind::Bulkhead,
            StrategyKind::Timeout,
            StrategyKind::Retry,
            StrategyKind::CircuitBreaker,
            StrategyKind::Timeout,
        ];
        let mut options = StandardOptions::default();
        let mut next = 0;
        for (i, strategy) in spec.strategies.iter().enumerate() {
            let kind = strategy.kind();
            let key = format!("strategies[{i}].{}", kind.name());
            let Some(place) = ORDER[next..].iter().position(|k| *k == kind) else {
                let why = if ORDER.contains(&kind) {
                    "in the standard handler's order: bulkhead → timeout (total) → retry → \
                     circuit_breaker → timeout (attempt), each at most once"
                } else {
                    "not part of the standard handler (its limit is `bulkhead`; hedging is \
                     HedgingLayer)"
                };
                return Err(ConfigError::new(key, kind.name(), why));
            };
            let place = next + place;
            next = place + 1;
            match strategy {
                StrategySpec::Bulkhead(o) => options.rate_limiter = *o,
                StrategySpec::Timeout(o) if place == 1 => options.total_request_timeout = o.timeout,
                StrategySpec::Timeout(o) => options.attempt_timeout = o.timeout,
                StrategySpec::Retry(o) => options.retry.options = o.clone(),
                StrategySpec::CircuitBreaker(o) => options.circuit_breaker = o.clone(),
                StrategySpec::RateLimit(_) | StrategySpec::Hedging(_) => {}
            }
        }
        options.validate()?;
        Ok(options)
    }

    /// Checks every value and the rules between them; the error names the key path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_timeout("total_request_timeout", self.total_request_timeout)?;
        check_timeout("attempt_timeout", self.attempt_timeout)?;
        self.rate_limiter
            .validate()
            .map_err(|e| e.within("rate_limiter"))?;
        self.retry
            .options
            .validate()
            .map_err(|e| e.within("retry"))?;
        if self.retry.max_retry_after.is_zero() {
            return Err(ConfigError::new(
                "retry.max_retry_after",
                self.retry.max_retry_after,
                "must be greater than zero",
            ));
        }
        self.circuit_breaker
            .validate()
            .map_err(|e| e.within("circuit_breaker"))?;
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
    use stormwall::retry::{Backoff, Jitter};

    #[test]
    fn defaults_are_dotnets_and_valid() {
        let o = StandardOptions::default();
        assert_eq!(o.rate_limiter.max_concurrency, 1000);
        assert_eq!(o.total_request_timeout, Duration::from_secs(30));
        assert_eq!(o.retry.max_retries, 3);
        assert_eq!(o.retry.delay, Duration::from_secs(2));
        assert_eq!(o.retry.backoff, Backoff::Exponential);
        assert_eq!(o.circuit_breaker.failure_ratio, Some(0.1));
        assert_eq!(o.circuit_breaker.minimum_throughput, 100);
        assert_eq!(o.circuit_breaker.sampling_duration, Duration::from_secs(30));
        assert_eq!(o.circuit_breaker.break_duration, Duration::from_secs(5));
        assert_eq!(o.attempt_timeout, Duration::from_secs(10));
        o.validate().unwrap();
    }

    /// docs/configuration.md's table of the handler's own keys shows these defaults (the
    /// strategies' keys are checked by the core's tests).
    #[test]
    fn the_configuration_doc_shows_the_handlers_own_defaults() {
        let doc = include_str!("../../../docs/configuration.md");
        let own = doc
            .split("## The HTTP handler's own keys")
            .nth(1)
            .unwrap()
            .split("\n## ")
            .next()
            .unwrap();
        let serialised: toml::Table =
            toml::from_str(&toml::to_string(&StandardOptions::default()).unwrap()).unwrap();
        let retry = serialised["retry"].as_table().unwrap();
        for (key, default) in [
            (
                "total_request_timeout",
                serialised.get("total_request_timeout"),
            ),
            ("attempt_timeout", serialised.get("attempt_timeout")),
            ("retry.max_retry_after", retry.get("max_retry_after")),
            (
                "retry.retry_unsafe_methods",
                retry.get("retry_unsafe_methods"),
            ),
            ("deadline_header", serialised.get("deadline_header")),
        ] {
            let default = default.map_or("none".to_owned(), |v| format!("`{v}`"));
            let row = format!("| `{key}` | {default} |");
            assert!(own.contains(&row), "docs/configuration.md lacks {row}");
        }
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
            circuit_breaker: CircuitBreakerOptions::new().failure_ratio(1.5),
            ..Default::default()
        };
        assert_eq!(
            o.validate().unwrap_err().field,
            "circuit_breaker.failure_ratio"
        );
    }

    #[test]
    fn serde_reads_every_core_key_and_rejects_unknown_keys() {
        let o: StandardOptions = serde_json::from_str(
            r#"{"attempt_timeout": "250ms", "retry": {"max_retries": 5, "jitter": "full",
                "backoff": "linear", "max_delay": "3s", "max_retry_after": "9s"},
                "rate_limiter": {"permit_limit": 7, "queue_timeout": "1s"},
                "circuit_breaker": {"consecutive_failures": 4, "sampling_window": {"count": 200}}}"#,
        )
        .unwrap();
        assert_eq!(o.attempt_timeout, Duration::from_millis(250));
        assert_eq!(o.retry.max_retries, 5);
        assert_eq!(o.retry.delay, Duration::from_secs(2));
        assert_eq!(o.retry.jitter, Jitter::Full);
        assert_eq!(o.retry.backoff, Backoff::Linear);
        assert_eq!(o.retry.max_delay, Some(Duration::from_secs(3)));
        assert_eq!(o.retry.max_retry_after, Duration::from_secs(9));
        assert_eq!(o.rate_limiter.max_concurrency, 7);
        assert_eq!(o.rate_limiter.queue_timeout, Some(Duration::from_secs(1)));
        assert_eq!(o.circuit_breaker.consecutive_failures, Some(4));
        o.validate().unwrap();
        let e = serde_json::from_str::<StandardOptions>(r#"{"retry": {"max_retires": 5}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("max_retires"), "{e}");
        let e =
            serde_json::from_str::<StandardOptions>(r#"{"attempt_timeout": "soon"}"#).unwrap_err();
        assert!(
            e.to_string().contains("soon") || e.to_string().contains("duration"),
            "{e}"
        );
        // options → TOML → options.
        let text = toml::to_string(&o).unwrap();
        let back: StandardOptions = toml::from_str(&text).unwrap();
        assert_eq!(back.retry.options, o.retry.options, "{text}");
        assert_eq!(back.retry.max_retry_after, o.retry.max_retry_after);
        assert_eq!(back.circuit_breaker, o.circuit_breaker);
        assert_eq!(back.rate_limiter, o.rate_limiter);
    }

    /// The full key path of every type and duration error, in every table (as a reader that
    /// tracks paths, the sidecar's or serde_path_to_error, reports it).
    #[test]
    fn type_and_duration_errors_name_the_full_key_path() {
        for (text, path) in [
            ("[retry]\ndelay = \"soon\"", "retry.delay"),
            ("[retry]\nmax_retries = \"many\"", "retry.max_retries"),
            (
                "[retry]\nmax_retry_after = \"later\"",
                "retry.max_retry_after",
            ),
            (
                "[retry]\nretry_unsafe_methods = 1",
                "retry.retry_unsafe_methods",
            ),
            (
                "[circuit_breaker]\nbreak_duration = 5",
                "circuit_breaker.break_duration",
            ),
            (
                "[circuit_breaker]\nfailure_ratio = \"high\"",
                "circuit_breaker.failure_ratio",
            ),
            (
                "[rate_limiter]\nqueue_timeout = \"soon\"",
                "rate_limiter.queue_timeout",
            ),
            (
                "[rate_limiter]\nmax_concurrency = -1",
                "rate_limiter.max_concurrency",
            ),
            ("attempt_timeout = \"soon\"", "attempt_timeout"),
            ("total_request_timeout = 3", "total_request_timeout"),
        ] {
            let e = serde_path_to_error::deserialize::<_, StandardOptions>(
                toml::Deserializer::new(text),
            )
            .unwrap_err();
            assert_eq!(e.path().to_string(), path, "{text}: {e}");
        }
        // An unknown key is refused in the table it is in, by its name.
        let e = serde_path_to_error::deserialize::<_, StandardOptions>(toml::Deserializer::new(
            "[retry]\nmax_retrys = 1",
        ))
        .unwrap_err();
        assert_eq!(e.path().to_string(), "retry");
        assert!(e.to_string().contains("unknown field `max_retrys`"), "{e}");
    }
}
