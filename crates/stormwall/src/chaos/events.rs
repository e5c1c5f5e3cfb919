/// Raised when a chaos strategy injected into a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosInjected {
    /// `fault`, `latency`, `outcome` or `behavior`.
    pub kind: &'static str,
}
