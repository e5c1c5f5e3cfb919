//! Toxics: what a proxy does to the bytes on one stream of a connection.

use crate::ChaosError;
use serde_json::{json, Map, Value};

/// The direction a toxic acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Client → upstream.
    Upstream,
    /// Upstream → client (Toxiproxy's default).
    Downstream,
}

impl Stream {
    /// `upstream` or `downstream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }

    fn parse(s: &str) -> Result<Self, ChaosError> {
        match s {
            "upstream" => Ok(Stream::Upstream),
            "downstream" => Ok(Stream::Downstream),
            other => Err(ChaosError::InvalidStream(other.to_owned())),
        }
    }
}

/// What a toxic does, with its attributes in Toxiproxy's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToxicKind {
    /// Delays every chunk by `latency` ± `jitter` milliseconds after it arrived.
    Latency {
        /// Milliseconds.
        latency: u64,
        /// Milliseconds either way, uniformly.
        jitter: u64,
    },
    /// Passes at most `rate` KB (1000 bytes) per second.
    Bandwidth {
        /// KB per second; 0 passes data unthrottled.
        rate: u64,
    },
    /// Delays the close of the stream by `delay` milliseconds.
    SlowClose {
        /// Milliseconds.
        delay: u64,
    },
    /// Stops all data (dropped) and closes the connection after `timeout` milliseconds;
    /// with 0, holds the connection open, passing nothing, until the toxic is removed.
    Timeout {
        /// Milliseconds; 0 = never close.
        timeout: u64,
    },
    /// Resets the connection (TCP RST) `timeout` milliseconds after the toxic applies to it.
    ResetPeer {
        /// Milliseconds; 0 = at once.
        timeout: u64,
    },
    /// Slices each chunk into pieces of `average_size` ± `size_variation` bytes, `delay`
    /// microseconds apart.
    Slicer {
        /// Bytes.
        average_size: u64,
        /// Bytes either way.
        size_variation: u64,
        /// Microseconds between slices.
        delay: u64,
    },
    /// Closes the connection once `bytes` bytes have passed on the stream.
    LimitData {
        /// Bytes.
        bytes: u64,
    },
}

/// The toxic types, in the names the API uses.
pub const TOXIC_TYPES: [&str; 7] = [
    "latency",
    "bandwidth",
    "slow_close",
    "timeout",
    "reset_peer",
    "slicer",
    "limit_data",
];

impl ToxicKind {
    /// The type name the API uses (`latency`, `limit_data`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::SlowClose { .. } => "slow_close",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Slicer { .. } => "slicer",
            ToxicKind::LimitData { .. } => "limit_data",
        }
    }

    /// The attribute names of `type_name`, or `None` for an unknown type.
    fn attribute_names(type_name: &str) -> Option<&'static [&'static str]> {
        Some(match type_name {
            "latency" => &["latency", "jitter"],
            "bandwidth" => &["rate"],
            "slow_close" => &["delay"],
            "timeout" | "reset_peer" => &["timeout"],
            "slicer" => &["average_size", "size_variation", "delay"],
            "limit_data" => &["bytes"],
            _ => return None,
        })
    }

    fn from_attributes(type_name: &str, a: &[u64]) -> Self {
        match type_name {
            "latency" => ToxicKind::Latency {
                latency: a[0],
                jitter: a[1],
            },
            "bandwidth" => ToxicKind::Bandwidth { rate: a[0] },
            "slow_close" => ToxicKind::SlowClose { delay: a[0] },
            "timeout" => ToxicKind::Timeout { timeout: a[0] },
            "reset_peer" => ToxicKind::ResetPeer { timeout: a[0] },
            "slicer" => ToxicKind::Slicer {
                average_size: a[0],
                size_variation: a[1],
                delay: a[2],
            },
            _ => ToxicKind::LimitData { bytes: a[0] },
        }
    }

    fn attributes(&self) -> Vec<u64> {
        match *self {
            ToxicKind::Latency { latency, jitter } => vec![latency, jitter],
            ToxicKind::Bandwidth { rate } => vec![rate],
            ToxicKind::SlowClose { delay } => vec![delay],
            ToxicKind::Timeout { timeout } | ToxicKind::ResetPeer { timeout } => vec![timeout],
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay,
            } => vec![average_size, size_variation, delay],
            ToxicKind::LimitData { bytes } => vec![bytes],
        }
    }
}

/// A toxic as the API shows it: a name, what it does, on which stream, how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    /// Unique within its proxy. Default: `<type>_<stream>`.
    pub name: String,
    /// What it does.
    pub kind: ToxicKind,
    /// Which direction. Default: downstream.
    pub stream: Stream,
    /// The chance (0.0–1.0) that it applies to a given connection. Default: 1.0.
    pub toxicity: f64,
}

impl Toxic {
    /// A toxic with the defaults: named `<type>_<stream>`, downstream, toxicity 1.
    pub fn new(kind: ToxicKind) -> Self {
        let stream = Stream::Downstream;
        Toxic {
            name: format!("{}_{}", kind.type_name(), stream.as_str()),
            kind,
            stream,
            toxicity: 1.0,
        }
    }

    /// Parses a toxic from the API's JSON; every error names the field and the value.
    pub fn from_json(body: &Value) -> Result<Self, ChaosError> {
        let object = as_object(body)?;
        let type_name = match object.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(other) => return Err(bad(format!("type must be a string (got {other})"))),
            None => return Err(ChaosError::MissingField("type")),
        };
        let names = ToxicKind::attribute_names(type_name)
            .ok_or_else(|| ChaosError::InvalidToxicType(type_name.to_owned()))?;
        let mut values = vec![0; names.len()];
        read_attributes(object, names, &mut values)?;
        let stream = match object.get("stream") {
            None | Some(Value::Null) => Stream::Downstream,
            Some(Value::String(s)) if s.is_empty() => Stream::Downstream,
            Some(Value::String(s)) => Stream::parse(s)?,
            Some(other) => return Err(bad(format!("stream must be a string (got {other})"))),
        };
        let name = match object.get("name") {
            None | Some(Value::Null) => format!("{type_name}_{}", stream.as_str()),
            Some(Value::String(s)) if s.is_empty() => format!("{type_name}_{}", stream.as_str()),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(bad(format!("name must be a string (got {other})"))),
        };
        let toxicity = read_toxicity(object.get("toxicity"), 1.0)?;
        Ok(Toxic {
            name,
            kind: ToxicKind::from_attributes(type_name, &values),
            stream,
            toxicity,
        })
    }

    /// This toxic with the fields present in `body` changed (Toxiproxy's update: fields
    /// absent keep their value, attributes one by one).
    pub fn patched(&self, body: &Value) -> Result<Self, ChaosError> {
        let object = as_object(body)?;
        let type_name = self.kind.type_name();
        if let Some(t) = object.get("type") {
            if t.as_str() != Some(type_name) {
                return Err(bad(format!(
                    "type cannot change on update (is {type_name:?}, got {t})"
                )));
            }
        }
        let names = ToxicKind::attribute_names(type_name).unwrap_or(&[]);
        let mut values = self.kind.attributes();
        read_attributes(object, names, &mut values)?;
        let stream = match object.get("stream") {
            Some(Value::String(s)) => Stream::parse(s)?,
            None | Some(Value::Null) => self.stream,
            Some(other) => return Err(bad(format!("stream must be a string (got {other})"))),
        };
        Ok(Toxic {
            name: self.name.clone(),
            kind: ToxicKind::from_attributes(type_name, &values),
            stream,
            toxicity: read_toxicity(object.get("toxicity"), self.toxicity)?,
        })
    }

    /// The API's JSON for this toxic.
    pub fn to_json(&self) -> Value {
        let names = ToxicKind::attribute_names(self.kind.type_name()).unwrap_or(&[]);
        let attributes: Map<String, Value> = names
            .iter()
            .zip(self.kind.attributes())
            .map(|(n, v)| ((*n).to_owned(), Value::from(v)))
            .collect();
        json!({
            "name": self.name,
            "type": self.kind.type_name(),
            "stream": self.stream.as_str(),
            "toxicity": self.toxicity,
            "attributes": attributes,
        })
    }
}

fn bad(message: String) -> ChaosError {
    ChaosError::BadRequest(message)
}

pub(crate) fn as_object(body: &Value) -> Result<&Map<String, Value>, ChaosError> {
    body.as_object()
        .ok_or_else(|| bad(format!("expected a JSON object (got {body})")))
}

fn read_attributes(
    object: &Map<String, Value>,
    names: &[&str],
    values: &mut [u64],
) -> Result<(), ChaosError> {
    let attributes = match object.get("attributes") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(a)) => a,
        Some(other) => return Err(bad(format!("attributes must be an object (got {other})"))),
    };
    for (name, slot) in names.iter().zip(values.iter_mut()) {
        match attributes.get(*name) {
            None | Some(Value::Null) => {}
            Some(v) => {
                // Toxiproxy's attributes are Go int64s: larger values are refused there too.
                *slot = v
                    .as_u64()
                    .filter(|n| i64::try_from(*n).is_ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "attributes.{name} must be an integer from 0 to {} (got {v})",
                            i64::MAX
                        ))
                    })?
            }
        }
    }
    Ok(())
}

fn read_toxicity(value: Option<&Value>, default: f64) -> Result<f64, ChaosError> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => Ok(t),
            _ => Err(bad(format!(
                "toxicity must be a number from 0.0 to 1.0 (got {v})"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_name_stream_and_toxicity_like_toxiproxy() {
        let t =
            Toxic::from_json(&json!({"type": "latency", "attributes": {"latency": 100}})).unwrap();
        assert_eq!(t.name, "latency_downstream");
        assert_eq!(t.stream, Stream::Downstream);
        assert_eq!(t.toxicity, 1.0);
        assert_eq!(
            t.kind,
            ToxicKind::Latency {
                latency: 100,
                jitter: 0
            }
        );
        assert_eq!(
            t.to_json(),
            json!({"name": "latency_downstream", "type": "latency", "stream": "downstream",
                   "toxicity": 1.0, "attributes": {"latency": 100, "jitter": 0}})
        );
    }

    #[test]
    fn bad_input_names_the_field_and_value() {
        let cases = [
            (json!({"type": "nope"}), "invalid toxic type: nope"),
            (json!({}), "missing required field: type"),
            (
                json!({"type": "latency", "attributes": {"latency": -5}}),
                "attributes.latency must be an integer from 0 to 9223372036854775807 (got -5)",
            ),
            (
                json!({"type": "latency", "attributes": {"latency": "x"}}),
                "attributes.latency must be an integer from 0 to 9223372036854775807 (got \"x\")",
            ),
            (
                json!({"type": "latency", "toxicity": 1.5}),
                "toxicity must be a number from 0.0 to 1.0 (got 1.5)",
            ),
            (
                json!({"type": "latency", "stream": "sideways"}),
                "stream was invalid",
            ),
            (json!([1]), "expected a JSON object"),
        ];
        for (body, message) in cases {
            let err = Toxic::from_json(&body).unwrap_err().to_string();
            assert!(err.contains(message), "{body}: {err}");
        }
    }

    #[test]
    fn patch_overlays_present_fields_only() {
        let t = Toxic::from_json(&json!({"type": "slicer", "attributes":
            {"average_size": 10, "size_variation": 2, "delay": 5}}))
        .unwrap();
        let p = t
            .patched(&json!({"attributes": {"delay": 50}, "toxicity": 0.5}))
            .unwrap();
        assert_eq!(
            p.kind,
            ToxicKind::Slicer {
                average_size: 10,
                size_variation: 2,
                delay: 50
            }
        );
        assert_eq!(p.toxicity, 0.5);
        assert_eq!(p.name, t.name);
        assert!(t.patched(&json!({"type": "latency"})).is_err());
    }
}
