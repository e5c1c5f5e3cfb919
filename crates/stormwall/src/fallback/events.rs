/// Raised when the fallback replaced an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackUsed {
    /// What was replaced: `ok` for a handled `Ok`, else the error's
    /// [`kind`](crate::Error::kind) (`inner`, `timeout`, `circuit_open`, ...).
    pub outcome: &'static str,
}
