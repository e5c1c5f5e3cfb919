//! The event that travels between services.

use crate::SagaError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// An event published by one service for the others: what happened (`kind`), to which
/// entity (`stream_key`, the unit of ordering), with what data (`payload`, JSON), and the
/// saga it belongs to (`correlation_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique per event (random, 128 bits in hex): what consumers deduplicate on.
    pub id: String,
    /// Its position in the outbox it was appended to (increasing in commit order); 0 until
    /// appended.
    pub position: i64,
    /// The entity it is about (`order-42`): events of one key keep their order.
    pub stream_key: String,
    /// What happened: `order.created`, `payment.failed`.
    pub kind: String,
    /// The saga it belongs to: the first event's id, copied by every event that reacts to
    /// it.
    pub correlation_id: String,
    /// Its data, JSON.
    pub payload: String,
}

impl Message {
    /// The first event of a saga: its correlation id is its own id.
    pub fn new(
        kind: impl Into<String>,
        stream_key: impl Into<String>,
        payload: &impl Serialize,
    ) -> Result<Self, SagaError> {
        let id = new_id();
        Ok(Message {
            correlation_id: id.clone(),
            id,
            position: 0,
            stream_key: stream_key.into(),
            kind: kind.into(),
            payload: to_json(payload)?,
        })
    }

    /// An event caused by `cause`: same saga (correlation id).
    pub fn reacting_to(
        cause: &Message,
        kind: impl Into<String>,
        stream_key: impl Into<String>,
        payload: &impl Serialize,
    ) -> Result<Self, SagaError> {
        Ok(Message {
            id: new_id(),
            position: 0,
            stream_key: stream_key.into(),
            kind: kind.into(),
            correlation_id: cause.correlation_id.clone(),
            payload: to_json(payload)?,
        })
    }

    /// The payload, decoded.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, SagaError> {
        serde_json::from_str(&self.payload).map_err(|e| SagaError::Corrupt {
            what: "event payload",
            id: self.id.clone(),
            reason: e.to_string(),
        })
    }
}

fn to_json(payload: &impl Serialize) -> Result<String, SagaError> {
    serde_json::to_string(payload)
        .map_err(|e| SagaError::Config(format!("event payload does not serialise: {e}")))
}

/// 128 random bits in hex: the standard library's randomly keyed hasher (seeded from the
/// OS per thread) over a process-wide counter and the clock.
pub(crate) fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(n);
        h.write_u64(nanos);
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_reactions_keep_the_correlation_id() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let first =
            Message::new("order.created", "order-1", &serde_json::json!({"total": 5})).unwrap();
        assert_eq!(first.correlation_id, first.id);
        let next = Message::reacting_to(&first, "payment.completed", "payment-1", &()).unwrap();
        assert_eq!(next.correlation_id, first.id);
        assert_ne!(next.id, first.id);
        assert_eq!(first.payload::<serde_json::Value>().unwrap()["total"], 5);
        assert!(matches!(
            first.payload::<u32>(),
            Err(SagaError::Corrupt {
                what: "event payload",
                ..
            })
        ));
    }
}
