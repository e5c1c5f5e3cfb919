use super::{Event, EventListener, EventSource};

/// Logs every event through `tracing`, at a level by how often it happens and how much it
/// matters:
///
/// | level | events |
/// |---|---|
/// | `WARN` | circuit transitions (rare, and each one changes what callers see) |
/// | `INFO` | retries, timeouts, fallbacks, exhausted retry budgets, stale values served, feature switches |
/// | `DEBUG` | rejections (circuit open, bulkhead full, rate limited, throttled — one per rejected call, so a flood while a dependency is down), chaos injections, hedges, completed executions |
/// | `TRACE` | completed attempts |
///
/// Every record carries the pipeline's name and the strategy's; with the `tracing` feature
/// (default) each execution runs in a `stormwall.execute` span and each attempt in a
/// `stormwall.attempt` span, with or without this listener.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingListener;

impl EventListener for TracingListener {
    fn on_event(&self, source: &EventSource<'_>, event: &Event) {
        let pipeline = source.pipeline;
        let strategy = source.strategy;
        match event {
            Event::CircuitTransition(t) => tracing::warn!(
                pipeline, strategy, from = ?t.from, to = ?t.to, reason = ?t.reason,
                "circuit breaker transition"
            ),
            Event::CircuitRejected(r) => tracing::debug!(
                pipeline, strategy, state = ?r.state, retry_after = ?r.retry_after,
                "circuit breaker rejected a call"
            ),
            Event::Retry(r) => tracing::info!(
                pipeline, strategy, attempt = r.attempt, delay = ?r.delay, "retrying"
            ),
            Event::Timeout(t) => {
                tracing::info!(pipeline, strategy, timeout = ?t.timeout, "timed out")
            }
            Event::Fallback(f) => {
                tracing::info!(pipeline, strategy, outcome = f.outcome, "fallback used")
            }
            Event::BulkheadRejected(b) => tracing::debug!(
                pipeline, strategy, reason = ?b.reason, in_use = b.in_use, queued = b.queued,
                "bulkhead rejected a call"
            ),
            Event::RateLimited(r) => tracing::debug!(
                pipeline, strategy, retry_after = ?r.retry_after, "rate limiter rejected a call"
            ),
            Event::RetryBudgetExhausted(b) => tracing::info!(
                pipeline,
                strategy,
                attempt = b.attempt,
                "retry budget exhausted, not retrying"
            ),
            Event::Throttled(t) => tracing::debug!(
                pipeline,
                strategy,
                probability = t.probability,
                "throttled locally"
            ),
            Event::ChaosInjected(c) => {
                tracing::debug!(pipeline, strategy, kind = c.kind, "chaos injected")
            }
            Event::HedgeStarted(h) => {
                tracing::debug!(pipeline, strategy, attempt = h.attempt, "hedge started")
            }
            Event::ServedStale(s) => {
                tracing::info!(pipeline, strategy, age = ?s.age, "served a stale value")
            }
            Event::AttemptCompleted(a) => tracing::trace!(
                pipeline, strategy, attempt = a.attempt, duration = ?a.duration,
                success = a.success, "attempt completed"
            ),
            Event::ExecutionCompleted(e) => tracing::debug!(
                pipeline, strategy, duration = ?e.duration, success = e.success,
                "execution completed"
            ),
            Event::SwitchChanged(s) => tracing::info!(
                switch = %s.switch, enabled = s.enabled, reason = ?s.reason,
                "feature switch changed"
            ),
            Event::PipelineReloaded(r) => tracing::info!(
                pipeline, strategy, change = ?r.change, kept = ?r.strategies.kept(),
                rebuilt = ?r.strategies.rebuilt(), "pipeline reloaded"
            ),
        }
    }
}
