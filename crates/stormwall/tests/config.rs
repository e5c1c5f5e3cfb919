//! Every strategy's options through a config file: the round trip, the strictness, the
//! key paths; and the registry built from the shared example file, reloaded in place.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall::bulkhead::BulkheadOptions;
use stormwall::chaos::ChaosOptions;
use stormwall::circuit_breaker::{CircuitBreakerOptions, CircuitState};
use stormwall::hedging::HedgingOptions;
use stormwall::rate_limit::{RateLimitAlgorithm, RateLimitOptions};
use stormwall::registry::{
    PipelineChange, PipelineRegistry, PipelineReloaded, PipelineSpec, RegistrySpec, StrategySpec,
};
use stormwall::retry::{Backoff, Jitter, RetryOptions};
use stormwall::telemetry::{Event, EventListener, EventSource};
use stormwall::timeout::TimeoutOptions;
use stormwall::Error;

/// The example file the sidecar and the HTTP handler read too.
const EXAMPLE: &str = include_str!("../../../examples/stormwall.toml");

#[derive(Serialize, Deserialize)]
struct Doc<T> {
    strategy: T,
}

/// options → TOML → options, compared field by field; and the same through YAML.
fn round_trip<T: Serialize + DeserializeOwned + Debug + PartialEq>(options: T) -> String {
    let text = toml::to_string(&Doc { strategy: &options }).unwrap();
    let back: Doc<T> = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
    assert_eq!(back.strategy, options, "{text}");
    let yaml = serde_norway::to_string(&options).unwrap();
    let back: T = serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
    assert_eq!(back, options, "{yaml}");
    text
}

#[test]
fn every_strategy_round_trips_through_toml() {
    let text = round_trip(
        RetryOptions::linear(Duration::from_millis(250))
            .max_retries(7)
            .max_delay(Duration::from_secs(3))
            .jitter(Jitter::Equal)
            .backoff(Backoff::Constant),
    );
    assert!(text.contains(r#"delay = "250ms""#), "{text}");
    assert!(text.contains(r#"jitter = "equal""#), "{text}");
    round_trip(RetryOptions::default());
    round_trip(
        CircuitBreakerOptions::new()
            .failure_ratio(0.25)
            .minimum_throughput(20)
            .sampling_duration(Duration::from_secs(12))
            .count_window(50)
            .consecutive_failures(4)
            .slow_call(Duration::from_millis(800), 0.5)
            .break_duration(Duration::from_secs(9))
            .permitted_calls_in_half_open(3)
            .success_threshold(2),
    );
    round_trip(CircuitBreakerOptions::consecutive(3));
    round_trip(TimeoutOptions::new(Duration::from_millis(1500)));
    round_trip(
        BulkheadOptions::new(8)
            .queue_limit(4)
            .queue_timeout(Duration::from_millis(40)),
    );
    round_trip(
        RateLimitOptions::per_minute(60)
            .burst(5)
            .algorithm(RateLimitAlgorithm::SlidingWindow { segments: 6 }),
    );
    round_trip(RateLimitOptions::per_second(9).algorithm(RateLimitAlgorithm::TokenBucket));
    round_trip(HedgingOptions::latency(Duration::from_millis(90)).max_hedged_attempts(3));
    round_trip(HedgingOptions::parallel());
    round_trip(HedgingOptions::fallback());
    round_trip(ChaosOptions::rate(0.2).seed(7).enabled(false));
    let spec: RegistrySpec = toml::from_str(EXAMPLE).unwrap();
    let text = toml::to_string(&spec).unwrap();
    let back: RegistrySpec = toml::from_str(&text).unwrap();
    assert_eq!(back, spec, "{text}");
}

/// The example file's pipelines written as YAML read back as the same spec, and a YAML file
/// builds a registry; YAML errors name the key too.
#[tokio::test(start_paused = true)]
async fn pipelines_read_from_yaml_as_from_toml() {
    let spec: RegistrySpec = toml::from_str(EXAMPLE).unwrap();
    let yaml = serde_norway::to_string(&spec).unwrap();
    // serde_norway writes (and reads) a strategy as a YAML tag: `- !circuit_breaker`.
    assert!(yaml.contains("- !circuit_breaker"), "{yaml}");
    assert_eq!(serde_norway::from_str::<RegistrySpec>(&yaml).unwrap(), spec);
    let written = r#"
pipelines:
  search:
    strategies:
      - !timeout 2s
      - !retry { max_retries: 2, delay: 10ms, jitter: none }
      - !circuit_breaker { consecutive_failures: 3 }
"#;
    let spec: RegistrySpec = serde_norway::from_str(written).unwrap();
    let registry = PipelineRegistry::new(spec).unwrap();
    let search = registry.get("search").unwrap();
    let answer = search.execute(|_| async { Ok::<_, &str>(7) }).await;
    assert_eq!(answer.unwrap(), 7);
    let e = serde_norway::from_str::<RegistrySpec>(&written.replace("max_retries", "max_retrys"))
        .unwrap_err();
    assert!(e.to_string().contains("max_retrys"), "{e}");
    let e = serde_norway::from_str::<RegistrySpec>(&written.replace("10ms", "soon")).unwrap_err();
    assert!(
        e.to_string()
            .contains("pipelines.search.strategies[1].delay"),
        "{e}"
    );
    let spec: RegistrySpec =
        serde_norway::from_str(&written.replace("delay: 10ms", "delay: 0s")).unwrap();
    assert_eq!(
        spec.validate().unwrap_err().field,
        "pipelines.search.strategies[1].retry.delay"
    );
}

#[test]
fn keys_left_out_take_the_documented_defaults() {
    let retry: RetryOptions = toml::from_str("max_retries = 5").unwrap();
    assert_eq!(retry, RetryOptions::default().max_retries(5));
    let breaker: CircuitBreakerOptions = toml::from_str("").unwrap();
    assert_eq!(breaker, CircuitBreakerOptions::new());
    // The burst follows the permits unless set.
    let limit: RateLimitOptions = toml::from_str("permits = 5\nper = \"10s\"").unwrap();
    assert_eq!(limit, RateLimitOptions::per(5, Duration::from_secs(10)));
    assert_eq!(limit.effective_burst(), 5);
    // The sidecar's older names still read.
    let bulkhead: BulkheadOptions = toml::from_str("max_concurrency = 3\nqueue = 2").unwrap();
    assert_eq!(bulkhead, BulkheadOptions::new(3).queue_limit(2));
}

#[test]
fn unknown_keys_bad_values_and_bad_enums_are_refused() {
    for (text, needle) in [
        ("max_retires = 5", "max_retires"),
        ("delay = \"soon\"", "soon"),
        ("backoff = \"cubic\"", "cubic"),
        ("jitter = \"lots\"", "lots"),
    ] {
        let e = toml::from_str::<RetryOptions>(text).unwrap_err();
        assert!(e.to_string().contains(needle), "{text}: {e}");
    }
    let e = toml::from_str::<HedgingOptions>("delay = \"sometimes\"").unwrap_err();
    assert!(e.to_string().contains("parallel"), "{e}");
    let e = toml::from_str::<PipelineSpec>("strategies = [{ retry = {} }, { retyr = {} }]")
        .unwrap_err();
    assert!(e.to_string().contains("retyr"), "{e}");
    // A strategy is a table of one key.
    let e = toml::from_str::<PipelineSpec>("strategies = [{ retry = {}, timeout = \"1s\" }]")
        .unwrap_err();
    assert!(e.to_string().contains("1 element"), "{e}");
    // The keyed form of the sidecar's routes is not a pipeline's.
    let e = toml::from_str::<PipelineSpec>("[retry]\nmax_retries = 1").unwrap_err();
    assert!(e.to_string().contains("unknown field `retry`"), "{e}");
}

#[test]
fn validation_names_the_key_path_in_the_file() {
    let spec: RegistrySpec = toml::from_str(
        "[pipelines.payment]\nstrategies = [{ retry = { delay = \"1s\" } }, { timeout = \"0s\" }]",
    )
    .unwrap();
    let e = spec.validate().unwrap_err();
    assert_eq!(e.field, "pipelines.payment.strategies[1].timeout");
    let spec: RegistrySpec = toml::from_str(
        "[pipelines.payment]\nstrategies = [{ retry = { delay = \"1s\", max_delay = \"10ms\" } }]",
    )
    .unwrap();
    assert_eq!(
        PipelineRegistry::new(spec).unwrap_err().field,
        "pipelines.payment.strategies[0].retry.max_delay"
    );
    let spec: RegistrySpec =
        toml::from_str("[pipelines.search]\nstrategies = [{ hedging = { delay = \"0s\" } }]")
            .unwrap();
    assert_eq!(
        spec.validate().unwrap_err().field,
        "pipelines.search.strategies[0].hedging.delay"
    );
    let nine = ["{ timeout = \"1s\" }"; 9].join(", ");
    let spec: RegistrySpec =
        toml::from_str(&format!("[pipelines.long]\nstrategies = [{nine}]")).unwrap();
    let e = spec.validate().unwrap_err();
    assert_eq!(e.field, "pipelines.long.strategies");
    assert!(e.to_string().contains("at most 8"), "{e}");
}

fn breaker_and_retry(breaker_first: bool) -> PipelineSpec {
    let retry =
        StrategySpec::Retry(RetryOptions::constant(Duration::from_millis(1)).max_retries(2));
    let breaker = StrategySpec::CircuitBreaker(CircuitBreakerOptions::consecutive(3));
    let timeout = StrategySpec::Timeout(TimeoutOptions::new(Duration::from_secs(1)));
    if breaker_first {
        [breaker, retry, timeout].into_iter().collect()
    } else {
        [retry, breaker, timeout].into_iter().collect()
    }
}

fn registry_of(pipelines: &[(&str, PipelineSpec)]) -> RegistrySpec {
    RegistrySpec {
        pipelines: pipelines
            .iter()
            .map(|(name, spec)| (name.to_string(), spec.clone()))
            .collect(),
    }
}

/// Calls of the operation in one failing execution, and the breaker's state after it.
async fn fail_once(registry: &PipelineRegistry, name: &str) -> (u32, CircuitState) {
    let calls = std::sync::atomic::AtomicU32::new(0);
    let pipeline = registry.get(name).unwrap();
    let _ = pipeline
        .execute(|_| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Err::<(), _>("down") }
        })
        .await;
    let state = registry.circuit_breaker(name).unwrap().state();
    (calls.into_inner(), state)
}

#[tokio::test(start_paused = true)]
async fn the_files_order_is_the_pipelines_order() {
    let registry = PipelineRegistry::new(registry_of(&[
        ("retry_outside", breaker_and_retry(false)),
        ("breaker_outside", breaker_and_retry(true)),
    ]))
    .unwrap();
    // Retry outside the breaker: the breaker sees every attempt, 3 failures open it.
    assert_eq!(
        fail_once(&registry, "retry_outside").await,
        (3, CircuitState::Open)
    );
    // Breaker outside the retry: it sees one failure per execution.
    assert_eq!(
        fail_once(&registry, "breaker_outside").await,
        (3, CircuitState::Closed)
    );
    assert_eq!(
        fail_once(&registry, "breaker_outside").await,
        (3, CircuitState::Closed)
    );
    assert_eq!(
        fail_once(&registry, "breaker_outside").await,
        (3, CircuitState::Open)
    );
}

#[derive(Default)]
struct Reloads(Mutex<Vec<(String, PipelineReloaded)>>);

impl EventListener for Reloads {
    fn on_event(&self, source: &EventSource<'_>, event: &Event) {
        if let Event::PipelineReloaded(reloaded) = event {
            let mut seen = self.0.lock().unwrap();
            seen.push((source.pipeline.to_owned(), *reloaded));
        }
    }
}

impl Reloads {
    fn take(&self) -> Vec<(String, PipelineReloaded)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn example() -> RegistrySpec {
    toml::from_str(EXAMPLE).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_example_file_builds_every_pipeline() {
    let registry = PipelineRegistry::new(example()).unwrap();
    assert_eq!(registry.names(), ["inventory", "payment"]);
    let payment = registry.get("payment").unwrap();
    let answer = payment
        .execute(|_| async { Ok::<_, std::io::Error>("charged") })
        .await;
    assert_eq!(answer.unwrap(), "charged");
    assert!(registry.get("shipping").is_none());
    assert_eq!(registry.spec(), example());
}

/// Replaces the strategy of `kind` in `spec` with `by`.
fn replace(spec: &mut PipelineSpec, by: StrategySpec) {
    let at = spec
        .strategies
        .iter()
        .position(|s| s.kind() == by.kind())
        .unwrap();
    spec.strategies[at] = by;
}

/// With the retry outside or inside the breaker: a reload that changes only the retry (or
/// only moves the breaker) keeps the open breaker; one that changes the breaker rebuilds it.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_survives_a_reload_that_changes_only_the_retry_in_either_order() {
    for breaker_first in [false, true] {
        let reloads = Arc::new(Reloads::default());
        let spec = breaker_and_retry(breaker_first);
        let registry = PipelineRegistry::with_listener(
            registry_of(&[("inventory", spec.clone())]),
            Some(reloads.clone()),
        )
        .unwrap();
        while fail_once(&registry, "inventory").await.1 != CircuitState::Open {}

        let mut changed = spec.clone();
        replace(
            &mut changed,
            StrategySpec::Retry(RetryOptions::constant(Duration::from_millis(5)).max_retries(1)),
        );
        let report = registry
            .reload(registry_of(&[("inventory", changed.clone())]))
            .unwrap();
        let inventory = report["inventory"];
        assert_eq!(inventory.change, PipelineChange::Changed);
        assert_eq!(inventory.strategies.rebuilt(), ["retry"]);
        assert_eq!(inventory.strategies.kept(), ["circuit_breaker", "timeout"]);
        // The reloaded pipeline still rejects without calling: its breaker is the open one.
        let (calls, state) = fail_once(&registry, "inventory").await;
        assert_eq!((calls, state), (0, CircuitState::Open), "{breaker_first}");
        assert!(matches!(
            registry
                .get("inventory")
                .unwrap()
                .execute(|_| async { Ok::<_, &str>(()) })
                .await,
            Err(Error::CircuitOpen { .. })
        ));

        // Moving the breaker to the other side of the retry keeps it too.
        let mut moved = changed.clone();
        moved.strategies.swap(0, 1);
        let report = registry
            .reload(registry_of(&[("inventory", moved.clone())]))
            .unwrap();
        assert!(report["inventory"].strategies.rebuilt().is_empty());
        assert_eq!(
            registry.circuit_breaker("inventory").unwrap().state(),
            CircuitState::Open
        );

        // Changing the breaker itself rebuilds it: closed again.
        let mut rebuilt = moved.clone();
        replace(
            &mut rebuilt,
            StrategySpec::CircuitBreaker(CircuitBreakerOptions::consecutive(6)),
        );
        let report = registry
            .reload(registry_of(&[("inventory", rebuilt)]))
            .unwrap();
        assert_eq!(
            report["inventory"].strategies.rebuilt(),
            ["circuit_breaker"]
        );
        assert_eq!(
            registry.circuit_breaker("inventory").unwrap().state(),
            CircuitState::Closed
        );
        // One event per reload, through the pipeline's listener.
        let seen = reloads.take();
        let changes: Vec<PipelineChange> = seen.iter().map(|(_, r)| r.change).collect();
        assert_eq!(
            changes,
            [
                PipelineChange::Added,
                PipelineChange::Changed,
                PipelineChange::Changed,
                PipelineChange::Changed
            ]
        );
        assert!(seen.iter().all(|(name, _)| name == "inventory"));
        assert_eq!(seen[3].1.strategies.rebuilt(), ["circuit_breaker"]);
    }
}

/// A reload raises one event per pipeline: added, changed (which strategies kept, which
/// rebuilt), unchanged, removed.
#[tokio::test(start_paused = true)]
async fn a_reload_reports_every_pipeline_added_changed_unchanged_or_removed() {
    let reloads = Arc::new(Reloads::default());
    let registry = PipelineRegistry::with_listener(example(), Some(reloads.clone())).unwrap();
    let first = reloads.take();
    assert_eq!(first.len(), 2);
    for (_, reloaded) in &first {
        assert_eq!(reloaded.change, PipelineChange::Added);
        assert!(reloaded.strategies.kept().is_empty());
    }
    let payment_before = registry.get("payment").unwrap();

    let mut next = example();
    next.pipelines.remove("inventory");
    next.pipelines.insert(
        "search".into(),
        [StrategySpec::Timeout(TimeoutOptions::new(
            Duration::from_secs(2),
        ))]
        .into_iter()
        .collect(),
    );
    let report = registry.reload(next).unwrap();
    assert_eq!(report["payment"].change, PipelineChange::Unchanged);
    assert_eq!(
        report["payment"].strategies.kept(),
        ["bulkhead", "timeout", "retry", "circuit_breaker", "timeout"]
    );
    assert_eq!(report["search"].change, PipelineChange::Added);
    assert_eq!(report["search"].strategies.rebuilt(), ["timeout"]);
    assert_eq!(report["inventory"].change, PipelineChange::Removed);
    assert_eq!(
        report["inventory"].strategies.rebuilt(),
        ["timeout", "retry", "circuit_breaker", "timeout"]
    );
    // An unchanged pipeline is the very same one.
    assert!(Arc::ptr_eq(
        &payment_before,
        &registry.get("payment").unwrap()
    ));
    assert_eq!(registry.names(), ["payment", "search"]);
    // The events say the same, each under its pipeline's name.
    let mut seen = reloads.take();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let events: Vec<(String, PipelineReloaded)> = report.into_iter().collect();
    assert_eq!(seen, events);
}

#[tokio::test(start_paused = true)]
async fn a_bad_spec_is_refused_whole_and_the_old_pipelines_keep_serving() {
    let registry = PipelineRegistry::new(example()).unwrap();
    let before = registry.get("payment").unwrap();
    let mut bad = example();
    replace(
        bad.pipelines.get_mut("inventory").unwrap(),
        StrategySpec::Retry(RetryOptions::constant(Duration::from_millis(5)).max_retries(0)),
    );
    bad.pipelines.remove("payment");
    let e = registry.reload(bad).unwrap_err();
    assert_eq!(
        e.field,
        "pipelines.inventory.strategies[1].retry.max_retries"
    );
    assert!(e.to_string().contains("≥ 1"), "{e}");
    // Nothing changed: payment is still there, the very same pipeline.
    assert!(Arc::ptr_eq(&before, &registry.get("payment").unwrap()));
    assert_eq!(registry.names(), ["inventory", "payment"]);
}

/// The keys of a struct as serde reads them (its `FIELDS`; an enum's `VARIANTS`), found by
/// asking it to deserialize from a deserializer that only records them.
fn keys<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Probe(&'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields;
            Err(Stop)
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = variants;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            identifier ignored_any
        }
    }
    let mut probe = Probe(&[]);
    let _ = T::deserialize(&mut probe);
    probe.0
}

/// The rows of docs/configuration.md about the core's strategies (the sections before the
/// HTTP handler's): key → default cell, backticks dropped.
fn documented() -> std::collections::BTreeMap<String, String> {
    let doc = include_str!("../../../docs/configuration.md");
    let core = doc
        .split("## The HTTP handler's own keys")
        .next()
        .unwrap_or_default();
    core.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let unquote = |cell: &str| cell.trim_matches('`').to_owned();
            (unquote(cells[1]), unquote(cells[2]))
        })
        .collect()
}

/// Every key of `T` under `prefix` has a row whose default is what `default` serialises
/// to (`none` for a key the default leaves unset); no row names a key `T` lacks.
fn check_documented<T: Serialize + DeserializeOwned>(
    prefix: &str,
    default: T,
    rows: &std::collections::BTreeMap<String, String>,
) {
    let serialised: toml::Table = toml::from_str(&toml::to_string(&default).unwrap()).unwrap();
    let fields = keys::<T>();
    assert!(!fields.is_empty(), "{prefix}: no keys found");
    for field in fields {
        let key = format!("{prefix}.{field}");
        let Some(cell) = rows.get(&key) else {
            // serde lists aliases among the keys: the doc names them on the main key's row.
            let doc = include_str!("../../../docs/configuration.md");
            assert!(
                doc.contains(&format!("also read as `{field}`")),
                "docs/configuration.md has no row for `{key}`"
            );
            continue;
        };
        match serialised.get(*field) {
            Some(value) => assert_eq!(
                cell,
                &value.to_string(),
                "docs/configuration.md: the default of `{key}`"
            ),
            None => assert!(
                cell.starts_with("none"),
                "docs/configuration.md: `{key}` has no default, the doc says {cell}"
            ),
        }
    }
    for key in rows.keys() {
        if let Some(field) = key.strip_prefix(&format!("{prefix}.")) {
            assert!(
                fields.contains(&field),
                "docs/configuration.md documents `{key}`, which {prefix} does not have"
            );
        }
    }
}

#[test]
fn the_configuration_doc_lists_every_key_with_its_default() {
    let rows = documented();
    check_documented("retry", RetryOptions::default(), &rows);
    check_documented("circuit_breaker", CircuitBreakerOptions::new(), &rows);
    check_documented("bulkhead", BulkheadOptions::default(), &rows);
    check_documented("rate_limit", RateLimitOptions::default(), &rows);
    check_documented("hedging", HedgingOptions::default(), &rows);
    check_documented("chaos", ChaosOptions::default(), &rows);
    // A timeout is its duration: one row, no default (the value is the strategy).
    assert!(
        rows.get("timeout")
            .is_some_and(|cell| cell.starts_with("none")),
        "docs/configuration.md: the `timeout` row"
    );
    // The strategies a pipeline may hold are exactly the ones documented.
    let mut strategies: Vec<&str> = keys::<StrategySpec>().to_vec();
    strategies.sort_unstable();
    let mut sections: Vec<String> = rows
        .keys()
        .map(|key| key.split('.').next().unwrap_or_default().to_owned())
        .filter(|strategy| strategy != "chaos")
        .collect();
    sections.sort_unstable();
    sections.dedup();
    assert_eq!(sections, strategies);
    assert_eq!(keys::<PipelineSpec>(), ["strategies"]);
}
