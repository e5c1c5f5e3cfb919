use std::time::Duration;

/// Raised when a rate limiter rejected a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// How long until a permit is available.
    pub retry_after: Duration,
}
