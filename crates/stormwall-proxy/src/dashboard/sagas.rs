//! The saga panel: choreographed sagas as a tracker sees them — each one's steps so far,
//! whether it runs, finished or stalled, and where a stalled one stopped.
//!
//! The dashboard does not track sagas itself (this crate does not depend on
//! `stormwall-saga`): whoever tracks them feeds it, in the JSON shape of [`SagaView`] —
//! which `stormwall_saga::choreography::SagaProgress` serialises to — with
//! [`Dashboard::feed_sagas`] (polls a reader) or [`Dashboard::show_sagas`].

use super::Dashboard;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Where a saga stands, as its tracker said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaState {
    /// Not finished; its last event is recent.
    Running,
    /// Not finished, and quiet for longer than the tracker's patience: stopped after its
    /// last event.
    Stalled,
    /// Reached a terminal event.
    Finished,
}

/// One event of a saga, as the panel shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaStepView {
    /// What happened (`payment.completed`).
    pub kind: String,
    /// The entity it is about (`order-42`).
    pub stream_key: String,
    /// When the tracker saw it, milliseconds since the Unix epoch.
    pub seen_at_ms: i64,
    /// Whether it ends the saga (a terminal kind). Default false.
    #[serde(default)]
    pub terminal: bool,
}

/// One saga on the panel. Unknown fields are ignored, so a tracker's richer rows read as
/// they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaView {
    /// The saga's correlation id.
    pub correlation_id: String,
    /// Where it stands.
    pub status: SagaState,
    /// Its events so far, oldest first: a stalled saga stopped after the last one.
    pub events: Vec<SagaStepView>,
}

impl Dashboard {
    /// Shows `sagas` on the panel (replacing what it showed), in this order.
    pub fn show_sagas(&self, sagas: Vec<SagaView>) {
        *self.sagas.lock().unwrap_or_else(|e| e.into_inner()) = sagas;
    }

    /// Shows `rows` — anything that serialises as a list of [`SagaView`], such as the
    /// `Vec<SagaProgress>` of a `SagaTracker` — on the panel; how many. Rows of another
    /// shape are refused (the panel keeps what it showed).
    pub fn show_sagas_from(&self, rows: &impl Serialize) -> Result<usize, serde_json::Error> {
        let sagas: Vec<SagaView> = serde_json::from_value(serde_json::to_value(rows)?)?;
        let shown = sagas.len();
        self.show_sagas(sagas);
        Ok(shown)
    }

    /// Feeds the panel: every `every`, calls `read` and shows the rows it returns (as
    /// [`show_sagas_from`](Self::show_sagas_from)); a failed read or rows of another shape
    /// are logged and the panel keeps what it showed. A task on the current tokio runtime
    /// (call it inside one); it stops when the dashboard is dropped or the returned handle
    /// is aborted. With a tracker:
    /// `dashboard.feed_sagas(Duration::from_secs(1), move || { let t = tracker.clone(); async move { t.overview(50).await } })`.
    pub fn feed_sagas<F, Fut, T, E>(
        self: &Arc<Self>,
        every: Duration,
        read: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send,
        T: Serialize,
        E: std::fmt::Display,
    {
        let dashboard = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let rows = read().await;
                let Some(dashboard) = dashboard.upgrade() else {
                    return;
                };
                match rows.map(|rows| dashboard.show_sagas_from(&rows)) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "dashboard: saga rows of an unknown shape")
                    }
                    Err(e) => tracing::warn!(error = %e, "dashboard: reading the sagas failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_another_shape_are_refused_and_the_panel_keeps_what_it_showed() {
        let dashboard = Dashboard::new();
        let row = serde_json::json!([{
            "correlation_id": "c1",
            "status": "stalled",
            "events": [{"id": "e1", "kind": "order.created", "stream_key": "order-1", "seen_at_ms": 1}],
        }]);
        assert_eq!(dashboard.show_sagas_from(&row).unwrap(), 1);
        assert_eq!(dashboard.view().sagas[0].status, SagaState::Stalled);
        assert!(!dashboard.view().sagas[0].events[0].terminal, "default");
        let unknown_status =
            serde_json::json!([{"correlation_id": "c2", "status": "lost", "events": []}]);
        let e = dashboard.show_sagas_from(&unknown_status).unwrap_err();
        assert!(e.to_string().contains("unknown variant `lost`"), "{e}");
        assert_eq!(dashboard.view().sagas[0].correlation_id, "c1");
    }
}
