use std::time::Duration;

/// Raised before retry `attempt` (1 for the first retry), which will start after `delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryScheduled {
    /// The attempt about to run: 1 for the first retry.
    pub attempt: u32,
    /// How long the strategy waits before it.
    pub delay: Duration,
}

/// Raised when a retry was due but the retry budget had none left: the execution fails
/// with [`Error::BudgetExhausted`](crate::Error::BudgetExhausted) instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetExhausted {
    /// The retry that was refused: 1 for the first retry.
    pub attempt: u32,
}

/// Raised when adaptive throttling rejected a call locally.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    /// The rejection probability at that moment.
    pub probability: f64,
}
