//! `RedisStoreOptions`: how a replica talks to Redis (the breaker's own thresholds come from
//! its options).

use std::time::Duration;

/// Options of the Redis store. Every field documents its default and valid range;
/// [`validate`](Self::validate) reads the same ranges.
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// Prefix of every key and channel. Default `stormwall`. Valid: not empty.
    pub key_prefix: String,
    /// A breaker's keys expire after this long without any replica running a script on
    /// them. Replicas that use a breaker refresh its keys with every script, at least every
    /// `resync_interval`, so keys in use never expire. Default 1 day. Valid: ≥ 1 s.
    pub ttl: Duration,
    /// The longest wait for a connection or a command before the replica counts Redis as
    /// unreachable and decides on its local breaker. No caller ever waits for it: it bounds
    /// the background task only. Default 1 s (a link with hundreds of milliseconds of
    /// latency stays shared). Valid: 1 ms to 1 min.
    pub command_timeout: Duration,
    /// How long a half-open probe lease lives if its holder never reports (crashed, or its
    /// call never ended). Set it to the probe's attempt timeout (the sidecar does), so a
    /// lease never outlives its call. Default 10 s. Valid: ≥ 1 ms.
    pub probe_lease: Duration,
    /// A lease this replica took but no call of its own claimed within this long is given
    /// back (compare-and-delete), so a replica without traffic does not hoard it. Default
    /// 200 ms. Valid: ≥ 1 ms.
    pub lease_claim: Duration,
    /// Successes are counted locally and flushed at this interval while there are any
    /// (and with every failure report), so the shared window holds the fleet's ratio.
    /// Default 100 ms. Valid: 1 ms to `resync_interval`.
    pub flush_interval: Duration,
    /// Without any other script for this long, the replica re-reads the state: a backstop
    /// to pub/sub, a health check for a blackholed link, and what refreshes the keys'
    /// TTL. Default 500 ms (a replica converges to Redis's state within this after any
    /// fault heals). Valid: ≥ `flush_interval`.
    pub resync_interval: Duration,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            key_prefix: "stormwall".into(),
            ttl: Duration::from_secs(24 * 3600),
            command_timeout: Duration::from_secs(1),
            probe_lease: Duration::from_secs(10),
            lease_claim: Duration::from_millis(200),
            flush_interval: Duration::from_millis(100),
            resync_interval: Duration::from_millis(500),
        }
    }
}

impl RedisStoreOptions {
    /// Checks every field against its documented range; the error names the field and
    /// the value.
    pub fn validate(&self) -> Result<(), stormwall::ConfigError> {
        use stormwall::ConfigError;
        if self.key_prefix.is_empty() {
            return Err(ConfigError::new(
                "key_prefix",
                &self.key_prefix,
                "must not be empty",
            ));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(ConfigError::new("ttl", self.ttl, "must be ≥ 1s"));
        }
        if self.command_timeout < Duration::from_millis(1)
            || self.command_timeout > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                "command_timeout",
                self.command_timeout,
                "must be 1ms to 60s",
            ));
        }
        for (field, value) in [
            ("probe_lease", self.probe_lease),
            ("lease_claim", self.lease_claim),
            ("flush_interval", self.flush_interval),
        ] {
            if value < Duration::from_millis(1) {
                return Err(ConfigError::new(field, value, "must be ≥ 1ms"));
            }
        }
        if self.resync_interval < self.flush_interval {
            return Err(ConfigError::new(
                "resync_interval",
                self.resync_interval,
                format!("must be ≥ flush_interval ({:?})", self.flush_interval),
            ));
        }
        Ok(())
    }
}
