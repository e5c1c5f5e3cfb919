//! `STORMWALL__<PIPELINE>__<KEY>=value` overrides any key of the config file. One test in
//! its own binary: it sets process environment variables.

use std::time::Duration;
use stormwall::registry::{PipelineRegistry, RegistrySpec};

const EXAMPLE: &str = include_str!("../../../examples/stormwall.toml");

#[test]
fn environment_variables_override_any_key_and_are_checked_like_the_file() {
    std::env::set_var("STORMWALL__PAYMENT__RETRY__MAX_RETRIES", "5");
    std::env::set_var("STORMWALL__INVENTORY__TIMEOUT__ATTEMPT", "2s");
    std::env::set_var(
        "STORMWALL__INVENTORY__CIRCUIT_BREAKER__FAILURE_RATIO",
        "off",
    );
    let spec = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap();
    let retry = spec.pipelines["payment"].retry.as_ref().unwrap();
    assert_eq!(retry.max_retries, 5);
    // The rest of the table is the file's.
    assert_eq!(retry.delay, Duration::from_millis(200));
    let inventory = &spec.pipelines["inventory"];
    assert_eq!(
        inventory.timeout.attempt.unwrap().timeout,
        Duration::from_secs(2)
    );
    assert_eq!(
        inventory.timeout.total.unwrap().timeout,
        Duration::from_secs(10)
    );
    assert_eq!(
        inventory.circuit_breaker.as_ref().unwrap().failure_ratio,
        None
    );
    PipelineRegistry::new(spec).unwrap();

    // An override out of range is refused by the same check, naming the key.
    std::env::set_var("STORMWALL__PAYMENT__RETRY__MAX_RETRIES", "0");
    let e = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap_err();
    assert_eq!(e.field, "pipelines.payment.retry.max_retries");
    std::env::remove_var("STORMWALL__PAYMENT__RETRY__MAX_RETRIES");
    // A misspelt key too, saying where it came from.
    std::env::set_var("STORMWALL__PAYMENT__RETRY__MAX_RETRYS", "1");
    let e = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap_err();
    assert!(e.to_string().contains("max_retrys"), "{e}");
    assert!(e.to_string().contains("environment"), "{e}");
    std::env::remove_var("STORMWALL__PAYMENT__RETRY__MAX_RETRYS");
    std::env::set_var("STORMWALL__PAYMENT__BULKHEAD__MAX_CONCURRENCY", "many");
    let e = RegistrySpec::from_toml_with_env(EXAMPLE).unwrap_err();
    assert_eq!(e.field, "pipelines.payment.bulkhead.max_concurrency");
    std::env::remove_var("STORMWALL__PAYMENT__BULKHEAD__MAX_CONCURRENCY");
}
