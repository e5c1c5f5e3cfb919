use crate::circuit_breaker::{CircuitBreaker, CircuitState, StateStore};
use crate::health::{CheckResult, HealthCheck};
use crate::telemetry::{Event, EventListener, Telemetry};
use crate::ConfigError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What a switch is set to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SwitchState {
    /// On for everyone.
    On,
    /// Off for everyone.
    Off,
    /// On for this percentage of keys (0–100), chosen by a stable hash of the key.
    Percentage(f64),
}

/// Why a switch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchReason {
    /// [`Switch::set`].
    Set,
    /// [`Switch::override_with`].
    Override,
    /// The bound breaker left the closed state.
    BreakerOpened,
    /// The bound breaker stayed closed for the hold time.
    BreakerRecovered,
}

/// Raised on every change of a switch.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchChanged {
    /// The switch's name.
    pub switch: String,
    /// Whether it is now on (for keys, under a percentage: whether the percentage is > 0).
    pub enabled: bool,
    /// Why.
    pub reason: SwitchReason,
}

/// A named feature switch. Clones share the same switch.
#[derive(Clone)]
pub struct Switch {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    telemetry: Telemetry,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    set: SwitchState,
    overridden: Option<bool>,
    /// Off because the bound breaker is (or recently was) not closed.
    breaker_off: bool,
    /// When the bound breaker closed, while the hold runs.
    closed_at: Option<Instant>,
    hold: Duration,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("name", &self.inner.name)
            .field("state", &*self.inner.lock())
            .finish()
    }
}

fn check(state: SwitchState) -> Result<(), ConfigError> {
    match state {
        SwitchState::Percentage(p) if !(0.0..=100.0).contains(&p) => Err(ConfigError::new(
            "switch.percentage",
            p,
            "must be between 0 and 100",
        )),
        _ => Ok(()),
    }
}

/// A stable number in 0..10,000 for (switch, key): FNV-1a.
fn bucket(name: &str, key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes().chain([0]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits alone are weak for short keys.
    (hash ^ (hash >> 32)) % 10_000
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change to `State` is a plain assignment: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, enabled: bool, reason: SwitchReason) {
        let switch = self.name.clone();
        self.telemetry.emit(crate::telemetry::strategy::SWITCH, || {
            Event::SwitchChanged(SwitchChanged {
                switch,
                enabled,
                reason,
            })
        });
    }

    /// Ends the breaker's hold if it has run out; true when that turned the switch back on.
    fn recover(&self, state: &mut State) -> bool {
        match state.closed_at {
            Some(at) if state.breaker_off && at.elapsed() >= state.hold => {
                state.breaker_off = false;
                state.closed_at = None;
                true
            }
            _ => false,
        }
    }

    fn enabled(&self, key: Option<&str>) -> bool {
        let mut state = self.lock();
        if self.recover(&mut state) {
            let on = self.base(&state, None);
            drop(state);
            self.emit(on, SwitchReason::BreakerRecovered);
            state = self.lock();
        }
        self.base(&state, key)
    }

    fn base(&self, state: &State, key: Option<&str>) -> bool {
        if let Some(forced) = state.overridden {
            return forced;
        }
        if state.breaker_off {
            return false;
        }
        match state.set {
            SwitchState::On => true,
            SwitchState::Off => false,
            SwitchState::Percentage(p) => match key {
                Some(_) if p <= 0.0 => false,
                Some(key) => (bucket(&self.name, key) as f64) < p * 100.0,
                None => p >= 100.0,
            },
        }
    }
}

impl Switch {
    /// A switch named `name`, set to `state`.
    pub fn new(name: impl Into<String>, state: SwitchState) -> Result<Self, ConfigError> {
        Self::with_listener(name, state, None)
    }

    /// Like [`new`](Self::new), raising [`SwitchChanged`] events to `listener`.
    pub fn with_listener(
        name: impl Into<String>,
        state: SwitchState,
        listener: Option<Arc<dyn EventListener>>,
    ) -> Result<Self, ConfigError> {
        check(state)?;
        let name = name.into();
        Ok(Switch {
            inner: Arc::new(Inner {
                telemetry: Telemetry::new(name.clone(), listener),
                name,
                state: Mutex::new(State {
                    set: state,
                    overridden: None,
                    breaker_off: false,
                    closed_at: None,
                    hold: Duration::ZERO,
                }),
            }),
        })
    }

    /// The switch's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the switch is on (without a key: a percentage counts as on only at 100).
    pub fn is_on(&self) -> bool {
        self.inner.enabled(None)
    }

    /// Whether the switch is on for `key` (a user, a tenant): under a percentage, the same
    /// key always gets the same answer.
    pub fn is_on_for(&self, key: &str) -> bool {
        self.inner.enabled(Some(key))
    }

    /// Sets the switch; a percentage outside 0–100 is refused and changes nothing.
    pub fn set(&self, state: SwitchState) -> Result<(), ConfigError> {
        check(state)?;
        let on = {
            let mut current = self.inner.lock();
            current.set = state;
            self.inner.base(&current, None)
                || matches!(state, SwitchState::Percentage(p) if p > 0.0)
        };
        self.inner.emit(on, SwitchReason::Set);
        Ok(())
    }

    /// Forces the switch on or off whatever else says (`None`: back to normal).
    pub fn override_with(&self, forced: Option<bool>) {
        let on = {
            let mut state = self.inner.lock();
            state.overridden = forced;
            self.inner.base(&state, None)
        };
        self.inner.emit(on, SwitchReason::Override);
    }

    /// True while the switch is off because of its breaker.
    pub fn is_degraded_by_breaker(&self) -> bool {
        let mut state = self.inner.lock();
        self.inner.recover(&mut state);
        state.breaker_off
    }

    /// Follows `breaker`: off as soon as it leaves the closed state (open, half-open,
    /// isolated), on again once it has been closed for `hold` (seen, and the event raised,
    /// at the first read after the hold).
    pub fn bind_to<P, S: StateStore>(&self, breaker: &CircuitBreaker<P, S>, hold: Duration) {
        {
            let mut state = self.inner.lock();
            state.hold = hold;
            state.breaker_off = breaker.state().is_degraded();
        }
        let weak = Arc::downgrade(&self.inner);
        breaker.on_transition(move |t| {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if t.to.is_degraded() {
                let was_on = {
                    let mut state = inner.lock();
                    let was_on = inner.base(&state, None);
                    state.breaker_off = true;
                    state.closed_at = None;
                    was_on
                };
                if was_on || t.from == CircuitState::Closed {
                    inner.emit(false, SwitchReason::BreakerOpened);
                }
            } else {
                let at = Instant::now();
                // Back on at the first read after the hold (which raises the event): no
                // timer needed, and none held while nobody asks.
                let mut state = inner.lock();
                if state.breaker_off {
                    state.closed_at = Some(at);
                }
            }
        });
    }
}

/// Reports Degraded while any of its switches is off because of a breaker.
#[derive(Debug, Clone)]
pub struct SwitchesCheck {
    switches: Vec<Switch>,
}

impl SwitchesCheck {
    /// A check over `switches`.
    pub fn new(switches: impl IntoIterator<Item = Switch>) -> Self {
        SwitchesCheck {
            switches: switches.into_iter().collect(),
        }
    }
}

impl HealthCheck for SwitchesCheck {
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>> {
        let off: Vec<&str> = self
            .switches
            .iter()
            .filter(|s| s.is_degraded_by_breaker())
            .map(Switch::name)
            .collect();
        let result = if off.is_empty() {
            CheckResult::healthy()
        } else {
            CheckResult::degraded(format!("off because of a breaker: {}", off.join(", ")))
        };
        Box::pin(std::future::ready(result))
    }
}
