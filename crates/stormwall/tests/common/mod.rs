//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use stormwall::telemetry::{Event, EventListener, EventSource};

/// Keeps every event, with its source's strategy name.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<(String, &'static str, Event)>>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.2.clone())
            .collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.events().iter().filter(|e| e.name() == name).count()
    }
}

impl EventListener for Recorder {
    fn on_event(&self, source: &EventSource<'_>, event: &Event) {
        self.events.lock().unwrap().push((
            source.pipeline.to_string(),
            source.strategy,
            event.clone(),
        ));
    }
}
