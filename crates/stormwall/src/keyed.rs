//! Per-key state with bounded memory, shared by the keyed bulkhead and the keyed rate
//! limiter.

use crate::ConfigError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// At most `max_keys` values by key, created on first use. At the limit, a new key first
/// evicts the idle values — idle by the caller's rule, and held by nobody else; when none
/// is idle the new key gets nothing, so callers cannot grow the map without bound.
#[derive(Debug)]
pub(crate) struct Keyed<V> {
    max_keys: usize,
    map: Mutex<HashMap<Arc<str>, Arc<V>>>,
}

impl<V> Keyed<V> {
    /// A map for at most `max_keys` keys; `field` names the option in the error.
    pub(crate) fn new(max_keys: usize, field: &str) -> Result<Self, ConfigError> {
        if max_keys == 0 {
            return Err(ConfigError::new(field, max_keys, "must be ≥ 1"));
        }
        Ok(Keyed {
            max_keys,
            map: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<V>>> {
        // Inserts and removals are single calls: a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many keys are tracked now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The value of `key`, made with `make` on first use; `None` at the limit with nothing
    /// idle to evict.
    pub(crate) fn get_or_make(
        &self,
        key: &str,
        idle: impl Fn(&V) -> bool,
        make: impl FnOnce() -> V,
    ) -> Option<Arc<V>> {
        let mut map = self.lock();
        if let Some(value) = map.get(key) {
            return Some(Arc::clone(value));
        }
        if map.len() >= self.max_keys {
            map.retain(|_, v| Arc::strong_count(v) > 1 || !idle(v));
            if map.len() >= self.max_keys {
                return None;
            }
        }
        let value = Arc::new(make());
        map.insert(Arc::from(key), Arc::clone(&value));
        Some(value)
    }
}
