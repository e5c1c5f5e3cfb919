//! Pipelines by name, built from a spec (a config file through serde), reloaded in place.
//!
//! Use it when pipelines live in configuration, as Polly users do with
//! `ResiliencePipelineRegistry` and options reload: each named [`PipelineSpec`] becomes a
//! pipeline that [`PipelineRegistry::get`] hands out, and [`PipelineRegistry::reload`]
//! swaps in a new spec. A pipeline is an ordered list of strategies, the first the
//! outermost. On reload a strategy whose options did not change is *kept*, state and all (a
//! breaker stays open, a limiter keeps its counters), wherever it moved in the list; a
//! changed one is rebuilt; a bad spec is refused whole, naming the key, and the old
//! pipelines keep serving. Every pipeline added, changed, kept or removed by a reload raises
//! [`Event::PipelineReloaded`](crate::telemetry::Event) saying which strategies were kept
//! and which rebuilt.
//!
//! Pipelines written in code stay statically composed and unboxed. A registry's pipeline
//! whose order is one of the fixed order's (rate limit → bulkhead → timeout → hedging →
//! retry → circuit breaker → timeout, each optional) is static and unboxed too, no
//! allocation per call; any other order boxes at the edge between strategies (see
//! [`SlotStrategies`]). Pipelines are shared behind an `Arc`, fetched by name.
//!
//! ```
//! # #[cfg(feature = "serde")] {
//! use stormwall::registry::{PipelineRegistry, RegistrySpec};
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let spec: RegistrySpec = serde_json::from_str(r#"{ "pipelines": {
//!     "payment": { "strategies": [
//!         { "retry": { "max_retries": 2, "delay": "10ms" } },
//!         { "timeout": "1s" }
//!     ] }
//! } }"#).unwrap();
//! let registry = PipelineRegistry::new(spec).unwrap();
//! let payment = registry.get("payment").unwrap();
//! let answer = payment.execute(|_| async { Ok::<_, std::io::Error>("paid") }).await;
//! assert_eq!(answer.unwrap(), "paid");
//! # } }
//! ```

#[cfg(feature = "env")]
mod env;
#[cfg(feature = "serde")]
mod extra;
mod spec;
mod strategy;

#[cfg(feature = "env")]
pub use env::{
    env_overrides, has_env_overrides, toml_with_env, AppliedOverrides, EnvOverride, ENV_PREFIX,
};
#[cfg(feature = "serde")]
pub use extra::{deserialize_with_extra, ExtraKeys};
pub use spec::{PipelineSpec, RegistrySpec, StrategyKind, StrategySpec, MAX_STRATEGIES};
pub use strategy::{
    fixed_places, AnyStrategy, DynamicStrategies, FixedStrategies, SlotStrategies, FIXED_ORDER,
};

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

/// The strategies of a registry's pipeline, in the spec's order (see [`SlotStrategies`]).
pub type SpecStrategies = Stack<Identity, SlotStrategies>;

/// A pipeline the registry built.
pub type SpecPipeline = Pipeline<SpecStrategies>;

/// What a reload did to one pipeline (carried by [`Event::PipelineReloaded`], and returned
/// by [`PipelineRegistry::reload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineReloaded {
    /// Added, changed, unchanged or removed.
    pub change: PipelineChange,
    /// Its strategies in order, each kept or rebuilt (for a removed pipeline: the ones it
    /// had, none kept).
    pub strategies: StrategyChanges,
}

/// What a reload did to a pipeline as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineChange {
    /// New in this spec (or the registry's first build): every strategy built.
    Added,
    /// Its spec changed: strategies whose options are unchanged were kept, the others built.
    Changed,
    /// The same spec: the very same pipeline is kept.
    Unchanged,
    /// No longer in the spec: dropped (pipelines handed out earlier keep working).
    Removed,
}

/// The strategies of a pipeline in order, each marked kept (the old one, state included) or
/// rebuilt. Fits in a few bytes, so that an [`Event`] stays small.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct StrategyChanges {
    kinds: [Option<StrategyKind>; MAX_STRATEGIES],
    /// Bit `i`: strategy `i` was kept.
    kept: u8,
}

impl StrategyChanges {
    fn push(&mut self, kind: StrategyKind, kept: bool) {
        if let Some(i) = self.kinds.iter().position(Option::is_none) {
            self.kinds[i] = Some(kind);
            if kept {
                self.kept |= 1 << i;
            }
        }
    }

    /// Every strategy, in pipeline order, with whether it was kept.
    pub fn iter(&self) -> impl Iterator<Item = (StrategyKind, bool)> + '_ {
        self.kinds
            .iter()
            .enumerate()
            .filter_map(|(i, kind)| Some(((*kind)?, self.kept & (1 << i) != 0)))
    }

    /// The names of the strategies kept, in pipeline order.
    pub fn kept(&self) -> Vec<&'static str> {
        self.iter()
            .filter(|(_, kept)| *kept)
            .map(|(kind, _)| kind.name())
            .collect()
    }

    /// The names of the strategies built anew, in pipeline order.
    pub fn rebuilt(&self) -> Vec<&'static str> {
        self.iter()
            .filter(|(_, kept)| !*kept)
            .map(|(kind, _)| kind.name())
            .collect()
    }
}

impl Debug for StrategyChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyChanges")
            .field("kept", &self.kept())
            .field("rebuilt", &self.rebuilt())
            .finish()
    }
}

/// The strategies for `specs`, in order: for each, an old one whose spec is equal (and not
/// taken by an earlier one), state and all, or a new one from `build` (given the position and
/// the spec). `old` pairs each old spec with its strategy. What was kept is reported by kind.
///
/// Shared by the registry and the sidecar's routes, so that both keep the same strategies.
pub fn keep_or_build<K: PartialEq, S: Clone>(
    specs: &[K],
    old: &[(K, S)],
    kind: impl Fn(&K) -> StrategyKind,
    mut build: impl FnMut(usize, &K) -> Result<S, ConfigError>,
) -> Result<(Vec<S>, StrategyChanges), ConfigError> {
    let mut taken = vec![false; old.len()];
    let mut changes = StrategyChanges::default();
    let mut built = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let same = (0..old.len()).find(|&j| !taken[j] && old[j].0 == *spec);
        let strategy = match same {
            Some(j) => {
                taken[j] = true;
                old[j].1.clone()
            }
            None => build(i, spec)?,
        };
        changes.push(kind(spec), same.is_some());
        built.push(strategy);
    }
    Ok((built, changes))
}

impl AnyStrategy {
    /// The strategy `spec` configures, new; errors name the key under the strategy's name
    /// (`retry.delay`, `timeout`).
    pub fn build(spec: &StrategySpec) -> Result<Self, ConfigError> {
        Ok(match spec {
            StrategySpec::RateLimit(o) => AnyStrategy::RateLimit(RateLimiter::new(*o)?),
            StrategySpec::Bulkhead(o) => AnyStrategy::Bulkhead(Bulkhead::new(*o)?),
            StrategySpec::Timeout(o) => {
                AnyStrategy::Timeout(Timeout::new(*o).map_err(|mut e| {
                    // The file's key is the timeout itself, not `timeout.timeout`.
                    e.field = StrategyKind::Timeout.name().to_owned();
                    e
                })?)
            }
            StrategySpec::Hedging(o) => AnyStrategy::Hedging(Hedging::new(o.clone())?),
            StrategySpec::Retry(o) => AnyStrategy::Retry(Retry::new(o.clone())?),
            StrategySpec::CircuitBreaker(o) => {
                AnyStrategy::CircuitBreaker(CircuitBreaker::new(o.clone())?)
            }
        })
    }
}

struct Entry {
    /// The spec's strategies, each with the strategy built for it.
    strategies: Vec<(StrategySpec, AnyStrategy)>,
    pipeline: Arc<SpecPipeline>,
}

impl Entry {
    fn spec(&self) -> PipelineSpec {
        self.strategies
            .iter()
            .map(|(spec, _)| spec.clone())
            .collect()
    }

    fn changes(&self, kept: bool) -> StrategyChanges {
        let mut changes = StrategyChanges::default();
        for (spec, _) in &self.strategies {
            changes.push(spec.kind(), kept);
        }
        changes
    }
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
    /// key (`pipelines.payment.strategies[1].retry.delay`).
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

    /// The first circuit breaker of pipeline `name`, if it has one: for health checks and
    /// manual control. A reload that keeps the breaker keeps this handle working.
    pub fn circuit_breaker(&self, name: &str) -> Option<CircuitBreaker> {
        let map = self.pipelines.read().unwrap_or_else(|e| e.into_inner());
        map.get(name)?
            .strategies
            .iter()
            .find_map(|(_, strategy)| match strategy {
                AnyStrategy::CircuitBreaker(breaker) => Some(breaker.clone()),
                _ => None,
            })
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
                .map(|(name, entry)| (name.clone(), entry.spec()))
                .collect(),
        }
    }

    /// Replaces the pipelines with those of `spec`. A pipeline whose spec is the same is
    /// kept as it is; in a changed one, a strategy whose options are unchanged is kept with
    /// its state (wherever it moved), and changed and new ones are built; pipelines no
    /// longer in `spec` are dropped (those already handed out keep working). An invalid
    /// spec is refused whole, naming the key, and nothing changes. Returns what happened to
    /// each pipeline (removed ones included), which is also raised as an
    /// [`Event::PipelineReloaded`] through each pipeline's listener.
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
            let previous = old.get(&name);
            let (entry, what) = match previous {
                Some(entry) if entry.spec() == pipeline_spec => (
                    Arc::clone(entry),
                    PipelineReloaded {
                        change: PipelineChange::Unchanged,
                        strategies: entry.changes(true),
                    },
                ),
                _ => {
                    let (entry, strategies) = self
                        .build(&name, pipeline_spec, previous.map(|e| &**e))
                        .map_err(|e| e.within(&format!("pipelines.{name}")))?;
                    let change = if previous.is_some() {
                        PipelineChange::Changed
                    } else {
                        PipelineChange::Added
                    };
                    (Arc::new(entry), PipelineReloaded { change, strategies })
                }
            };
            built.insert(name.clone(), entry);
            report.insert(name, what);
        }
        let removed: Vec<(String, Arc<Entry>)> = old
            .into_iter()
            .filter(|(name, _)| !built.contains_key(name))
            .collect();
        *self.pipelines.write().unwrap_or_else(|e| e.into_inner()) = built.clone();
        for (name, entry) in &removed {
            report.insert(
                name.clone(),
                PipelineReloaded {
                    change: PipelineChange::Removed,
                    strategies: entry.changes(false),
                },
            );
        }
        for (name, what) in &report {
            let entry = built
                .get(name)
                .or_else(|| removed.iter().find(|(n, _)| n == name).map(|(_, e)| e));
            if let Some(entry) = entry {
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
    ) -> Result<(Entry, StrategyChanges), ConfigError> {
        let (built, changes) = keep_or_build(
            &spec.strategies,
            old.map_or(&[][..], |o| &o.strategies[..]),
            StrategySpec::kind,
            |i, spec| AnyStrategy::build(spec).map_err(|e| e.within(&format!("strategies[{i}]"))),
        )?;
        let mut builder = Pipeline::builder().name(name);
        if let Some(listener) = &self.listener {
            builder = builder.listener(Arc::clone(listener));
        }
        let pipeline = builder
            .strategy(SlotStrategies::new(built.clone()))
            .build()?;
        let entry = Entry {
            strategies: spec.strategies.into_iter().zip(built).collect(),
            pipeline: Arc::new(pipeline),
        };
        Ok((entry, changes))
    }
}
