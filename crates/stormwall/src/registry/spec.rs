use crate::bulkhead::BulkheadOptions;
use crate::circuit_breaker::CircuitBreakerOptions;
use crate::hedging::HedgingOptions;
use crate::rate_limit::RateLimitOptions;
use crate::retry::RetryOptions;
use crate::timeout::TimeoutOptions;
use crate::ConfigError;
use std::collections::BTreeMap;

/// One pipeline in a config file: each strategy optional, applied outer to inner in the
/// order of the fields (the sidecar's route order): rate limit → bulkhead → total timeout →
/// hedging → retry → circuit breaker → attempt timeout.
///
/// Every strategy is the core's own options type, so a key means the same thing (and has
/// the same default and range) in the registry, the HTTP handler and the sidecar.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use stormwall::registry::PipelineSpec;
/// let spec: PipelineSpec = serde_json::from_str(r#"{
///     "timeout": { "total": "30s", "attempt": "10s" },
///     "retry": { "max_retries": 3, "delay": "200ms", "jitter": "full" },
///     "circuit_breaker": { "failure_ratio": 0.5, "minimum_throughput": 10 }
/// }"#).unwrap();
/// assert!(spec.validate().is_ok());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct PipelineSpec {
    /// A rate limiter, outermost. Default: none.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub rate_limit: Option<RateLimitOptions>,
    /// A bulkhead. Default: none.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub bulkhead: Option<BulkheadOptions>,
    /// The total timeout (around hedging and retries) and the attempt timeout (innermost).
    /// Default: neither.
    #[cfg_attr(
        feature = "serde",
        serde(skip_serializing_if = "TimeoutSpec::is_empty")
    )]
    pub timeout: TimeoutSpec,
    /// Hedging. Default: none.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub hedging: Option<HedgingOptions>,
    /// Retry. Default: none.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub retry: Option<RetryOptions>,
    /// A circuit breaker. Default: none.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub circuit_breaker: Option<CircuitBreakerOptions>,
}

/// `timeout = { total = "30s", attempt = "10s" }`: two timeout strategies, by their place
/// in the pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct TimeoutSpec {
    /// Bounds the whole execution, retries and hedges included. Default: none. Valid: > 0
    /// and ≤ 1 day.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub total: Option<TimeoutOptions>,
    /// Bounds each attempt. Default: none. Valid: > 0 and ≤ 1 day.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub attempt: Option<TimeoutOptions>,
}

impl TimeoutSpec {
    /// Neither timeout set.
    pub fn is_empty(&self) -> bool {
        self.total.is_none() && self.attempt.is_none()
    }

    /// Checks both; errors name `total` or `attempt`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, timeout) in [("total", &self.total), ("attempt", &self.attempt)] {
            if let Some(timeout) = timeout {
                timeout.validate().map_err(|e| at_key(e, key))?;
            }
        }
        Ok(())
    }
}

/// `e` for the value at `key` itself (a timeout validates its only field as `timeout`).
pub(crate) fn at_key(mut e: ConfigError, key: &str) -> ConfigError {
    e.field = key.to_owned();
    e
}

impl PipelineSpec {
    /// Checks every strategy; the error names the key path in the file (`retry.max_delay`,
    /// `timeout.total`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(o) = &self.rate_limit {
            o.validate().map_err(|e| e.within("rate_limit"))?;
        }
        if let Some(o) = &self.bulkhead {
            o.validate().map_err(|e| e.within("bulkhead"))?;
        }
        self.timeout.validate().map_err(|e| e.within("timeout"))?;
        if let Some(o) = &self.hedging {
            o.validate().map_err(|e| e.within("hedging"))?;
        }
        if let Some(o) = &self.retry {
            o.validate().map_err(|e| e.within("retry"))?;
        }
        if let Some(o) = &self.circuit_breaker {
            o.validate().map_err(|e| e.within("circuit_breaker"))?;
        }
        Ok(())
    }
}

/// Named pipelines: the `[pipelines.<name>]` tables of a config file.
///
/// Other top-level keys are left to their own readers (the sidecar reads `[server]` and
/// `[[route]]` from the same file), so they are not refused here; inside a pipeline every
/// unknown key is.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RegistrySpec {
    /// The pipelines by name.
    #[cfg_attr(feature = "serde", serde(default))]
    pub pipelines: BTreeMap<String, PipelineSpec>,
}

impl RegistrySpec {
    /// Checks every pipeline; errors name the key path (`pipelines.payment.retry.delay`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, spec) in &self.pipelines {
            spec.validate()
                .map_err(|e| e.within(&format!("pipelines.{name}")))?;
        }
        Ok(())
    }
}
