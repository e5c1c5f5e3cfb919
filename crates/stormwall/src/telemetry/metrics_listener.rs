use super::{Event, EventListener, EventSource, EVENT_KINDS};
use crate::circuit_breaker::CircuitState;
use metrics::{Counter, Gauge, Histogram};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

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
/// Every handle of a pipeline is registered on its first event. The first pipeline a
/// listener hears from is then served without a lock or a hash; others through a map.
#[derive(Debug, Default)]
pub struct MetricsListener {
    first: OnceLock<(Box<str>, Handles)>,
    others: RwLock<HashMap<String, Handles>>,
}

#[derive(Debug)]
struct Handles {
    attempt: Histogram,
    execution: Histogram,
    circuit_state: Gauge,
    /// One per [`EVENT_KINDS`] entry.
    events: Vec<Counter>,
}

impl Handles {
    fn new(pipeline: &str) -> Self {
        let label = pipeline.to_owned();
        Handles {
            attempt: metrics::histogram!("stormwall_attempt_duration_seconds", "pipeline" => label.clone()),
            execution: metrics::histogram!("stormwall_pipeline_duration_seconds", "pipeline" => label.clone()),
            circuit_state: metrics::gauge!("stormwall_circuit_state", "pipeline" => label.clone()),
            events: EVENT_KINDS
                .iter()
                .map(|(strategy, event)| {
                    metrics::counter!(
                        "stormwall_strategy_events_total",
                        "pipeline" => label.clone(),
                        "strategy" => *strategy,
                        "event" => *event
                    )
                })
                .collect(),
        }
    }

    fn report(&self, event: &Event) {
        self.events[event.index()].increment(1);
        match event {
            Event::AttemptCompleted(a) => self.attempt.record(a.duration.as_secs_f64()),
            Event::ExecutionCompleted(e) => self.execution.record(e.duration.as_secs_f64()),
            Event::CircuitTransition(t) => self.circuit_state.set(circuit_state_value(t.to)),
            _ => {}
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
}

impl EventListener for MetricsListener {
    fn on_event(&self, source: &EventSource<'_>, event: &Event) {
        let (name, handles) = self
            .first
            .get_or_init(|| (source.pipeline.into(), Handles::new(source.pipeline)));
        if **name == *source.pipeline {
            return handles.report(event);
        }
        if let Ok(map) = self.others.read() {
            if let Some(handles) = map.get(source.pipeline) {
                return handles.report(event);
            }
        }
        let mut map = self.others.write().unwrap_or_else(|e| e.into_inner());
        map.entry(source.pipeline.to_owned())
            .or_insert_with(|| Handles::new(source.pipeline))
            .report(event);
    }
}
