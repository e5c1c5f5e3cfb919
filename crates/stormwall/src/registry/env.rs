//! Environment overrides for any key of a config file, through figment.

use super::RegistrySpec;
use crate::ConfigError;
use figment::providers::{Env, Format, Toml};
use figment::Figment;

/// The prefix of override variables: `STORMWALL__PAYMENT__RETRY__MAX_RETRIES=5` sets
/// `max_retries` of `[pipelines.payment.retry]`.
pub const ENV_PREFIX: &str = "STORMWALL__";

/// The overrides in the process environment: every `STORMWALL__<PIPELINE>__<KEY>...`
/// variable, keys split at `__` and lowercased, values read as TOML values are (`5`,
/// `0.5`, `true`, else a string such as `250ms`), placed under `pipelines.` — except
/// `STORMWALL__SERVER__...`, which addresses the sidecar's `[server]`.
pub fn env_overrides() -> Env {
    Env::prefixed(ENV_PREFIX).split("__").map(|key| {
        let key = key.as_str();
        if key == "server" || key.starts_with("server.") {
            key.to_owned().into()
        } else {
            format!("pipelines.{key}").into()
        }
    })
}

/// `text` (TOML) with the environment's overrides on top, as a figment to extract from.
pub fn with_env_overrides(text: &str) -> Figment {
    Figment::from(Toml::string(text)).merge(env_overrides())
}

/// Whether any override variable is set.
pub fn has_env_overrides() -> bool {
    std::env::vars_os().any(|(key, _)| {
        key.to_str()
            .is_some_and(|key| key.len() > ENV_PREFIX.len() && key.starts_with(ENV_PREFIX))
    })
}

/// A figment error as a [`ConfigError`] naming the key path and, for an override, the
/// variable it came from.
pub fn figment_error(error: figment::Error) -> ConfigError {
    let key = if error.path.is_empty() {
        "config".to_owned()
    } else {
        error.path.join(".")
    };
    let from = error
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    ConfigError {
        field: key,
        value: String::new(),
        reason: format!("{}{from}", error.kind),
    }
}

impl RegistrySpec {
    /// Reads `text` (TOML: `[pipelines.<name>]` tables) with every
    /// `STORMWALL__<PIPELINE>__<KEY>...` variable of the environment on top, and checks the
    /// result; errors name the key path (`pipelines.payment.retry.max_retries`).
    ///
    /// ```
    /// # #[cfg(feature = "env")] {
    /// use stormwall::registry::RegistrySpec;
    /// let spec = RegistrySpec::from_toml_with_env("[pipelines.payment]\nretry = { max_retries = 2 }").unwrap();
    /// assert!(spec.pipelines["payment"].retry.is_some());
    /// # }
    /// ```
    pub fn from_toml_with_env(text: &str) -> Result<RegistrySpec, ConfigError> {
        let spec: RegistrySpec = with_env_overrides(text).extract().map_err(figment_error)?;
        spec.validate()?;
        Ok(spec)
    }
}
