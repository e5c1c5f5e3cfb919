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
use stormwall::registry::{PipelineRegistry, PipelineSpec, RegistrySpec};
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

/// options → TOML → options; compared by `Debug` (options holding predicates have no
/// `PartialEq`), which prints every field.
fn round_trip<T: Serialize + DeserializeOwned + Debug>(options: T) -> String {
    let text = toml::to_string(&Doc { strategy: &options }).unwrap();
    let back: Doc<T> = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
    assert_eq!(
        format!("{:?}", back.strategy),
        format!("{options:?}"),
        "{text}"
    );
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
    assert_eq!(format!("{back:?}"), format!("{spec:?}"));
}

#[test]
fn keys_left_out_take_the_documented_defaults() {
    let retry: RetryOptions = toml::from_str("max_retries = 5").unwrap();
    assert_eq!(
        format!("{retry:?}"),
        format!("{:?}", RetryOptions::default().max_retries(5))
    );
    let breaker: CircuitBreakerOptions = toml::from_str("").unwrap();
    assert_eq!(
        format!("{breaker:?}"),
        format!("{:?}", CircuitBreakerOptions::new())
    );
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
    let e = toml::from_str::<PipelineSpec>("[retry]\nmax_retries = 1\n[retyr]").unwrap_err();
    assert!(e.to_string().contains("retyr"), "{e}");
}

#[test]
fn validation_names_the_key_path_in_the_file() {
    let spec: RegistrySpec = toml::from_str(
        "[pipelines.payment]\ntimeout = { attempt = \"0s\" }\nretry = { delay = \"1s\" }",
    )
    .unwrap();
    let e = spec.validate().unwrap_err();
    assert_eq!(e.field, "pipelines.payment.timeout.attempt");
    let spec: RegistrySpec =
        toml::from_str("[pipelines.payment]\nretry = { delay = \"1s\", max_delay = \"10ms\" }")
            .unwrap();
    assert_eq!(
        PipelineRegistry::new(spec).unwrap_err().field,
        "pipelines.payment.retry.max_delay"
    );
    let spec: RegistrySpec =
        toml::from_str("[pipelines.search]\nhedging = { delay = \"0s\" }").unwrap();
    assert_eq!(
        spec.validate().unwrap_err().field,
        "pipelines.search.hedging.delay"
    );
}

#[derive(Default)]
struct Reloads(Mutex<Vec<(String, Event)>>);

impl EventListener for Reloads {
    fn on_event(&self, source: &EventSource<'_>, event: &Event) {
        if let Event::PipelineReloaded(_) = event {
            let mut seen = self.0.lock().unwrap();
            seen.push((source.pipeline.to_owned(), event.clone()));
        }
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
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_survives_a_reload_that_changes_only_the_retry() {
    let reloads = Arc::new(Reloads::default());
    let registry = PipelineRegistry::with_listener(example(), Some(reloads.clone())).unwrap();
    // inventory: 2 retries, breaker opens after 5 failures in a row: two executions fail
    // 3 + 2 times (the breaker rejects the sixth attempt).
    let inventory = registry.get("inventory").unwrap();
    for _ in 0..2 {
        let _ = inventory.execute(|_| async { Err::<(), _>("down") }).await;
    }
    let breaker = registry.circuit_breaker("inventory").unwrap();
    assert_eq!(breaker.state(), CircuitState::Open);

    let mut changed = example();
    let inventory_spec = changed.pipelines.get_mut("inventory").unwrap();
    inventory_spec.retry = Some(RetryOptions::constant(Duration::from_millis(5)).max_retries(1));
    let report = registry.reload(changed.clone()).unwrap();
    assert_eq!(report["inventory"].rebuilt.names(), ["retry"]);
    assert_eq!(
        report["inventory"].kept.names(),
        ["timeout.total", "circuit_breaker", "timeout.attempt"]
    );
    assert!(report["payment"].rebuilt.is_empty());

    // The reloaded pipeline still rejects: its breaker is the open one.
    let reloaded = registry.get("inventory").unwrap();
    let calls = std::sync::atomic::AtomicU32::new(0);
    let outcome = reloaded
        .execute(|_| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Ok::<_, &str>(()) }
        })
        .await;
    assert!(
        matches!(outcome, Err(Error::CircuitOpen { .. })),
        "{outcome:?}"
    );
    assert_eq!(calls.into_inner(), 0);
    assert_eq!(
        registry.circuit_breaker("inventory").unwrap().state(),
        CircuitState::Open
    );

    // Changing the breaker itself rebuilds it: closed again.
    let inventory_spec = changed.pipelines.get_mut("inventory").unwrap();
    inventory_spec.circuit_breaker = Some(CircuitBreakerOptions::consecutive(6));
    let report = registry.reload(changed).unwrap();
    assert_eq!(report["inventory"].rebuilt.names(), ["circuit_breaker"]);
    assert_eq!(
        registry.circuit_breaker("inventory").unwrap().state(),
        CircuitState::Closed
    );

    // One event per pipeline per reload (the first build included), under its name.
    let seen = reloads.0.lock().unwrap();
    assert_eq!(seen.len(), 6, "{seen:?}");
    let last = seen
        .iter()
        .rev()
        .find(|(name, _)| name == "inventory")
        .unwrap();
    match &last.1 {
        Event::PipelineReloaded(r) => assert_eq!(r.rebuilt.names(), ["circuit_breaker"]),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_bad_spec_is_refused_whole_and_the_old_pipelines_keep_serving() {
    let registry = PipelineRegistry::new(example()).unwrap();
    let before = registry.get("payment").unwrap();
    let mut bad = example();
    bad.pipelines.get_mut("inventory").unwrap().retry =
        Some(RetryOptions::constant(Duration::from_millis(5)).max_retries(0));
    bad.pipelines.remove("payment");
    let e = registry.reload(bad).unwrap_err();
    assert_eq!(e.field, "pipelines.inventory.retry.max_retries");
    assert!(e.to_string().contains("≥ 1"), "{e}");
    // Nothing changed: payment is still there, the very same pipeline.
    assert!(Arc::ptr_eq(&before, &registry.get("payment").unwrap()));
    assert_eq!(registry.names(), ["inventory", "payment"]);
}

/// The keys of a struct as serde reads them (its `FIELDS`), found by asking it to
/// deserialize from a deserializer that only records them.
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
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
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
    check_documented(
        "timeout",
        stormwall::registry::TimeoutSpec::default(),
        &rows,
    );
    // A pipeline's keys are exactly the strategies documented.
    let mut strategies: Vec<&str> = keys::<PipelineSpec>().to_vec();
    strategies.sort_unstable();
    let mut sections: Vec<String> = rows
        .keys()
        .filter_map(|key| key.split_once('.').map(|(strategy, _)| strategy.to_owned()))
        .filter(|strategy| strategy != "chaos")
        .collect();
    sections.sort_unstable();
    sections.dedup();
    assert_eq!(sections, strategies);
}
