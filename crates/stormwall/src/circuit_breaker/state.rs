/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CircuitState {
    /// Calls flow; outcomes are counted.
    Closed = 0,
    /// Calls are rejected until the break ends.
    Open = 1,
    /// A limited number of probes may run; their outcome closes or reopens the circuit.
    HalfOpen = 2,
    /// Forced open by manual control: every call is rejected until closed by hand.
    Isolated = 3,
    /// Forced closed by manual control: every call flows, nothing is counted.
    Disabled = 4,
}

impl CircuitState {
    /// The state whose `as u8` is `value` (anything above 3 is Disabled), for stores that
    /// keep the state in an atomic byte.
    #[inline]
    pub fn from_u8(value: u8) -> Self {
        match value {
            0 => CircuitState::Closed,
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            3 => CircuitState::Isolated,
            _ => CircuitState::Disabled,
        }
    }

    /// A short lower-case name: `closed`, `open`, `half_open`, `isolated`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Isolated => "isolated",
            CircuitState::Disabled => "disabled",
        }
    }

    /// `true` when calls are being rejected (Open, Isolated) or limited (HalfOpen).
    pub fn is_degraded(self) -> bool {
        matches!(
            self,
            CircuitState::Open | CircuitState::HalfOpen | CircuitState::Isolated
        )
    }
}

impl std::fmt::Display for CircuitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
