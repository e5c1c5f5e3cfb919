use std::time::Duration;

/// Raised when stale-on-error answered with a cached value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedStale {
    /// How old the value was.
    pub age: Duration,
}
