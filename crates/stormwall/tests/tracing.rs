//! `TracingListener` logs each event at the level its documentation gives, and every
//! execution and attempt runs in its own span whenever a subscriber wants spans — with a
//! listener attached or not. A subscriber that keeps everything it is given records what
//! was logged.
#![cfg(feature = "tracing")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall::bulkhead::BulkheadOptions;
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::fallback::FallbackOptions;
use stormwall::rate_limit::RateLimitOptions;
use stormwall::retry::RetryOptions;
use stormwall::telemetry::TracingListener;
use stormwall::Pipeline;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// What the subscriber saw: events as (level, message, span they were in), spans by name.
#[derive(Default)]
struct Seen {
    events: Vec<(Level, String, Option<&'static str>)>,
    spans: HashMap<&'static str, usize>,
    /// Span ids to names, and the stack of entered spans.
    names: HashMap<u64, &'static str>,
    entered: Vec<u64>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Seen>>, Arc<AtomicU64>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.1.fetch_add(1, Ordering::Relaxed) + 1;
        let mut seen = self.0.lock().unwrap();
        let name = span.metadata().name();
        *seen.spans.entry(name).or_default() += 1;
        seen.names.insert(id, name);
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let mut seen = self.0.lock().unwrap();
        let inside = seen.entered.last().map(|id| seen.names[id]);
        seen.events
            .push((*event.metadata().level(), message.0, inside));
    }
    fn enter(&self, span: &Id) {
        self.0.lock().unwrap().entered.push(span.into_u64());
    }
    fn exit(&self, _: &Id) {
        self.0.lock().unwrap().entered.pop();
    }
}

impl Capture {
    fn level_of(&self, message: &str) -> Vec<Level> {
        let seen = self.0.lock().unwrap();
        let levels: Vec<Level> = seen
            .events
            .iter()
            .filter(|e| e.1 == message)
            .map(|e| e.0)
            .collect();
        assert!(!levels.is_empty(), "no {message:?} in {:?}", seen.events);
        levels
    }
}

/// Runs `body` on a paused current-thread runtime with `capture` as the subscriber.
fn with_capture(capture: &Capture, body: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    tracing::subscriber::with_default(capture.clone(), || rt.block_on(body));
}

#[test]
fn each_event_is_logged_at_its_documented_level() {
    let capture = Capture::default();
    with_capture(&capture, async {
        let breaker = Pipeline::builder()
            .name("payments")
            .listener(Arc::new(TracingListener))
            .fallback(FallbackOptions::value(0u32))
            .timeout(Duration::from_secs(5))
            .retry(RetryOptions::constant(Duration::from_millis(10)).max_retries(1))
            .circuit_breaker(CircuitBreakerOptions::consecutive(2))
            .build()
            .unwrap();
        // Two failures: a retry (INFO), the breaker opens (WARN), the fallback answers (INFO).
        let _ = breaker.execute(|_| async { Err::<u32, _>("down") }).await;
        // Open: rejected (DEBUG), answered by the fallback.
        let _ = breaker.execute(|_| async { Ok::<u32, &str>(1) }).await;
        // A timeout (INFO).
        let slow = Pipeline::builder()
            .listener(Arc::new(TracingListener))
            .timeout(Duration::from_millis(10))
            .build()
            .unwrap();
        let _ = slow
            .execute(|_| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<u32, &str>(1)
            })
            .await;
        // A full bulkhead and a rate limit (DEBUG each).
        let limited = Pipeline::builder()
            .listener(Arc::new(TracingListener))
            .rate_limit(RateLimitOptions::per_second(1))
            .build()
            .unwrap();
        for _ in 0..2 {
            let _ = limited.execute(|_| async { Ok::<u32, &str>(1) }).await;
        }
        let bulkhead = Pipeline::builder()
            .listener(Arc::new(TracingListener))
            .bulkhead(BulkheadOptions::new(1))
            .build()
            .unwrap();
        // Holds the only slot while pending once.
        let holder = bulkhead.execute(|_| async {
            tokio::task::yield_now().await;
            Ok::<u32, &str>(1)
        });
        let mut holder = std::pin::pin!(holder);
        assert!(futures_poll_once(holder.as_mut()).await.is_none());
        let _ = bulkhead.execute(|_| async { Ok::<u32, &str>(2) }).await;
        let _ = holder.await;
    });
    assert_eq!(
        capture.level_of("circuit breaker transition"),
        [Level::WARN]
    );
    assert_eq!(capture.level_of("retrying"), [Level::INFO]);
    assert_eq!(capture.level_of("timed out"), [Level::INFO]);
    assert!(capture
        .level_of("fallback used")
        .iter()
        .all(|l| *l == Level::INFO));
    assert_eq!(
        capture.level_of("circuit breaker rejected a call"),
        [Level::DEBUG]
    );
    assert_eq!(
        capture.level_of("rate limiter rejected a call"),
        [Level::DEBUG]
    );
    assert_eq!(capture.level_of("bulkhead rejected a call"), [Level::DEBUG]);
    assert!(capture
        .level_of("execution completed")
        .iter()
        .all(|l| *l == Level::DEBUG));
    assert!(capture
        .level_of("attempt completed")
        .iter()
        .all(|l| *l == Level::TRACE));
    // Logged inside the execution's span.
    let seen = capture.0.lock().unwrap();
    let transition = seen
        .events
        .iter()
        .find(|e| e.1 == "circuit breaker transition")
        .unwrap();
    assert!(transition.2.is_some(), "{transition:?} outside any span");
}

/// Polls `fut` once: `Some(output)` if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut fut: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[test]
fn every_execution_and_attempt_has_a_span_without_a_listener() {
    let capture = Capture::default();
    with_capture(&capture, async {
        let pipeline = Pipeline::builder()
            .retry(RetryOptions::constant(Duration::from_millis(1)).max_retries(2))
            .build()
            .unwrap();
        for _ in 0..3 {
            let _ = pipeline
                .execute(|ctx| async move {
                    tracing::info!("inside the operation");
                    if ctx.attempt() < 2 {
                        Err("flaky")
                    } else {
                        Ok(())
                    }
                })
                .await;
        }
    });
    let seen = capture.0.lock().unwrap();
    assert_eq!(seen.spans.get("stormwall.execute"), Some(&3));
    assert_eq!(seen.spans.get("stormwall.attempt"), Some(&9));
    // The operation's own logs land in its attempt's span.
    assert!(seen
        .events
        .iter()
        .filter(|e| e.1 == "inside the operation")
        .all(|e| e.2 == Some("stormwall.attempt")));
}
