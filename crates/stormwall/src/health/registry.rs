use crate::circuit_breaker::{CircuitBreaker, CircuitState, StateStore};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// How healthy something is; the worst status of the parts is the status of the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum HealthStatus {
    /// Working.
    Healthy,
    /// Working with reduced function (a fallback serving, a circuit open).
    Degraded,
    /// Not working.
    Unhealthy,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CheckResult {
    /// The status.
    pub status: HealthStatus,
    /// Why, for a person reading the report.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub description: Option<String>,
}

impl CheckResult {
    /// Healthy, nothing to say.
    pub fn healthy() -> Self {
        CheckResult {
            status: HealthStatus::Healthy,
            description: None,
        }
    }

    /// Degraded, because `why`.
    pub fn degraded(why: impl Into<String>) -> Self {
        CheckResult {
            status: HealthStatus::Degraded,
            description: Some(why.into()),
        }
    }

    /// Unhealthy, because `why`.
    pub fn unhealthy(why: impl Into<String>) -> Self {
        CheckResult {
            status: HealthStatus::Unhealthy,
            description: Some(why.into()),
        }
    }
}

/// One health check. Any `Fn() -> impl Future<Output = CheckResult>` is one.
pub trait HealthCheck: Send + Sync + 'static {
    /// Runs the check.
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>>;
}

impl<F, Fut> HealthCheck for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>> {
        Box::pin(self())
    }
}

/// Reports a circuit breaker's state: Healthy while closed (or disabled), Degraded while
/// open, half-open or isolated — or Unhealthy, for a dependency the service cannot work
/// without ([`critical`](Self::critical)).
pub struct BreakerCheck<P, S> {
    breaker: CircuitBreaker<P, S>,
    when_open: HealthStatus,
}

impl<P, S> BreakerCheck<P, S> {
    /// Degraded while the breaker is not closed.
    pub fn new(breaker: CircuitBreaker<P, S>) -> Self {
        BreakerCheck {
            breaker,
            when_open: HealthStatus::Degraded,
        }
    }

    /// Unhealthy (not merely degraded) while the breaker is not closed.
    pub fn critical(mut self) -> Self {
        self.when_open = HealthStatus::Unhealthy;
        self
    }
}

impl<P, S> HealthCheck for BreakerCheck<P, S>
where
    P: Send + Sync + 'static,
    S: StateStore,
{
    fn check(&self) -> Pin<Box<dyn Future<Output = CheckResult> + Send + '_>> {
        let state = self.breaker.state();
        let result = match state {
            CircuitState::Closed | CircuitState::Disabled => CheckResult::healthy(),
            _ => CheckResult {
                status: self.when_open,
                description: Some(format!("circuit {state}")),
            },
        };
        Box::pin(std::future::ready(result))
    }
}

/// One check's line in the report.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HealthEntry {
    /// The status.
    pub status: HealthStatus,
    /// Why, if the check said.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub description: Option<String>,
    /// How long the check took, in seconds.
    pub duration_seconds: f64,
    /// The check's tags.
    pub tags: Vec<String>,
}

/// The aggregate: the worst status, how long it all took, and each check.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HealthReport {
    /// The worst status of the checks run (Healthy when none ran).
    pub status: HealthStatus,
    /// How long the checks took together (they run concurrently), in seconds.
    pub total_duration_seconds: f64,
    /// Each check by name.
    pub entries: BTreeMap<String, HealthEntry>,
}

struct Registered {
    name: String,
    tags: Vec<String>,
    timeout: Duration,
    check: Arc<dyn HealthCheck>,
}

/// A set of named checks with tags and timeouts.
#[derive(Default, Clone)]
pub struct HealthRegistry {
    checks: Vec<Arc<Registered>>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|c| (&c.name, &c.tags, c.timeout)))
            .finish()
    }
}

impl HealthRegistry {
    /// No checks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `check` as `name`, tagged, failing as Unhealthy if it takes longer than
    /// `timeout`.
    pub fn check(
        mut self,
        name: impl Into<String>,
        tags: &[&str],
        timeout: Duration,
        check: impl HealthCheck,
    ) -> Self {
        self.checks.push(Arc::new(Registered {
            name: name.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            timeout,
            check: Arc::new(check),
        }));
        self
    }

    /// Runs every check carrying `tag` (every check when `None`) concurrently, each under
    /// its timeout, and aggregates them.
    pub async fn report(&self, tag: Option<&str>) -> HealthReport {
        let started = Instant::now();
        let selected: Vec<&Registered> = self
            .checks
            .iter()
            .filter(|c| tag.is_none_or(|t| c.tags.iter().any(|x| x == t)))
            .map(|c| &**c)
            .collect();
        let runs = selected.iter().map(|c| async move {
            let began = Instant::now();
            let result = match tokio::time::timeout(c.timeout, c.check.check()).await {
                Ok(result) => result,
                Err(_) => CheckResult::unhealthy(format!("timed out after {:?}", c.timeout)),
            };
            (began.elapsed(), result)
        });
        let results = join_all(runs.collect()).await;
        let mut entries = BTreeMap::new();
        let mut status = HealthStatus::Healthy;
        for (c, (duration, result)) in selected.iter().zip(results) {
            status = status.max(result.status);
            entries.insert(
                c.name.clone(),
                HealthEntry {
                    status: result.status,
                    description: result.description,
                    duration_seconds: duration.as_secs_f64(),
                    tags: c.tags.clone(),
                },
            );
        }
        HealthReport {
            status,
            total_duration_seconds: started.elapsed().as_secs_f64(),
            entries,
        }
    }
}

/// Polls every future until all are done; results in input order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let mut waiting = false;
        for (future, slot) in pending.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *slot = Some(value),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}
