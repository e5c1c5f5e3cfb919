//! Options from Python: keyword arguments and dicts become the JSON the core's serde
//! option types read, so every default, every range and every error message is Rust's
//! (and the sidecar's) — an option exists once.
//!
//! Durations are accepted as seconds (`0.2`), `datetime.timedelta` or humantime strings
//! (`"200ms"`); numbers and timedeltas become humantime strings (`0.2` → `"200ms"`) before
//! serde reads them, so the core's messages show them as a person would write them.

use crate::errors::{config_error, from_config};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::time::Duration;
use stormwall::ConfigError;

/// Keys whose values are durations, in every strategy's options and in a `PipelineSpec`.
const DURATION_KEYS: &[&str] = &[
    "delay",
    "max_delay",
    "sampling_duration",
    "break_duration",
    "timeout",
    "period",
    "per",
    "queue_timeout",
    "duration_threshold",
    "total",
    "attempt",
];

fn is_duration_key(key: &str) -> bool {
    DURATION_KEYS.contains(&key)
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}.{key}"),
    }
}

fn repr(value: &Bound<'_, PyAny>) -> String {
    value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".to_owned())
}

/// `seconds` as a humantime string serde's duration fields read.
fn duration_text(
    py: Python<'_>,
    path: &str,
    value: &Bound<'_, PyAny>,
    seconds: f64,
) -> PyResult<Value> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(config_error(
            py,
            path,
            &repr(value),
            "must be a duration: seconds ≥ 0, a datetime.timedelta or a string like \"200ms\"",
        ));
    }
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) => Ok(Value::String(human(duration))),
        Err(_) => Err(config_error(
            py,
            path,
            &repr(value),
            "is too long for a duration (at most 2^64 seconds)",
        )),
    }
}

/// `duration` as a humantime string that reads as it parses: `"200ms"`, `"1s 500ms"`,
/// `"30s"` (the strings a user sees again in the core's error messages).
pub(crate) fn human(duration: Duration) -> String {
    let nanos = duration.subsec_nanos();
    let parts = [
        (duration.as_secs(), "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".to_owned()
    } else {
        text.join(" ")
    }
}

/// `value` as JSON; `duration` when the key it sits under holds a duration.
pub(crate) fn to_json(value: &Bound<'_, PyAny>, path: &str, duration: bool) -> PyResult<Value> {
    let py = value.py();
    if value.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(i) = value.cast::<PyInt>() {
        if duration {
            let seconds: f64 = i.extract()?;
            return duration_text(py, path, value, seconds);
        }
        if let Ok(n) = i.extract::<i64>() {
            return Ok(Value::from(n));
        }
        if let Ok(n) = i.extract::<u64>() {
            return Ok(Value::from(n));
        }
        return Err(config_error(
            py,
            path,
            &repr(value),
            "is out of range for an integer option",
        ));
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        let x = f.value();
        if duration {
            return duration_text(py, path, value, x);
        }
        return serde_json::Number::from_f64(x)
            .map(Value::Number)
            .ok_or_else(|| config_error(py, path, &repr(value), "must be a finite number"));
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_owned()));
    }
    if let Ok(d) = value.cast::<PyDict>() {
        let mut map = Map::new();
        for (k, v) in d.iter() {
            let key = k
                .cast::<PyString>()
                .map_err(|_| config_error(py, path, &repr(&k), "keys must be strings"))?
                .to_str()?
                .to_owned();
            let child = join(path, &key);
            let json = to_json(&v, &child, is_duration_key(&key))?;
            map.insert(key, json);
        }
        return Ok(Value::Object(map));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in value.try_iter()?.enumerate() {
            items.push(to_json(&item?, &join(path, &i.to_string()), false)?);
        }
        return Ok(Value::Array(items));
    }
    if let Ok(seconds) = value.call_method0("total_seconds") {
        // datetime.timedelta (or anything that says how many seconds it is).
        let seconds: f64 = seconds.extract()?;
        return duration_text(py, path, value, seconds);
    }
    Err(config_error(
        py,
        path,
        &repr(value),
        &format!("unsupported type {}", value.get_type().name()?),
    ))
}

/// Keyword arguments as a JSON object (`prefix` names the strategy in errors).
pub(crate) fn kwargs_to_json(kwargs: Option<&Bound<'_, PyDict>>, prefix: &str) -> PyResult<Value> {
    match kwargs {
        Some(kwargs) => to_json(kwargs.as_any(), prefix, false),
        None => Ok(Value::Object(Map::new())),
    }
}

/// The value at `path` in `json`, for an error message.
fn lookup<'a>(json: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    let mut at = json;
    for segment in path.iter() {
        at = match segment {
            serde_path_to_error::Segment::Map { key } => at.get(key)?,
            serde_path_to_error::Segment::Seq { index } => at.get(index)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Reads `json` into the core's options type `T`; errors name the key path under `prefix`.
pub(crate) fn deserialize<T: DeserializeOwned>(
    py: Python<'_>,
    json: Value,
    prefix: &str,
) -> PyResult<T> {
    serde_path_to_error::deserialize(&json).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.to_owned()
        } else {
            join(prefix, &path)
        };
        let value = lookup(&json, e.path())
            .map(Value::to_string)
            .unwrap_or_else(|| "?".to_owned());
        config_error(py, &field, &value, &e.inner().to_string())
    })
}

/// A core validation error as `ConfigError`.
pub(crate) fn invalid(py: Python<'_>) -> impl Fn(ConfigError) -> PyErr + '_ {
    move |e| from_config(py, &e)
}

/// Removes `key` from `kwargs` and returns it (Python-only options such as `handle=`).
pub(crate) fn take<'py>(
    kwargs: Option<&Bound<'py, PyDict>>,
    key: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some(kwargs) = kwargs else {
        return Ok(None);
    };
    let value = kwargs.get_item(key)?;
    if value.is_some() {
        kwargs.del_item(key)?;
    }
    Ok(value.filter(|v| !v.is_none()))
}
