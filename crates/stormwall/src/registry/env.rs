//! Environment overrides for any key of a config file, read and parsed by figment.
//!
//! `STORMWALL__PAYMENT__RETRY__MAX_RETRIES=5` sets `max_retries` of the `retry` strategy of
//! `[pipelines.payment]`: a pipeline's strategies are a list, so a variable names a strategy
//! by its kind when the pipeline has one of that kind, or by its position
//! (`STORMWALL__PAYMENT__STRATEGIES__3__TIMEOUT=2s`) when it has several (two timeouts).
//! `STORMWALL__SERVER__<KEY>` sets a key of the sidecar's `[server]`.

use super::{RegistrySpec, StrategySpec};
use crate::ConfigError;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use std::fmt::Write as _;

/// The prefix of override variables.
pub const ENV_PREFIX: &str = "STORMWALL__";

/// One override variable: its name, the key it names (lowercased, split at `__`) and its
/// value, read as figment reads values (`5`, `0.5`, `true`, else a string such as `250ms`).
#[derive(Debug, Clone)]
pub struct EnvOverride {
    /// The variable, e.g. `STORMWALL__PAYMENT__RETRY__MAX_RETRIES`.
    pub variable: String,
    /// The key after the prefix, e.g. `["payment", "retry", "max_retries"]`.
    pub key: Vec<String>,
    /// The value.
    pub value: Value,
}

/// The overrides of the process environment: every `STORMWALL__<KEY>...` variable.
pub fn env_overrides() -> Vec<EnvOverride> {
    let mut overrides: Vec<EnvOverride> = std::env::vars_os()
        .filter_map(|(variable, value)| {
            let variable = variable.to_str()?.to_owned();
            let (head, key) = (
                variable.get(..ENV_PREFIX.len())?,
                variable.get(ENV_PREFIX.len()..)?,
            );
            if !head.eq_ignore_ascii_case(ENV_PREFIX) || key.is_empty() {
                return None;
            }
            let key: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
            let value = value
                .to_string_lossy()
                .parse()
                .unwrap_or_else(|e| match e {});
            Some(EnvOverride {
                variable,
                key,
                value,
            })
        })
        .collect();
    // Deterministic whatever the environment's order.
    overrides.sort_by(|a, b| a.variable.cmp(&b.variable));
    overrides
}

/// Whether any override variable is set.
pub fn has_env_overrides() -> bool {
    !env_overrides().is_empty()
}

/// One step of a key path in a file: a table's key or a list's position.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn path_text(path: &[Step]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Step::Index(i) => {
                let _ = write!(text, "[{i}]");
            }
        }
    }
    text
}

/// The overrides applied to a file: the key path each set (as errors name it), so that an
/// error about such a key can say which variable set it.
#[derive(Debug, Clone, Default)]
pub struct AppliedOverrides(Vec<(String, String)>);

impl AppliedOverrides {
    /// `error`, saying which variable set the key it names (or a key inside it).
    pub fn blame(&self, mut error: ConfigError) -> ConfigError {
        let setters: Vec<&str> = self
            .0
            .iter()
            .filter(|(key, _)| {
                key == &error.field
                    || key.starts_with(&format!("{}.", error.field))
                    || error.field.starts_with(&format!("{key}."))
            })
            .map(|(_, variable)| variable.as_str())
            .collect();
        if !setters.is_empty() {
            let _ = write!(
                error.reason,
                " (set by the environment variable {})",
                setters.join(", ")
            );
        }
        error
    }
}

/// Where `key` (an override's key, after the prefix) points in `doc`: `server.…` as it is,
/// anything else under `pipelines.<name>`, its strategy found by kind or by position.
fn resolve(doc: &Value, key: &[String], variable: &str) -> Result<Vec<Step>, ConfigError> {
    let Some((first, rest)) = key.split_first() else {
        return Err(ConfigError::new(
            "config",
            variable,
            "a key after STORMWALL__",
        ));
    };
    if first == "server" {
        return Ok(key.iter().cloned().map(Step::Key).collect());
    }
    let mut path = vec![Step::Key("pipelines".into()), Step::Key(first.clone())];
    let at = path_text(&path);
    let Some((selector, rest)) = rest.split_first() else {
        return Err(ConfigError::new(
            at,
            variable,
            "a key inside the pipeline (STORMWALL__<PIPELINE>__<STRATEGY>__<KEY>)",
        ));
    };
    let strategies = match doc.find_ref(&format!("pipelines.{first}.strategies")) {
        Some(Value::Array(_, strategies)) => strategies,
        _ => {
            return Err(ConfigError::new(
                at,
                variable,
                "a pipeline of the file with a `strategies` list to override",
            ))
        }
    };
    path.push(Step::Key("strategies".into()));
    if selector == "strategies" {
        let (position, rest) = rest.split_first().unwrap_or((selector, &[]));
        let index = position
            .parse::<usize>()
            .ok()
            .filter(|i| *i < strategies.len())
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.strategies"),
                    variable,
                    format!("a position below {} after STRATEGIES__", strategies.len()),
                )
            })?;
        path.push(Step::Index(index));
        path.extend(rest.iter().cloned().map(Step::Key));
        return Ok(path);
    }
    let of_kind: Vec<usize> = strategies
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Value::Dict(_, d) if d.contains_key(selector.as_str())))
        .map(|(i, _)| i)
        .collect();
    match of_kind[..] {
        [index] => {
            path.push(Step::Index(index));
            path.push(Step::Key(selector.clone()));
            path.extend(rest.iter().cloned().map(Step::Key));
            Ok(path)
        }
        [] => Err(ConfigError::new(
            at,
            variable,
            format!("a pipeline with a `{selector}` strategy to override (it has none)"),
        )),
        _ => Err(ConfigError::new(
            at,
            variable,
            format!(
                "one `{selector}` strategy, or a position: it has {} (at {:?}), so name one as \
                 STORMWALL__{}__STRATEGIES__<POSITION>__{}",
                of_kind.len(),
                of_kind,
                first.to_ascii_uppercase(),
                selector.to_ascii_uppercase()
            ),
        )),
    }
}

/// Sets `value` at `path` in `doc`, making the tables on the way.
fn set(doc: &mut Value, path: &[Step], value: Value, variable: &str) -> Result<(), ConfigError> {
    let mut here = doc;
    for (depth, step) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        let at = || path_text(&path[..depth]);
        here = match (step, here) {
            (Step::Key(key), Value::Dict(_, dict)) => {
                if last {
                    dict.insert(key.clone(), value);
                    return Ok(());
                }
                dict.entry(key.clone())
                    .or_insert_with(|| Value::from(Dict::new()))
            }
            (Step::Index(i), Value::Array(_, items)) if *i < items.len() => &mut items[*i],
            _ => {
                let at = at();
                return Err(ConfigError::new(
                    if at.is_empty() { "config".into() } else { at },
                    variable,
                    "a table there to set a key in",
                ));
            }
        };
    }
    Ok(())
}

/// `text` (TOML) with every override of `overrides` applied: the document to read a config
/// from, and which keys the variables set.
pub fn toml_with_env(
    text: &str,
    overrides: &[EnvOverride],
) -> Result<(Value, AppliedOverrides), ConfigError> {
    let mut doc: Value = Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| figment_error(e, ""))?;
    let mut applied = AppliedOverrides::default();
    for o in overrides {
        let path = resolve(&doc, &o.key, &o.variable)?;
        set(&mut doc, &path, o.value.clone(), &o.variable)?;
        applied.0.push((path_text(&path), o.variable.clone()));
    }
    Ok((doc, applied))
}

/// A figment error as a [`ConfigError`] naming the key path (under `prefix`).
fn figment_error(error: figment::Error, prefix: &str) -> ConfigError {
    let mut key = prefix.to_owned();
    for part in &error.path {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(part);
    }
    if key.is_empty() {
        key = "config".to_owned();
    }
    ConfigError {
        field: key,
        value: String::new(),
        reason: error.kind.to_string(),
    }
}

/// A deserialisation error of `doc` as a [`RegistrySpec`], naming the key: figment's path
/// has no list positions, so the strategies of the pipeline it names are read one by one to
/// find the one at fault.
fn locate(doc: &Value, error: figment::Error) -> ConfigError {
    if let [pipelines, name, strategies, ..] = &error.path[..] {
        if pipelines == "pipelines" && strategies == "strategies" {
            if let Some(Value::Array(_, items)) =
                doc.find_ref(&format!("pipelines.{name}.strategies"))
            {
                for (i, item) in items.iter().enumerate() {
                    if let Err(e) = item.deserialize::<StrategySpec>() {
                        return figment_error(e, &format!("pipelines.{name}.strategies[{i}]"));
                    }
                }
            }
        }
    }
    figment_error(error, "")
}

impl RegistrySpec {
    /// Reads `text` (TOML: `[pipelines.<name>]` tables) with every `STORMWALL__…` variable
    /// of the environment on top, and checks the result. A variable names a pipeline's
    /// strategy by its kind (`STORMWALL__PAYMENT__RETRY__MAX_RETRIES=5`) or, when the
    /// pipeline has several of that kind, by its position
    /// (`STORMWALL__PAYMENT__STRATEGIES__4__TIMEOUT=2s`);
    /// errors name the key path (`pipelines.payment.strategies[1].retry.max_retries`) and,
    /// for a key a variable set, the variable.
    ///
    /// ```
    /// # #[cfg(feature = "env")] {
    /// use stormwall::registry::RegistrySpec;
    /// let spec = RegistrySpec::from_toml_with_env(
    ///     "[pipelines.payment]\nstrategies = [{ retry = { max_retries = 2 } }]",
    /// ).unwrap();
    /// assert_eq!(spec.pipelines["payment"].strategies.len(), 1);
    /// # }
    /// ```
    pub fn from_toml_with_env(text: &str) -> Result<RegistrySpec, ConfigError> {
        let (doc, applied) = toml_with_env(text, &env_overrides())?;
        let spec: RegistrySpec = doc
            .deserialize()
            .map_err(|e| applied.blame(locate(&doc, e)))?;
        spec.validate().map_err(|e| applied.blame(e))?;
        Ok(spec)
    }
}
