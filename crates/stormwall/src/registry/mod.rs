//! Pipelines by name, built from a spec (a config file through serde), reloaded in place.
//!
//! Use it when pipelines live in configuration, as Polly users do with
//! `ResiliencePipelineRegistry` and options reload: each named [`PipelineSpec`] becomes a
//! pipeline that [`PipelineRegistry::get`] hands out, and [`PipelineRegistry::reload`]
//! swaps in a new spec. On reload a strategy whose options did not change is *kept*, state
//! and all (a breaker stays open, a limiter keeps its counters); a changed one is rebuilt; a
//! bad spec is refused whole, naming the key, and the old pipelines keep serving. Each
//! reloaded pipeline raises [`Event::PipelineReloaded`](crate::telemetry::Event).
//!
//! Pipelines written in code stay statically composed and unboxed; a registry's pipelines
//! are one static type too ([`SpecStrategies`]: each strategy an `Option`), shared behind
//! an `Arc` — the only indirection is at the edge, where the caller fetches one by name.
//!
//! ```
//! # #[cfg(feature = "serde")] {
//! use stormwall::registry::{PipelineRegistry, RegistrySpec};
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let spec: RegistrySpec = serde_json::from_str(r#"{ "pipelines": {
//!     "payment": { "timeout": { "attempt": "1s" }, "retry": { "max_retries": 2, "delay": "10ms" } }
//! } }"#).unwrap();
//! let registry = PipelineRegistry::new(spec).unwrap();
//! let payment = registry.get("payment").unwrap();
//! let answer = payment.execute(|_| async { Ok::<_, std::io::Error>("paid") }).await;
//! assert_eq!(answer.unwrap(), "paid");
//! # } }
//! ```

#[cfg(feature = "env")]
mod env;
mod spec;

#[cfg(feature = "env")]
pub use env::{env_overrides, figment_error, has_env_overrides, with_env_overrides, ENV_PREFIX};
pub use spec::{PipelineSpec, RegistrySpec, TimeoutSpec};

use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;
use crate::hedging::Hedging;
use crate::pipeline::{Identity, Stack};
use crate::rate_limit::RateLimiter;
use crate::retry::Retry;
use crate::telemetry::{Event, EventListener};
use crate::timeout::Timeout;
use crate::{ConfigError, Pipeline};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};

/// The strategies of a registry's pipeline, outer to inner, each present or not.
pub type SpecStrategies = Stack<
    Stack<
        Stack<
            Stack<
                Stack<
                    Stack<Stack<Identity, Option<RateLimiter>>, Option<Bulkhead>>,
                    Option<Timeout>,
                >,
                Option<Hedging>,
            >,
            Option<Retry>,
        >,
        Option<CircuitBreaker>,
    >,
    Option<Timeout>,
>;

/// A pipeline the registry built.
pub type SpecPipeline = Pipeline<SpecStrategies>;

/// What a reload did to one pipeline (carried by
/// [`Event::PipelineReloaded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineReloaded {
    /// Strategies built anew (their options changed, or they are new).
    pub rebuilt: SpecKeys,
    /// Strategies kept as they were, state included.
    pub kept: SpecKeys,
}

/// A set of a [`PipelineSpec`]'s strategy keys, in pipeline order: `rate_limit`,
/// `bulkhead`, `timeout.total`, `hedging`, `retry`, `circuit_breaker`, `timeout.attempt`.
/// One byte, so that an [`Event`] stays small on the hot path.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecKeys(u8);

impl SpecKeys {
    /// Every key, in pipeline order.
    pub const ALL: [&'static str; 7] = [
        "rate_limit",
        "bulkhead",
        "timeout.total",
        "hedging",
        "retry",
        "circuit_breaker",
        "timeout.attempt",
    ];

    fn insert(&mut self, key: &str) {
        if let Some(i) = Self::ALL.iter().position(|k| *k == key) {
            self.0 |= 1 << i;
        }
    }

    /// Whether `key` is in the set.
    pub fn contains(self, key: &str) -> bool {
        Self::ALL
            .iter()
            .position(|k| *k == key)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// The keys in the set, in pipeline order.
    pub fn names(self) -> Vec<&'static str> {
        (0..Self::ALL.len())
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| Self::ALL[i])
            .collect()
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl Debug for SpecKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// One pipeline's built strategies, kept apart so a reload can reuse them one by one.
#[derive(Clone)]
struct Parts {
    rate_limit: Option<RateLimiter>,
    bulkhead: Option<Bulkhead>,
    total: Option<Timeout>,
    hedging: Option<Hedging>,
    retry: Option<Retry>,
    circuit_breaker: Option<CircuitBreaker>,
    attempt: Option<Timeout>,
}

struct Entry {
    spec: PipelineSpec,
    parts: Parts,
    pipeline: Arc<SpecPipeline>,
}

/// Named pipelines built from a [`RegistrySpec`]; see the [module docs](self).
pub struct PipelineRegistry {
    pipelines: RwLock<HashMap<String, Arc<Entry>>>,
    listener: Option<Arc<dyn EventListener>>,
    /// One reload at a time, so two cannot both reuse (or both replace) a strategy.
    reloading: Mutex<()>,
}

impl Debug for PipelineRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineRegistry")
            .field("pipelines", &self.names())
            .finish_non_exhaustive()
    }
}

impl PipelineRegistry {
    /// Builds every pipeline of `spec`; the first invalid option fails it all, naming its
    /// key (`pipelines.payment.retry.delay`).
    pub fn new(spec: RegistrySpec) -> Result<Self, ConfigError> {
        Self::with_listener(spec, None)
    }

    /// Like [`new`](Self::new), every pipeline reporting to `listener` under its name.
    pub fn with_listener(
        spec: RegistrySpec,
        listener: Option<Arc<dyn EventListener>>,
    ) -> Result<Self, ConfigError> {
        let registry = PipelineRegistry {
            pipelines: RwLock::new(HashMap::new()),
            listener,
            reloading: Mutex::new(()),
        };
        registry.reload(spec)?;
        Ok(registry)
    }

    /// The pipeline `name`, as the registry holds it now (a reload later does not change
    /// the one handed out: fetch again to follow reloads).
    pub fn get(&self, name: &str) -> Option<Arc<SpecPipeline>> {
        let map = self.pipelines.read().unwrap_or_else(|e| e.into_inner());
        map.get(name).map(|entry| Arc::clone(&entry.pipeline))
    }

    /// The circuit breaker of pipeline `name`, if it has one: for health checks and manual
    /// control. A reload that keeps the breaker keeps this handle working.
    pub fn circuit_breaker(&self, name: &str) -> Option<CircuitBreaker> {
        let map = self.pipelines.read().unwrap_or_else(|e| e.into_inner());
        map.get(name)?.parts.circuit_breaker.clone()
    }

    /// The names of the pipelines, sorted.
    pub fn names(&self) -> Vec<String> {
        let map = self.pipelines.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = map.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// The spec the registry runs now.
    pub fn spec(&self) -> RegistrySpec {
        let map = self.pipelines.read().unwrap_or_else(|e| e.into_inner());
        RegistrySpec {
            pipelines: map
                .iter()
                .map(|(name, entry)| (name.clone(), entry.spec.clone()))
                .collect(),
        }
    }

    /// Replaces the pipelines with those of `spec`. A strategy whose options are unchanged
    /// is kept with its state; changed and new ones are built; pipelines no longer in
    /// `spec` are dropped (those already handed out keep working). An invalid spec is
    /// refused whole, naming the key, and nothing changes. Returns what happened to each
    /// pipeline, which is also raised as an event.
    pub fn reload(
        &self,
        spec: RegistrySpec,
    ) -> Result<BTreeMap<String, PipelineReloaded>, ConfigError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        spec.validate()?;
        let old = self
            .pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut built = HashMap::new();
        let mut report = BTreeMap::new();
        for (name, pipeline_spec) in spec.pipelines {
            let (entry, what) = self
                .build(&name, pipeline_spec, old.get(&name).map(|e| &**e))
                .map_err(|e| e.within(&format!("pipelines.{name}")))?;
            built.insert(name.clone(), Arc::new(entry));
            report.insert(name, what);
        }
        *self.pipelines.write().unwrap_or_else(|e| e.into_inner()) = built.clone();
        for (name, what) in &report {
            if let Some(entry) = built.get(name) {
                entry
                    .pipeline
                    .telemetry()
                    .emit(crate::telemetry::strategy::REGISTRY, || {
                        Event::PipelineReloaded(*what)
                    });
            }
        }
        Ok(report)
    }

    fn build(
        &self,
        name: &str,
        spec: PipelineSpec,
        old: Option<&Entry>,
    ) -> Result<(Entry, PipelineReloaded), ConfigError> {
        let mut what = PipelineReloaded {
            rebuilt: SpecKeys::default(),
            kept: SpecKeys::default(),
        };
        let parts = Parts {
            rate_limit: reuse(
                "rate_limit",
                &spec.rate_limit,
                old.map(|o| (&o.spec.rate_limit, &o.parts.rate_limit)),
                &mut what,
                |o| RateLimiter::new(*o),
            )?,
            bulkhead: reuse(
                "bulkhead",
                &spec.bulkhead,
                old.map(|o| (&o.spec.bulkhead, &o.parts.bulkhead)),
                &mut what,
                |o| Bulkhead::new(*o),
            )?,
            total: reuse(
                "timeout.total",
                &spec.timeout.total,
                old.map(|o| (&o.spec.timeout.total, &o.parts.total)),
                &mut what,
                |o| Timeout::new(*o).map_err(|e| spec::at_key(e, "timeout.total")),
            )?,
            hedging: reuse(
                "hedging",
                &spec.hedging,
                old.map(|o| (&o.spec.hedging, &o.parts.hedging)),
                &mut what,
                |o| Hedging::new(o.clone()),
            )?,
            retry: reuse(
                "retry",
                &spec.retry,
                old.map(|o| (&o.spec.retry, &o.parts.retry)),
                &mut what,
                |o| Retry::new(o.clone()),
            )?,
            circuit_breaker: reuse(
                "circuit_breaker",
                &spec.circuit_breaker,
                old.map(|o| (&o.spec.circuit_breaker, &o.parts.circuit_breaker)),
                &mut what,
                |o| CircuitBreaker::new(o.clone()),
            )?,
            attempt: reuse(
                "timeout.attempt",
                &spec.timeout.attempt,
                old.map(|o| (&o.spec.timeout.attempt, &o.parts.attempt)),
                &mut what,
                |o| Timeout::new(*o).map_err(|e| spec::at_key(e, "timeout.attempt")),
            )?,
        };
        let mut builder = Pipeline::builder().name(name);
        if let Some(listener) = &self.listener {
            builder = builder.listener(Arc::clone(listener));
        }
        let p = parts.clone();
        let pipeline = builder
            .strategy(p.rate_limit)
            .strategy(p.bulkhead)
            .strategy(p.total)
            .strategy(p.hedging)
            .strategy(p.retry)
            .strategy(p.circuit_breaker)
            .strategy(p.attempt)
            .build()?;
        let entry = Entry {
            spec,
            parts,
            pipeline: Arc::new(pipeline),
        };
        Ok((entry, what))
    }
}

/// The strategy for `options`: the old one (same state) when its options are the same,
/// else a new one. Options are compared by their `Debug` form: spec options hold data only
/// (no predicates or closures a file could set), and it is the reload path, not the hot one.
fn reuse<O: Debug, S: Clone>(
    key: &'static str,
    options: &Option<O>,
    old: Option<(&Option<O>, &Option<S>)>,
    what: &mut PipelineReloaded,
    build: impl FnOnce(&O) -> Result<S, ConfigError>,
) -> Result<Option<S>, ConfigError> {
    let Some(options) = options else {
        return Ok(None);
    };
    if let Some((Some(old_options), Some(old_strategy))) = old {
        if format!("{old_options:?}") == format!("{options:?}") {
            what.kept.insert(key);
            return Ok(Some(old_strategy.clone()));
        }
    }
    what.rebuilt.insert(key);
    build(options).map(Some)
}
