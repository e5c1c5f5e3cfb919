use crate::bulkhead::BulkheadOptions;
use crate::circuit_breaker::CircuitBreakerOptions;
use crate::hedging::HedgingOptions;
use crate::rate_limit::RateLimitOptions;
use crate::retry::RetryOptions;
use crate::telemetry::strategy;
use crate::timeout::TimeoutOptions;
use crate::ConfigError;
use std::collections::BTreeMap;

/// The most strategies one [`PipelineSpec`] holds (the fixed order has 7; a longer list is
/// more likely a mistake than a design).
pub const MAX_STRATEGIES: usize = 8;

/// Which strategy a [`StrategySpec`] configures; its [`name`](Self::name) is the key in
/// a config file and the `strategy` label of its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StrategyKind {
    /// `rate_limit`.
    RateLimit,
    /// `bulkhead`.
    Bulkhead,
    /// `timeout`.
    Timeout,
    /// `hedging`.
    Hedging,
    /// `retry`.
    Retry,
    /// `circuit_breaker`.
    CircuitBreaker,
}

impl StrategyKind {
    /// Every kind, outer to inner as the fixed order places them
    /// ([`FIXED_ORDER`](super::FIXED_ORDER) is this list and the attempt's timeout).
    pub const ALL: [StrategyKind; 6] = [
        StrategyKind::RateLimit,
        StrategyKind::Bulkhead,
        StrategyKind::Timeout,
        StrategyKind::Hedging,
        StrategyKind::Retry,
        StrategyKind::CircuitBreaker,
    ];

    /// The key in a config file (`circuit_breaker`), one of the
    /// [`telemetry::strategy`](crate::telemetry::strategy) constants.
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::RateLimit => strategy::RATE_LIMIT,
            StrategyKind::Bulkhead => strategy::BULKHEAD,
            StrategyKind::Timeout => strategy::TIMEOUT,
            StrategyKind::Hedging => strategy::HEDGING,
            StrategyKind::Retry => strategy::RETRY,
            StrategyKind::CircuitBreaker => strategy::CIRCUIT_BREAKER,
        }
    }
}

/// One strategy of a [`PipelineSpec`], written as a table of one key, the strategy's name,
/// whose value is that strategy's options: `{ retry = { max_retries = 3 } }`,
/// `{ timeout = "10s" }`. Every strategy is the core's own options type, so a key means the
/// same thing (with the same default and range) in the registry, the HTTP handler and the
/// sidecar.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum StrategySpec {
    /// A rate limiter.
    RateLimit(RateLimitOptions),
    /// A bulkhead.
    Bulkhead(BulkheadOptions),
    /// A timeout: outside a retry it bounds the whole execution, inside one each attempt.
    Timeout(TimeoutOptions),
    /// Hedging.
    Hedging(HedgingOptions),
    /// Retry.
    Retry(RetryOptions),
    /// A circuit breaker.
    CircuitBreaker(CircuitBreakerOptions),
}

impl StrategySpec {
    /// Which strategy it is.
    pub fn kind(&self) -> StrategyKind {
        match self {
            StrategySpec::RateLimit(_) => StrategyKind::RateLimit,
            StrategySpec::Bulkhead(_) => StrategyKind::Bulkhead,
            StrategySpec::Timeout(_) => StrategyKind::Timeout,
            StrategySpec::Hedging(_) => StrategyKind::Hedging,
            StrategySpec::Retry(_) => StrategyKind::Retry,
            StrategySpec::CircuitBreaker(_) => StrategyKind::CircuitBreaker,
        }
    }

    /// Checks the options; the error names the key under the strategy's name
    /// (`retry.max_delay`, `timeout` for a timeout's only value).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checked = match self {
            StrategySpec::RateLimit(o) => o.validate(),
            StrategySpec::Bulkhead(o) => o.validate(),
            StrategySpec::Timeout(o) => return o.validate(),
            StrategySpec::Hedging(o) => o.validate(),
            StrategySpec::Retry(o) => o.validate(),
            StrategySpec::CircuitBreaker(o) => o.validate(),
        };
        checked.map_err(|e| e.within(self.kind().name()))
    }
}

/// One pipeline in a config file: its strategies in order, the first the outermost (as a
/// [`PipelineBuilder`](crate::PipelineBuilder)'s calls). At most [`MAX_STRATEGIES`].
///
/// ```toml
/// [pipelines.payment]
/// strategies = [
///   { timeout = "30s" },                                    # total
///   { retry = { max_retries = 3, delay = "200ms" } },
///   { circuit_breaker = { failure_ratio = 0.5, minimum_throughput = 10 } },
///   { timeout = "10s" },                                    # each attempt
/// ]
/// ```
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use stormwall::registry::{PipelineSpec, StrategyKind};
/// let spec: PipelineSpec = serde_json::from_str(r#"{ "strategies": [
///     { "timeout": "30s" },
///     { "retry": { "max_retries": 3, "delay": "200ms", "jitter": "full" } },
///     { "circuit_breaker": { "failure_ratio": 0.5, "minimum_throughput": 10 } },
///     { "timeout": "10s" }
/// ] }"#).unwrap();
/// assert!(spec.validate().is_ok());
/// assert_eq!(spec.strategies[1].kind(), StrategyKind::Retry);
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct PipelineSpec {
    /// The strategies, outermost first. Default: none (the operation runs as it is).
    pub strategies: Vec<StrategySpec>,
}

impl FromIterator<StrategySpec> for PipelineSpec {
    fn from_iter<I: IntoIterator<Item = StrategySpec>>(strategies: I) -> Self {
        PipelineSpec {
            strategies: strategies.into_iter().collect(),
        }
    }
}

impl PipelineSpec {
    /// Checks every strategy; the error names the key path in the file
    /// (`strategies[1].retry.max_delay`, `strategies[3].timeout`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.strategies.len() > MAX_STRATEGIES {
            return Err(ConfigError::new(
                "strategies",
                self.strategies.len(),
                format!("at most {MAX_STRATEGIES} strategies"),
            ));
        }
        for (i, strategy) in self.strategies.iter().enumerate() {
            strategy
                .validate()
                .map_err(|e| e.within(&format!("strategies[{i}]")))?;
        }
        Ok(())
    }

    /// The first strategy of `kind`, with its position.
    pub fn first(&self, kind: StrategyKind) -> Option<(usize, &StrategySpec)> {
        self.strategies
            .iter()
            .enumerate()
            .find(|(_, s)| s.kind() == kind)
    }
}

/// Named pipelines: the `[pipelines.<name>]` tables of a config file.
///
/// Other top-level keys are left to their own readers (the sidecar reads `[server]` and
/// `[[route]]` from the same file), so they are not refused here; inside a pipeline every
/// unknown key is.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RegistrySpec {
    /// The pipelines by name.
    #[cfg_attr(feature = "serde", serde(default))]
    pub pipelines: BTreeMap<String, PipelineSpec>,
}

impl RegistrySpec {
    /// Checks every pipeline; errors name the key path
    /// (`pipelines.payment.strategies[1].retry.delay`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, spec) in &self.pipelines {
            spec.validate()
                .map_err(|e| e.within(&format!("pipelines.{name}")))?;
        }
        Ok(())
    }
}
