//! Graceful degradation: feature switches that can follow a circuit breaker.
//!
//! A [`Switch`] is on, off, or on for a percentage of keys (stable: the same user always
//! gets the same answer). Bound to a breaker, it turns off while the breaker is not closed
//! and back on once the breaker has stayed closed for a hold time, so a real-time path
//! ("RealTimePayments") steps aside while its dependency is down. A manual override wins
//! over everything. Every change raises [`Event::SwitchChanged`](crate::telemetry::Event);
//! [`SwitchesCheck`] reports Degraded while a switch is off because of a breaker.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
//! use stormwall::degrade::{Switch, SwitchState};
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let payments = CircuitBreaker::new(CircuitBreakerOptions::new().consecutive_failures(1)).unwrap();
//! let real_time = Switch::new("RealTimePayments", SwitchState::On).unwrap();
//! real_time.bind_to(&payments, Duration::from_secs(30));
//! assert!(real_time.is_on());
//! payments.try_acquire().unwrap().record_failure();   // the breaker opens
//! assert!(!real_time.is_on());                          // queue the payment instead
//! # }
//! ```

mod switch;

pub use switch::{Switch, SwitchChanged, SwitchReason, SwitchState, SwitchesCheck};
