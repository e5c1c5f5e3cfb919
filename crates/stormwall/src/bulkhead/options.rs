use crate::error::{check, ConfigError};
use std::time::Duration;

/// Options of the bulkhead (Polly's concurrency limiter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BulkheadOptions {
    /// How many calls may run at once. Default: 1000 (Polly's `PermitLimit`). Valid: ≥ 1.
    /// Also read as `permit_limit` (.NET's name).
    #[cfg_attr(feature = "serde", serde(alias = "permit_limit"))]
    pub max_concurrency: u32,
    /// How many calls may wait, first come first served, for a slot when all are taken;
    /// further calls are rejected at once. Default: 0 (Polly's `QueueLimit`: no queue).
    /// Also read as `queue`.
    #[cfg_attr(feature = "serde", serde(alias = "queue"))]
    pub queue_limit: u32,
    /// How long a queued call waits before it is rejected. Default: `None` (as long as an
    /// enclosing timeout allows). Valid: > 0.
    #[cfg_attr(
        feature = "serde",
        serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")
    )]
    pub queue_timeout: Option<Duration>,
}

impl Default for BulkheadOptions {
    fn default() -> Self {
        BulkheadOptions {
            max_concurrency: 1000,
            queue_limit: 0,
            queue_timeout: None,
        }
    }
}

impl BulkheadOptions {
    /// At most `max_concurrency` calls at once, no queue.
    pub fn new(max_concurrency: u32) -> Self {
        BulkheadOptions {
            max_concurrency,
            ..Default::default()
        }
    }

    /// Sets [`queue_limit`](Self::queue_limit).
    pub fn queue_limit(mut self, queue_limit: u32) -> Self {
        self.queue_limit = queue_limit;
        self
    }

    /// Sets [`queue_timeout`](Self::queue_timeout).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = Some(timeout);
        self
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check::at_least("max_concurrency", self.max_concurrency, 1)?;
        if let Some(timeout) = self.queue_timeout {
            check::positive("queue_timeout", timeout)?;
        }
        Ok(())
    }
}
