//! `STORMWALL__<PIPELINE>__<STRATEGY>__<KEY>=value` overrides any key of the config file. One
//! test in its own binary: it sets process environment variables.

use std::time::Duration;
use stormwall::registry::{PipelineRegistry, RegistrySpec, StrategySpec};

const EXAMPLE: &str = include_str!("../../../examples/stormwall.toml");

fn set(variable: &str, value: &str) {
    std::env::set_var(variable, value);
}

fn unset(variable: &str) {
    std::env::remove_var(variable);
}

#[test]
fn environment_variables_override_any_key_and_are_checked_like_the_file() {
    // By kind: the pipeline's only retry; by position: the second of inventory's timeouts.
    set("STORMWALL__PAYMENT__RETRY__MAX_RETRIES", "5");
    set("STORMWALL__INVENTORY__STRATEGIES__3__TIMEOUT", "2s");
    set(
        "STORMWALL__INVENTORY__CIRCUIT_BREAKER__FAILURE_RATIO",
        "off",
    );
    let spec = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap();
    let payment = &spec.pipelines["payment"].strategies;
    let StrategySpec::Retry(retry) = &payment[2] else {
        panic!("{payment:?}")
    };
    assert_eq!(retry.max_retries, 5);
    // The rest of the table is the file's.
    assert_eq!(retry.delay, Duration::from_millis(200));
    let inventory = &spec.pipelines["inventory"].strategies;
    assert_eq!(
        inventory[3],
        StrategySpec::Timeout(Duration::from_secs(2).into())
    );
    assert_eq!(
        inventory[0],
        StrategySpec::Timeout(Duration::from_secs(10).into())
    );
    let StrategySpec::CircuitBreaker(breaker) = &inventory[2] else {
        panic!("{inventory:?}")
    };
    assert_eq!(breaker.failure_ratio, None);
    assert_eq!(breaker.consecutive_failures, Some(5));
    PipelineRegistry::new(spec).unwrap();
    unset("STORMWALL__INVENTORY__STRATEGIES__3__TIMEOUT");
    unset("STORMWALL__INVENTORY__CIRCUIT_BREAKER__FAILURE_RATIO");

    // An override out of range is refused by the same check, naming the key and the variable.
    set("STORMWALL__PAYMENT__RETRY__MAX_RETRIES", "0");
    let e = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap_err();
    assert_eq!(e.field, "pipelines.payment.strategies[2].retry.max_retries");
    assert!(
        e.to_string()
            .contains("STORMWALL__PAYMENT__RETRY__MAX_RETRIES"),
        "{e}"
    );
    unset("STORMWALL__PAYMENT__RETRY__MAX_RETRIES");
    // A misspelt key too, saying where it came from.
    set("STORMWALL__PAYMENT__RETRY__MAX_RETRYS", "1");
    let e = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap_err();
    assert!(e.to_string().contains("max_retrys"), "{e}");
    assert_eq!(e.field, "pipelines.payment.strategies[2].retry.max_retrys");
    assert!(
        e.to_string()
            .contains("STORMWALL__PAYMENT__RETRY__MAX_RETRYS"),
        "{e}"
    );
    unset("STORMWALL__PAYMENT__RETRY__MAX_RETRYS");
    // A wrong type names the key inside the strategy.
    set("STORMWALL__PAYMENT__BULKHEAD__MAX_CONCURRENCY", "many");
    let e = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap_err();
    assert_eq!(
        e.field,
        "pipelines.payment.strategies[0].bulkhead.max_concurrency"
    );
    unset("STORMWALL__PAYMENT__BULKHEAD__MAX_CONCURRENCY");
    // Two timeouts: a kind alone is ambiguous, and the error says how to name one.
    set("STORMWALL__INVENTORY__TIMEOUT", "1s");
    let e = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap_err();
    assert_eq!(e.field, "pipelines.inventory");
    assert!(
        e.to_string()
            .contains("STORMWALL__INVENTORY__STRATEGIES__<POSITION>__TIMEOUT"),
        "{e}"
    );
    unset("STORMWALL__INVENTORY__TIMEOUT");
    // A strategy the pipeline does not have.
    set("STORMWALL__INVENTORY__HEDGING__DELAY", "1s");
    let e = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap_err();
    assert!(e.to_string().contains("`hedging`"), "{e}");
    unset("STORMWALL__INVENTORY__HEDGING__DELAY");
}
