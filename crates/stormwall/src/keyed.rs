//! Per-key state with bounded memory, shared by the keyed bulkhead, the keyed rate limiter
//! and the keyed circuit breaker.

use crate::ConfigError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// At most `max_keys` values by key, created on first use, in least-recently-used order.
///
/// At the limit, a new key evicts the least recently used value if it is idle — idle by the
/// caller's rule, and held by nobody else. A value that is not is moved to the front (it is
/// in use), and the next least recent one is looked at, up to [`PROBES`] of them: eviction
/// is O(1) whatever the number of keys. When none of those is idle the new key gets
/// nothing, so callers cannot grow the map without bound.
#[derive(Debug)]
pub(crate) struct Keyed<V> {
    max_keys: usize,
    lru: Mutex<Lru<V>>,
}

/// How many least recently used values a new key looks at for one to evict.
const PROBES: usize = 4;
/// "No slot" in the list's links.
const NIL: usize = usize::MAX;

/// A hash map into a slab of entries doubly linked from most to least recently used.
#[derive(Debug)]
struct Lru<V> {
    index: HashMap<Arc<str>, usize>,
    entries: Vec<Entry<V>>,
    /// Most recently used, least recently used (`NIL` when empty).
    head: usize,
    tail: usize,
}

#[derive(Debug)]
struct Entry<V> {
    key: Arc<str>,
    value: Arc<V>,
    /// Towards the head (more recent) and the tail (less recent).
    newer: usize,
    older: usize,
}

impl<V> Lru<V> {
    fn unlink(&mut self, slot: usize) {
        let (newer, older) = (self.entries[slot].newer, self.entries[slot].older);
        match newer {
            NIL => self.head = older,
            n => self.entries[n].older = older,
        }
        match older {
            NIL => self.tail = newer,
            o => self.entries[o].newer = newer,
        }
    }

    fn push_front(&mut self, slot: usize) {
        self.entries[slot].newer = NIL;
        self.entries[slot].older = self.head;
        match self.head {
            NIL => self.tail = slot,
            h => self.entries[h].newer = slot,
        }
        self.head = slot;
    }

    fn touch(&mut self, slot: usize) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    /// Frees a slot among the least recently used whose value is idle; its index.
    fn evict(&mut self, idle: &impl Fn(&V) -> bool) -> Option<usize> {
        for _ in 0..PROBES.min(self.entries.len()) {
            let slot = self.tail;
            let entry = &self.entries[slot];
            if Arc::strong_count(&entry.value) == 1 && idle(&entry.value) {
                let key = Arc::clone(&entry.key);
                self.index.remove(&key);
                self.unlink(slot);
                return Some(slot);
            }
            // In use: as good as recently used.
            self.touch(slot);
        }
        None
    }
}

impl<V> Keyed<V> {
    /// A map for at most `max_keys` keys; `field` names the option in the error.
    pub(crate) fn new(max_keys: usize, field: &str) -> Result<Self, ConfigError> {
        if max_keys == 0 {
            return Err(ConfigError::new(field, max_keys, "must be ≥ 1"));
        }
        Ok(Keyed {
            max_keys,
            lru: Mutex::new(Lru {
                index: HashMap::new(),
                entries: Vec::new(),
                head: NIL,
                tail: NIL,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Lru<V>> {
        // Every change under the lock restores the links before it returns, and nothing in
        // it calls out except `idle`, before any change: a poisoned map is still consistent.
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many keys are tracked now.
    pub(crate) fn len(&self) -> usize {
        self.lock().index.len()
    }

    /// The value of `key` if it is tracked (it counts as a use).
    pub(crate) fn get(&self, key: &str) -> Option<Arc<V>> {
        let mut lru = self.lock();
        let slot = *lru.index.get(key)?;
        lru.touch(slot);
        Some(Arc::clone(&lru.entries[slot].value))
    }

    /// The value of `key`, made with `make` on first use; `None` at the limit with nothing
    /// idle to evict.
    pub(crate) fn get_or_make(
        &self,
        key: &str,
        idle: impl Fn(&V) -> bool,
        make: impl FnOnce() -> V,
    ) -> Option<Arc<V>> {
        let mut lru = self.lock();
        if let Some(&slot) = lru.index.get(key) {
            lru.touch(slot);
            return Some(Arc::clone(&lru.entries[slot].value));
        }
        let evicted = if lru.index.len() >= self.max_keys {
            Some(lru.evict(&idle)?)
        } else {
            None
        };
        let entry = Entry {
            key: Arc::from(key),
            value: Arc::new(make()),
            newer: NIL,
            older: NIL,
        };
        let slot = match evicted {
            Some(slot) => {
                lru.entries[slot] = entry;
                slot
            }
            None => {
                lru.entries.push(entry);
                lru.entries.len() - 1
            }
        };
        let value = Arc::clone(&lru.entries[slot].value);
        let key = Arc::clone(&lru.entries[slot].key);
        lru.index.insert(key, slot);
        lru.push_front(slot);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn keys(k: &Keyed<u32>) -> Vec<String> {
        let lru = k.lock();
        let mut order = Vec::new();
        let mut slot = lru.head;
        while slot != NIL {
            order.push(lru.entries[slot].key.to_string());
            slot = lru.entries[slot].older;
        }
        assert_eq!(order.len(), lru.index.len());
        order
    }

    #[test]
    fn the_least_recently_used_idle_key_makes_room() {
        let k = Keyed::new(3, "max_keys").unwrap();
        for key in ["a", "b", "c"] {
            k.get_or_make(key, |_| true, || 1).unwrap();
        }
        k.get("a").unwrap(); // a is now the most recent: b is the least.
        k.get_or_make("d", |_| true, || 2).unwrap();
        assert_eq!(keys(&k), ["d", "a", "c"]);
    }

    #[test]
    fn busy_keys_are_skipped_and_a_full_map_of_them_refuses() {
        let k = Keyed::new(2, "max_keys").unwrap();
        let held_a = k.get_or_make("a", |_| true, || 1).unwrap();
        let held_b = k.get_or_make("b", |_| true, || 1).unwrap();
        assert!(k.get_or_make("c", |_| true, || 1).is_none(), "both held");
        drop(held_a);
        k.get_or_make("c", |_| true, || 1).unwrap();
        assert_eq!(keys(&k), ["c", "b"]);
        drop(held_b);
        // Not idle by the caller's rule: kept.
        assert!(k.get_or_make("d", |v| *v == 0, || 1).is_none());
        assert_eq!(k.len(), 2);
    }

    #[test]
    fn eviction_looks_at_a_bounded_number_of_keys() {
        let k = Keyed::new(1000, "max_keys").unwrap();
        for i in 0..1000 {
            k.get_or_make(&i.to_string(), |_| true, || i).unwrap();
        }
        let looked = Cell::new(0);
        let refused = k.get_or_make(
            "new",
            |_| {
                looked.set(looked.get() + 1);
                false
            },
            || 0,
        );
        assert!(refused.is_none());
        assert_eq!(looked.get(), PROBES);
    }
}
