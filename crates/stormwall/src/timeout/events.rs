use std::time::Duration;

/// Raised when a timeout cancelled the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    /// The timeout that elapsed.
    pub timeout: Duration,
}
