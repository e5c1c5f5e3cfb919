use super::{Event, EventListener, EventSource};
use crate::circuit_breaker::CircuitState;
use metrics::{Counter, Gauge, Histogram};
use std::collections::HashMap;
use std::sync::RwLock;

/// Reports every event through the [`metrics`] facade, for whatever exporter the service
/// installed (Prometheus, StatsD, ...):
///
/// | name | kind | labels |
/// |---|---|---|
/// | `stormwall_strategy_events_total` | counter | `pipeline`, `strategy`, `event` |
/// | `stormwall_attempt_duration_seconds` | histogram | `pipeline` |
/// | `stormwall_pipeline_duration_seconds` | histogram | `pipeline` |
/// | `stormwall_circuit_state` | gauge: 0 closed, 1 open, 2 half-open, 3 isolated, 4 disabled | `pipeline` |
///
/// Metric handles are registered once per pipeline and event kind, then reused: reporting
/// allocates nothing after the first event of each kind.
#[derive(Debug, Default)]
pub struct MetricsListener {
    pipelines: RwLock<HashMap<String, Handles>>,
}

#[derive(Debug)]
struct Handles {
    attempt: Histogram,
    execution: Histogram,
    circuit_state: Gauge,
    events: HashMap<(&'static str, &'static str), Counter>,
}

impl Handles {
    fn new(pipeline: &str) -> Self {
        let label = pipeline.to_owned();
        Handles {
            attempt: metrics::histogram!("stormwall_attempt_duration_seconds", "pipeline" => label.clone()),
            execution: metrics::histogram!("stormwall_pipeline_duration_seconds", "pipeline" => label.clone()),
            circuit_state: metrics::gauge!("stormwall_circuit_state", "pipeline" => label),
            events: HashMap::new(),
        }
    }
}

/// The value of `stormwall_circuit_state` for a state.
pub fn circuit_state_value(state: CircuitState) -> f64 {
    f64::from(state as u8)
}

impl MetricsListener {
    /// A listener reporting to the global `metrics` recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the pipeline's handles, registering them (and the event's counter) on
    /// first use.
    fn with_handles(
        &self,
        source: &EventSource<'_>,
        event: &'static str,
        f: impl Fn(&Handles, &Counter),
    ) {
        let key = (source.strategy, event);
        if let Ok(map) = self.pipelines.read() {
            if let Some(handles) = map.get(source.pipeline) {
                if let Some(counter) = handles.events.get(&key) {
                    f(handles, counter);
                    return;
                }
            }
        }
        let mut map = self.pipelines.write().unwrap_or_else(|e| e.into_inner());
        let handles = map
            .entry(source.pipeline.to_owned())
            .or_insert_with(|| Handles::new(source.pipeline));
        let counter = handles.events.entry(key).or_insert_with(|| {
            metrics::counter!(
                "stormwall_strategy_events_total",
                "pipeline" => source.pipeline.to_owned(),
                "strategy" => source.strategy,
                "event" => event
            )
        });
        let counter = counter.clone();
        f(handles, &counter);
    }
}

impl EventListener for MetricsListener {
    fn on_event(&self, source: &EventSource<'_>, event: &Event) {
        self.with_handles(source, event.name(), |handles, counter| {
            counter.increment(1);
            match event {
                Event::AttemptCompleted(a) => handles.attempt.record(a.duration.as_secs_f64()),
                Event::ExecutionCompleted(e) => handles.execution.record(e.duration.as_secs_f64()),
                Event::CircuitTransition(t) => handles.circuit_state.set(circuit_state_value(t.to)),
                _ => {}
            }
        });
    }
}
