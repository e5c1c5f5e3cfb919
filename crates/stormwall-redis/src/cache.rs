//! A Redis cache for stale-on-error: the last good values, shared by every replica.

use crate::connection::Lazy;
use crate::RedisStoreError;
use redis::{Client, Script};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use stormwall::cache::{Cached, ValueCache};

/// Stores `<redis ms>|<json>`: the age is measured on Redis's clock, never a replica's.
const PUT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], now .. '|' .. ARGV[1], 'PX', ARGV[2])
return 1
"#;

const GET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('GET', KEYS[1]) or ''}
"#;

/// The core's [`ValueCache`] on Redis: values as JSON under `stormwall:cache:<name>:<key>`,
/// expiring after a time to live. Reads wait at most the read timeout (then: no value);
/// writes are fire-and-forget. Neither ever fails the call it serves.
pub struct RedisCache<V> {
    inner: Arc<Inner>,
    _values: PhantomData<fn() -> V>,
}

impl<V> Clone for RedisCache<V> {
    // Not derived: a derive would demand `V: Clone`.
    fn clone(&self) -> Self {
        RedisCache {
            inner: Arc::clone(&self.inner),
            _values: PhantomData,
        }
    }
}

struct Inner {
    connection: Lazy,
    put: Script,
    get: Script,
    prefix: String,
    time_to_live: Duration,
}

impl<V> std::fmt::Debug for RedisCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl<V> RedisCache<V> {
    /// A cache named `name`; entries expire after `time_to_live`; reads give up after
    /// `read_timeout`.
    pub fn new(
        url: &str,
        name: &str,
        time_to_live: Duration,
        read_timeout: Duration,
    ) -> Result<Self, RedisStoreError> {
        let client = Client::open(url).map_err(|e| RedisStoreError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        if time_to_live.is_zero() {
            return Err(RedisStoreError::Config(stormwall::ConfigError::new(
                "cache.time_to_live",
                time_to_live,
                "> 0",
            )));
        }
        Ok(RedisCache {
            inner: Arc::new(Inner {
                connection: Lazy::new(client, read_timeout),
                put: Script::new(PUT),
                get: Script::new(GET),
                prefix: format!("stormwall:cache:{name}"),
                time_to_live,
            }),
            _values: PhantomData,
        })
    }
}

impl<V> ValueCache<V> for RedisCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn get(&self, key: &str) -> impl Future<Output = Option<Cached<V>>> + Send {
        let inner = Arc::clone(&self.inner);
        let key = format!("{}:{key}", inner.prefix);
        async move {
            let mut connection = inner.connection.get().await?;
            let mut invocation = inner.get.prepare_invoke();
            invocation.key(&key);
            let call = invocation.invoke_async::<(u64, String)>(&mut connection);
            let (now, stored) = match tokio::time::timeout(inner.connection.timeout(), call).await {
                Ok(Ok(reply)) => reply,
                _ => {
                    inner.connection.reset().await;
                    return None;
                }
            };
            let (at, json) = stored.split_once('|')?;
            let at: u64 = at.parse().ok()?;
            match serde_json::from_str(json) {
                Ok(value) => Some(Cached {
                    value,
                    age: Duration::from_millis(now.saturating_sub(at)),
                }),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "stormwall-redis: unreadable cache entry ignored");
                    None
                }
            }
        }
    }

    fn put(&self, key: &str, value: V) -> impl Future<Output = ()> + Send {
        let inner = Arc::clone(&self.inner);
        let key = format!("{}:{key}", inner.prefix);
        async move {
            let Ok(json) = serde_json::to_string(&value) else {
                return;
            };
            // Fire and forget: the call that produced the value does not wait for Redis.
            tokio::spawn(async move {
                let Some(mut connection) = inner.connection.get().await else {
                    return;
                };
                let mut invocation = inner.put.prepare_invoke();
                invocation
                    .key(&key)
                    .arg(json)
                    .arg(inner.time_to_live.as_millis() as u64);
                let call = invocation.invoke_async::<i64>(&mut connection);
                if !matches!(
                    tokio::time::timeout(inner.connection.timeout(), call).await,
                    Ok(Ok(_))
                ) {
                    inner.connection.reset().await;
                }
            });
        }
    }
}
