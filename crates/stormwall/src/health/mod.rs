//! Health checks, transport-agnostic: a registry of async checks with tags (`live`,
//! `ready`, `startup`), each bounded by a timeout, aggregated into one report a health
//! endpoint can serialise (the shape of ASP.NET Core's health report).
//!
//! Use it to tell an orchestrator whether to restart the process (live), send it traffic
//! (ready) or wait for it (startup). A breaker check reports Degraded while its circuit is
//! not closed, so readiness can reflect a dependency that is down.
//!
//! ```
//! use std::time::Duration;
//! use stormwall::health::{HealthRegistry, HealthStatus, CheckResult, tags};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let registry = HealthRegistry::new()
//!     .check("process", &[tags::LIVE], Duration::from_secs(1), || async {
//!         CheckResult::healthy()
//!     })
//!     .check("database", &[tags::READY], Duration::from_secs(1), || async {
//!         CheckResult::unhealthy("connection refused")
//!     });
//! assert_eq!(registry.report(Some(tags::LIVE)).await.status, HealthStatus::Healthy);
//! assert_eq!(registry.report(Some(tags::READY)).await.status, HealthStatus::Unhealthy);
//! # }
//! ```

mod registry;

pub use registry::{
    BreakerCheck, CheckResult, HealthCheck, HealthEntry, HealthRegistry, HealthReport, HealthStatus,
};

/// The conventional tags.
pub mod tags {
    /// The process is alive (restart it if not).
    pub const LIVE: &str = "live";
    /// The process can take traffic.
    pub const READY: &str = "ready";
    /// The process has finished starting.
    pub const STARTUP: &str = "startup";
}
