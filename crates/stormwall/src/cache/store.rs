use std::future::Future;
use std::time::Duration;

/// A value read back from a cache, with how long ago it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached<V> {
    /// The value.
    pub value: V,
    /// Time since it was stored.
    pub age: Duration,
}

/// Where stale-on-error keeps the last good values: in memory ([`MemoryCache`]) or shared
/// (stormwall-redis implements it on Redis).
///
/// Both calls are async so a remote cache fits; neither may fail the call it serves — a
/// cache that cannot answer returns `None`, one that cannot store drops the value.
pub trait ValueCache<V>: Send + Sync {
    /// The value stored under `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Option<Cached<V>>> + Send;
    /// Stores `value` under `key`.
    fn put(&self, key: &str, value: V) -> impl Future<Output = ()> + Send;
}

#[cfg(feature = "cache")]
pub use memory::MemoryCache;

#[cfg(feature = "cache")]
mod memory {
    use super::{Cached, ValueCache};
    use std::future::Future;
    use std::time::Duration;
    use tokio::time::Instant;

    /// An in-memory cache on `moka`: bounded in entries, entries expire after a time to live.
    #[derive(Clone)]
    pub struct MemoryCache<V> {
        entries: moka::sync::Cache<String, (V, Instant)>,
    }

    impl<V> std::fmt::Debug for MemoryCache<V> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MemoryCache")
                .field("entries", &self.entries.entry_count())
                .finish()
        }
    }

    impl<V: Clone + Send + Sync + 'static> MemoryCache<V> {
        /// At most `max_entries` values, each dropped `time_to_live` after it was stored.
        /// A time to live beyond 100 years (up to `Duration::MAX`) means "never expire": it is
        /// taken as 100 years, since `moka` refuses more than 1000.
        pub fn new(max_entries: u64, time_to_live: Duration) -> Self {
            const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
            MemoryCache {
                entries: moka::sync::Cache::builder()
                    .max_capacity(max_entries)
                    .time_to_live(time_to_live.min(CENTURY))
                    .build(),
            }
        }
    }

    impl<V: Clone + Send + Sync + 'static> ValueCache<V> for MemoryCache<V> {
        fn get(&self, key: &str) -> impl Future<Output = Option<Cached<V>>> + Send {
            let found = self.entries.get(key).map(|(value, stored)| Cached {
                value,
                age: stored.elapsed(),
            });
            std::future::ready(found)
        }

        fn put(&self, key: &str, value: V) -> impl Future<Output = ()> + Send {
            self.entries.insert(key.to_owned(), (value, Instant::now()));
            std::future::ready(())
        }
    }
}
