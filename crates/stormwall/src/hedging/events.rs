/// Raised when hedging starts a further attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgeStarted {
    /// The attempt started: 1 for the first hedge.
    pub attempt: u32,
}
