//! `/dashboard/stream`: the server-sent events of one browser.

use super::{Dashboard, TransitionRecord};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A view every this long.
const VIEW_EVERY: Duration = Duration::from_millis(250);
/// How soon a browser reconnects after the stream broke (the SSE `retry:` field).
const RECONNECT: Duration = Duration::from_millis(500);

/// One open stream: counted in the dashboard's clients while it lives.
struct Client {
    dashboard: Arc<Dashboard>,
    /// The id of the last transition this browser has been sent (or that it said it had).
    sent: u64,
    /// Changes when the dashboard records a transition.
    recorded: tokio::sync::watch::Receiver<u64>,
    /// Events ready to go, in order.
    ready: VecDeque<SseEvent>,
    /// When the next view is due.
    next_view: Instant,
}

impl Client {
    /// Opens a stream; `resume` is the last transition id the browser received before it
    /// reconnected (`Last-Event-ID`).
    fn open(dashboard: Arc<Dashboard>, resume: Option<u64>) -> Self {
        dashboard.clients.send_modify(|n| *n += 1);
        // Subscribed before the snapshot: a transition recorded after it wakes the stream.
        let recorded = dashboard.recorded.subscribe();
        let (view, last_id) = dashboard.snapshot();
        let mut client = Client {
            dashboard,
            sent: last_id,
            recorded,
            ready: VecDeque::new(),
            next_view: Instant::now() + VIEW_EVERY,
        };
        // An id beyond the last recorded comes from another dashboard (restarted): start
        // afresh.
        if let Some(resume) = resume.filter(|r| *r <= last_id) {
            // The transitions it missed come first, each with its id.
            client.sent = resume;
            client.queue_transitions();
        }
        // The view carries the id of the last transition in it, so a browser that
        // reconnects asks for what came after.
        let data = serde_json::to_string(&view).unwrap_or_default();
        client.ready.push_back(
            SseEvent::default()
                .id(last_id.to_string())
                .retry(RECONNECT)
                .data(data),
        );
        client.sent = client.sent.max(last_id);
        client
    }

    /// Queues the transitions recorded since the last one sent.
    fn queue_transitions(&mut self) {
        for record in self.dashboard.transitions_after(self.sent) {
            self.sent = record.id;
            self.ready.push_back(transition_event(&record));
        }
    }

    /// The next event: queued ones first, then whichever comes first of a transition and
    /// the next view.
    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            tokio::select! {
                changed = self.recorded.changed() => {
                    if changed.is_ok() {
                        self.queue_transitions();
                    }
                }
                () = tokio::time::sleep_until(self.next_view) => {
                    self.next_view = Instant::now() + VIEW_EVERY;
                    // Every transition in the view goes out as its own event first: the
                    // snapshot is read before the transitions are, so none can be missed.
                    let (view, _) = self.dashboard.snapshot();
                    self.queue_transitions();
                    let view = serde_json::to_string(&view).unwrap_or_default();
                    self.ready.push_back(SseEvent::default().data(view));
                }
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.dashboard.clients.send_modify(|n| *n -= 1);
    }
}

fn transition_event(record: &TransitionRecord) -> SseEvent {
    SseEvent::default()
        .event("transition")
        .id(record.id.to_string())
        .data(serde_json::to_string(record).unwrap_or_default())
}

/// The stream of one browser.
pub(super) fn sse(
    dashboard: Arc<Dashboard>,
    resume: Option<u64>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let client = Client::open(dashboard, resume);
    let stream = futures_util::stream::unfold(client, |mut client| async move {
        let event = client.next().await;
        Some((Ok(event), client))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
