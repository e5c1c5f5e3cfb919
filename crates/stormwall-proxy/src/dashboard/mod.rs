//! The live dashboard (Hystrix-style): per route a circle (size = request rate, colour =
//! health), error %, rolling counts, latency percentiles, breaker state, a 2-minute
//! sparkline, and the breaker transitions seen — pushed to the page over server-sent events.
//!
//! [`Dashboard`] is a stormwall `EventListener`: attach it to the pipelines to show.
//! Choreographed sagas appear on it when a tracker feeds it ([`Dashboard::feed_sagas`]):
//! each saga's steps, its state, and where a stalled one stopped.
//!
//! The stream (`/dashboard/stream`) sends a view every 250 ms and each breaker transition
//! as it is recorded (`event: transition`, numbered by `id:` in the order the breaker made
//! them). A browser that reconnects sends the last number it received (`Last-Event-ID`)
//! and gets the transitions it missed, in order, before anything else.

mod sagas;
mod stream;

pub use sagas::{SagaState, SagaStepView, SagaView};

use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{CircuitState, CircuitTransition};
use stormwall::telemetry::{Event, EventListener, EventSource};

/// Seconds of history kept (the sparkline).
const HISTORY: usize = 120;
/// Seconds the rolling counts and percentiles cover.
const ROLLING: usize = 10;
/// Latency samples kept per second and route.
const SAMPLES: usize = 2000;
/// Breaker transitions kept (the log, and what a reconnecting stream can catch up on).
const TRANSITIONS: usize = 200;
/// Transitions of one route held back while an earlier one (by the breaker's sequence) has
/// not arrived yet; beyond this many, they are recorded as they are.
const HELD: usize = 16;

#[derive(Debug, Clone, Default)]
struct Second {
    /// success, short-circuited, timeout, rejected, failure
    counts: [u64; 5],
    latencies_us: Vec<u32>,
}

#[derive(Debug)]
struct Route {
    /// Ring of one-second buckets, indexed by second since the dashboard started.
    seconds: Vec<Second>,
    /// The second each slot holds.
    stamps: Vec<u64>,
    state: CircuitState,
    /// The breaker's sequence number the next transition should carry: set by the first
    /// transition seen; transitions can reach the listener from several threads, out of order.
    next_sequence: Option<u64>,
    /// Transitions that arrived ahead of `next_sequence`, with when they arrived.
    held: BTreeMap<u64, (Duration, CircuitTransition)>,
}

impl Route {
    fn new() -> Self {
        Route {
            seconds: vec![Second::default(); HISTORY],
            stamps: vec![u64::MAX; HISTORY],
            state: CircuitState::Closed,
            next_sequence: None,
            held: BTreeMap::new(),
        }
    }

    /// Takes `transition` in, and returns the transitions now due in the breaker's order
    /// (none while an earlier one is missing).
    fn order(
        &mut self,
        at: Duration,
        transition: CircuitTransition,
    ) -> Vec<(Duration, CircuitTransition)> {
        let sequence = transition.sequence;
        match self.next_sequence {
            // A breaker's first transition is 1: a new breaker under the same name (a
            // reloaded route) starts the count again.
            Some(next) if sequence > next && sequence != 1 => {
                self.held.insert(sequence, (at, transition));
                if self.held.len() <= HELD {
                    return Vec::new();
                }
                // Too long a gap: record what is held, in order.
                let due: Vec<_> = std::mem::take(&mut self.held).into_values().collect();
                self.next_sequence = due.last().map(|(_, t)| t.sequence + 1);
                return due;
            }
            _ => {}
        }
        let mut due = vec![(at, transition)];
        let mut next = sequence + 1;
        while let Some(held) = self.held.remove(&next) {
            due.push(held);
            next += 1;
        }
        self.next_sequence = Some(next);
        due
    }

    fn bucket(&mut self, second: u64) -> &mut Second {
        let slot = (second % HISTORY as u64) as usize;
        if self.stamps[slot] != second {
            self.stamps[slot] = second;
            self.seconds[slot] = Second::default();
        }
        &mut self.seconds[slot]
    }

    fn get(&self, second: u64) -> Option<&Second> {
        let slot = (second % HISTORY as u64) as usize;
        (self.stamps[slot] == second).then(|| &self.seconds[slot])
    }
}

/// One breaker transition, as shown in the log.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionRecord {
    /// 1 for the first transition the dashboard recorded, then counting up without gaps
    /// (the stream's event id).
    pub id: u64,
    /// Seconds since the dashboard started.
    pub at_s: f64,
    /// The route (pipeline name).
    pub route: String,
    /// The state before.
    pub from: String,
    /// The state after.
    pub to: String,
}

/// What the page receives for one route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    /// The route.
    pub name: String,
    /// Requests per second over the last 10 s.
    pub rate_per_s: f64,
    /// Share of calls that did not succeed, in percent.
    pub error_percent: f64,
    /// Successful attempts, last 10 s.
    pub success: u64,
    /// Calls rejected by the open circuit, last 10 s.
    pub short_circuited: u64,
    /// Timeouts, last 10 s.
    pub timeout: u64,
    /// Calls rejected by a bulkhead or rate limiter, last 10 s.
    pub rejected: u64,
    /// Failed attempts, last 10 s.
    pub failure: u64,
    /// Median attempt latency (ms), last 10 s.
    pub p50_ms: f64,
    /// 90th percentile (ms).
    pub p90_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// The circuit state.
    pub breaker: String,
    /// Requests per second, oldest first, the last 120 s.
    pub sparkline: Vec<u64>,
}

/// What the page receives.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// Every route seen.
    pub routes: Vec<RouteView>,
    /// The breaker transitions seen (the last 200), oldest first.
    pub transitions: Vec<TransitionRecord>,
    /// The sagas a tracker fed in ([`Dashboard::feed_sagas`]), in its order; empty when
    /// none is fed.
    pub sagas: Vec<SagaView>,
}

/// What the listener has recorded.
#[derive(Debug, Default)]
struct Inner {
    routes: BTreeMap<String, Route>,
    /// The last [`TRANSITIONS`] transitions, oldest first.
    transitions: VecDeque<TransitionRecord>,
    /// The id of the last transition recorded (0: none yet).
    last_id: u64,
}

/// Collects the events of the pipelines it is attached to, and serves them live.
pub struct Dashboard {
    started: Instant,
    inner: Mutex<Inner>,
    /// The id of the last transition recorded: streams wait on it to send transitions at once.
    recorded: tokio::sync::watch::Sender<u64>,
    /// How many streams are open.
    clients: tokio::sync::watch::Sender<usize>,
    /// The saga panel: replaced whole by each [`show_sagas`](Self::show_sagas).
    sagas: Mutex<Vec<SagaView>>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
            recorded: tokio::sync::watch::Sender::new(0),
            clients: tokio::sync::watch::Sender::new(0),
            sagas: Mutex::new(Vec::new()),
        }
    }
}

fn state_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half-open",
        CircuitState::Isolated => "isolated",
        CircuitState::Disabled => "disabled",
    }
}

impl EventListener for Dashboard {
    fn on_event(&self, source: &EventSource<'_>, event: &Event) {
        if !matches!(
            event,
            Event::AttemptCompleted(_)
                | Event::CircuitRejected(_)
                | Event::Timeout(_)
                | Event::BulkheadRejected(_)
                | Event::RateLimited(_)
                | Event::CircuitTransition(_)
        ) {
            // Called for every event of every request: nothing to lock for the rest.
            return;
        }
        let elapsed = self.started.elapsed();
        let second = elapsed.as_secs();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner {
            routes,
            transitions,
            last_id,
        } = &mut *inner;
        // The route's name is allocated once, when it is first seen.
        if !routes.contains_key(source.pipeline) {
            routes.insert(source.pipeline.to_owned(), Route::new());
        }
        let Some(route) = routes.get_mut(source.pipeline) else {
            return;
        };
        match event {
            Event::AttemptCompleted(a) => {
                let bucket = route.bucket(second);
                bucket.counts[if a.success { 0 } else { 4 }] += 1;
                if bucket.latencies_us.len() < SAMPLES {
                    bucket
                        .latencies_us
                        .push(a.duration.as_micros().min(u128::from(u32::MAX)) as u32);
                }
            }
            Event::CircuitRejected(_) => route.bucket(second).counts[1] += 1,
            Event::Timeout(_) => route.bucket(second).counts[2] += 1,
            Event::BulkheadRejected(_) | Event::RateLimited(_) => {
                route.bucket(second).counts[3] += 1
            }
            Event::CircuitTransition(t) => {
                let due = route.order(elapsed, *t);
                if due.is_empty() {
                    return;
                }
                for (at, t) in due {
                    route.state = t.to;
                    *last_id += 1;
                    transitions.push_back(TransitionRecord {
                        id: *last_id,
                        at_s: at.as_secs_f64(),
                        route: source.pipeline.to_owned(),
                        from: state_name(t.from).into(),
                        to: state_name(t.to).into(),
                    });
                    if transitions.len() > TRANSITIONS {
                        transitions.pop_front();
                    }
                }
                let last = *last_id;
                drop(inner);
                self.recorded.send_replace(last);
            }
            _ => {}
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * p).round() as usize]) / 1000.0
}

impl Dashboard {
    /// A dashboard with no routes yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The current view: rolling figures over the last 10 s, per route.
    pub fn view(&self) -> View {
        self.snapshot().0
    }

    /// Resolves once a stream (`/dashboard/stream`) is open: a demo that must be watched
    /// from its start waits on it.
    pub async fn wait_for_stream_client(&self) {
        let mut clients = self.clients.subscribe();
        let _ = clients.wait_for(|n| *n > 0).await;
    }

    /// The number of streams open now.
    pub fn stream_clients(&self) -> usize {
        *self.clients.borrow()
    }

    /// The view, and the id of the last transition in it, read together.
    fn snapshot(&self) -> (View, u64) {
        let now = self.started.elapsed().as_secs();
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner {
            routes,
            transitions,
            last_id,
        } = &*inner;
        let routes = routes
            .iter()
            .map(|(name, route)| {
                let mut counts = [0u64; 5];
                let mut latencies = Vec::new();
                for second in now.saturating_sub(ROLLING as u64 - 1)..=now {
                    if let Some(s) = route.get(second) {
                        for (c, n) in counts.iter_mut().zip(s.counts) {
                            *c += n;
                        }
                        latencies.extend_from_slice(&s.latencies_us);
                    }
                }
                latencies.sort_unstable();
                let total: u64 = counts.iter().sum();
                let errors = total - counts[0];
                let sparkline = (now.saturating_sub(HISTORY as u64 - 1)..=now)
                    .map(|s| route.get(s).map_or(0, |b| b.counts.iter().sum()))
                    .collect();
                let window = (now + 1).min(ROLLING as u64) as f64;
                RouteView {
                    name: name.clone(),
                    rate_per_s: total as f64 / window,
                    error_percent: if total == 0 {
                        0.0
                    } else {
                        errors as f64 * 100.0 / total as f64
                    },
                    success: counts[0],
                    short_circuited: counts[1],
                    timeout: counts[2],
                    rejected: counts[3],
                    failure: counts[4],
                    p50_ms: percentile(&latencies, 0.5),
                    p90_ms: percentile(&latencies, 0.9),
                    p99_ms: percentile(&latencies, 0.99),
                    breaker: state_name(route.state).into(),
                    sparkline,
                }
            })
            .collect();
        let view = View {
            routes,
            transitions: transitions.iter().cloned().collect(),
            sagas: self.sagas.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        (view, *last_id)
    }

    /// The transitions recorded after id `after`, oldest first.
    fn transitions_after(&self, after: u64) -> Vec<TransitionRecord> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .transitions
            .iter()
            .filter(|t| t.id > after)
            .cloned()
            .collect()
    }

    /// The dashboard's routes: `/dashboard` (the page), `/dashboard/stream` (server-sent
    /// events: a view every 250 ms, each transition as recorded), `/dashboard/state` (the
    /// view as JSON).
    pub fn router(self: &Arc<Self>) -> Router {
        // The page arrives with the current view in it, so it shows the state at once (and
        // a screenshot taken at load shows it too); the stream updates it from there.
        let page = {
            let dashboard = Arc::clone(self);
            move || {
                let dashboard = Arc::clone(&dashboard);
                async move {
                    let view =
                        serde_json::to_string(&dashboard.view()).unwrap_or_else(|_| "null".into());
                    Html(PAGE.replace("/*INITIAL*/null", &view.replace("</", "<\\/")))
                }
            }
        };
        let state = {
            let dashboard = Arc::clone(self);
            move || {
                let dashboard = Arc::clone(&dashboard);
                async move { Json(dashboard.view()) }
            }
        };
        let stream = {
            let dashboard = Arc::clone(self);
            move |headers: HeaderMap| {
                let dashboard = Arc::clone(&dashboard);
                // A reconnecting browser says the last event it received.
                let resume = headers
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                async move { stream::sse(dashboard, resume).into_response() }
            }
        };
        Router::new()
            .route("/dashboard", get(page))
            .route("/dashboard/state", get(state))
            .route("/dashboard/stream", get(stream))
    }
}

/// Binds `127.0.0.1:port`; if that port is taken, a free one (and says so on stderr).
pub async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            eprintln!(
                "stormwall: port {port} is in use; the dashboard uses port {} instead",
                listener.local_addr()?.port()
            );
            Ok(listener)
        }
        Err(e) => Err(e),
    }
}

const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::*;
    use stormwall::circuit_breaker::TransitionReason;

    fn transition(sequence: u64, from: CircuitState, to: CircuitState) -> Event {
        Event::CircuitTransition(CircuitTransition {
            from,
            to,
            reason: TransitionReason::Manual,
            break_duration: None,
            sequence,
            origin: Default::default(),
        })
    }

    #[test]
    fn transitions_arriving_out_of_order_are_recorded_in_the_breakers_order() {
        use CircuitState::{Closed, HalfOpen, Open};
        let dashboard = Dashboard::new();
        let source = EventSource {
            pipeline: "payment",
            strategy: "circuit_breaker",
        };
        dashboard.on_event(&source, &transition(1, Closed, Open));
        // The third before the second (two threads): held until the second comes.
        dashboard.on_event(&source, &transition(3, HalfOpen, Closed));
        assert_eq!(dashboard.view().transitions.len(), 1);
        dashboard.on_event(&source, &transition(2, Open, HalfOpen));
        let seen: Vec<_> = dashboard
            .view()
            .transitions
            .iter()
            .map(|t| (t.id, t.from.clone(), t.to.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, "closed".into(), "open".into()),
                (2, "open".into(), "half-open".into()),
                (3, "half-open".into(), "closed".into())
            ]
        );
        assert_eq!(dashboard.view().routes[0].breaker, "closed");
    }
}
