//! The live dashboard (Hystrix-style): per route a circle (size = request rate, colour =
//! health), error %, rolling counts, latency percentiles, breaker state, a 2-minute
//! sparkline, and the breaker transitions seen — pushed to the page over server-sent events.
//!
//! [`Dashboard`] is a stormwall `EventListener`: attach it to the pipelines to show.

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::CircuitState;
use stormwall::telemetry::{Event, EventListener, EventSource};

/// Seconds of history kept (the sparkline).
const HISTORY: usize = 120;
/// Seconds the rolling counts and percentiles cover.
const ROLLING: usize = 10;
/// Latency samples kept per second and route.
const SAMPLES: usize = 2000;

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
}

impl Route {
    fn new() -> Self {
        Route {
            seconds: vec![Second::default(); HISTORY],
            stamps: vec![u64::MAX; HISTORY],
            state: CircuitState::Closed,
        }
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
    /// The breaker transitions seen (the last 200).
    pub transitions: Vec<TransitionRecord>,
}

/// Collects the events of the pipelines it is attached to, and serves them live.
pub struct Dashboard {
    started: Instant,
    inner: Mutex<(BTreeMap<String, Route>, Vec<TransitionRecord>)>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            started: Instant::now(),
            inner: Mutex::new((BTreeMap::new(), Vec::new())),
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
        let (routes, transitions) = &mut *inner;
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
                route.state = t.to;
                transitions.push(TransitionRecord {
                    at_s: elapsed.as_secs_f64(),
                    route: source.pipeline.to_owned(),
                    from: state_name(t.from).into(),
                    to: state_name(t.to).into(),
                });
                if transitions.len() > 200 {
                    transitions.remove(0);
                }
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
        let now = self.started.elapsed().as_secs();
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (routes, transitions) = &*inner;
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
        View {
            routes,
            transitions: transitions.clone(),
        }
    }

    /// The dashboard's routes: `/dashboard` (the page), `/dashboard/stream` (server-sent
    /// events, a view every 250 ms), `/dashboard/state` (the view as JSON).
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
            move || {
                let dashboard = Arc::clone(&dashboard);
                async move { sse(dashboard).into_response() }
            }
        };
        Router::new()
            .route("/dashboard", get(page))
            .route("/dashboard/state", get(state))
            .route("/dashboard/stream", get(stream))
    }
}

fn sse(
    dashboard: Arc<Dashboard>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures_util::stream::unfold((dashboard, true), |(dashboard, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let data = serde_json::to_string(&dashboard.view()).unwrap_or_default();
        Some((Ok(SseEvent::default().data(data)), (dashboard, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
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
