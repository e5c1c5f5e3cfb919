use std::time::Duration;

/// Raised before retry `attempt` (1 for the first retry), which will start after `delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryScheduled {
    /// The attempt about to run: 1 for the first retry.
    pub attempt: u32,
    /// How long the strategy waits before it.
    pub delay: Duration,
}
