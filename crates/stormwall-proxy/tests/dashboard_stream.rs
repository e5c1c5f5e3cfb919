//! The dashboard's event stream (`/dashboard/stream`) over a real socket, read as a browser
//! reads it: a breaker's transitions arrive as they happen, in order, each numbered; a
//! stream that reconnects with `Last-Event-ID` gets what it missed, in order, and only that.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
use stormwall::telemetry::EventListener;
use stormwall::Pipeline;
use stormwall_proxy::dashboard::Dashboard;

/// One server-sent event.
#[derive(Debug, Default, Clone)]
struct Message {
    /// `message` unless the event names another type.
    event: String,
    id: Option<String>,
    data: String,
}

impl Message {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A stream read event by event.
struct Stream {
    body: hyper::body::Incoming,
    buffer: String,
}

/// Generous: the machine may be loaded, and nothing here waits for time to pass.
const DEADLINE: Duration = Duration::from_secs(20);

impl Stream {
    async fn open(addr: SocketAddr, last_event_id: Option<u64>) -> Stream {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<Bytes>>();
        let mut request = http::Request::get(format!("http://{addr}/dashboard/stream"))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = client
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event (comments, i.e. keep-alives, skipped).
    async fn next(&mut self) -> Message {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = Message {
                    event: "message".into(),
                    ..Message::default()
                };
                let mut fields = 0;
                for line in block.lines() {
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match name {
                        "event" => message.event = value.into(),
                        "id" => message.id = Some(value.into()),
                        "data" => message.data.push_str(value),
                        _ => continue,
                    }
                    fields += 1;
                }
                if fields > 0 {
                    return message;
                }
                continue;
            }
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("an event within the deadline")
                .expect("the stream stays open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next transition event, views skipped.
    async fn transition(&mut self) -> Message {
        loop {
            let message = self.next().await;
            if message.event == "transition" {
                return message;
            }
            assert_eq!(message.event, "message", "{message:?}");
        }
    }
}

/// A dashboard served on a free loopback port, and a breaker whose transitions it records
/// (as route `payment`), driven by hand.
async fn serve() -> (SocketAddr, Arc<Dashboard>, CircuitBreaker) {
    let dashboard = Dashboard::new();
    let breaker = CircuitBreaker::new(CircuitBreakerOptions::new()).unwrap();
    // Building the pipeline attaches the dashboard to the breaker's events, for good.
    Pipeline::builder()
        .name("payment")
        .listener(Arc::clone(&dashboard) as Arc<dyn EventListener>)
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = dashboard.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, dashboard, breaker)
}

fn assert_transition(message: &Message, id: u64, from: &str, to: &str) {
    assert_eq!(message.event, "transition");
    assert_eq!(
        message.id.as_deref(),
        Some(id.to_string().as_str()),
        "{message:?}"
    );
    let t = message.json();
    assert_eq!(
        (
            t["id"].as_u64(),
            t["route"].as_str(),
            t["from"].as_str(),
            t["to"].as_str()
        ),
        (Some(id), Some("payment"), Some(from), Some(to)),
        "{message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transition_arrives_as_it_happens_in_order_and_numbered() {
    let (addr, dashboard, breaker) = serve().await;
    let mut stream = Stream::open(addr, None).await;
    // First a view, carrying the id of the last transition so far (none) and a reconnect delay.
    let first = stream.next().await;
    assert_eq!(
        (first.event.as_str(), first.id.as_deref()),
        ("message", Some("0"))
    );
    assert!(first.json()["routes"].is_array(), "{first:?}");
    assert_eq!(dashboard.stream_clients(), 1);
    tokio::time::timeout(DEADLINE, dashboard.wait_for_stream_client())
        .await
        .expect("a stream is open");

    breaker.isolate();
    assert_transition(&stream.transition().await, 1, "closed", "isolated");
    breaker.close();
    assert_transition(&stream.transition().await, 2, "isolated", "closed");
    // Views keep coming, and show the transitions in order.
    let view = loop {
        let message = stream.next().await;
        if message.event == "message" {
            break message.json();
        }
    };
    let ids: Vec<_> = view["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(view["routes"][0]["breaker"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reconnecting_with_last_event_id_gets_what_it_missed_in_order_and_only_that() {
    let (addr, _dashboard, breaker) = serve().await;
    let mut stream = Stream::open(addr, None).await;
    stream.next().await;
    breaker.isolate();
    assert_transition(&stream.transition().await, 1, "closed", "isolated");
    drop(stream);
    // While it is away: three more.
    breaker.close();
    breaker.isolate();
    breaker.close();
    let mut stream = Stream::open(addr, Some(1)).await;
    assert_transition(&stream.next().await, 2, "isolated", "closed");
    assert_transition(&stream.next().await, 3, "closed", "isolated");
    assert_transition(&stream.next().await, 4, "isolated", "closed");
    // Then the view, numbered by the last transition in it.
    let view = stream.next().await;
    assert_eq!(
        (view.event.as_str(), view.id.as_deref()),
        ("message", Some("4"))
    );
    // And live again from there.
    breaker.isolate();
    assert_transition(&stream.transition().await, 5, "closed", "isolated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_gets_the_history_in_its_first_view_not_as_live_transitions() {
    let (addr, _dashboard, breaker) = serve().await;
    breaker.isolate();
    breaker.close();
    let mut stream = Stream::open(addr, None).await;
    let first = stream.next().await;
    assert_eq!(
        (first.event.as_str(), first.id.as_deref()),
        ("message", Some("2"))
    );
    assert_eq!(first.json()["transitions"].as_array().unwrap().len(), 2);
    // The next transition event is a new one.
    breaker.isolate();
    assert_transition(&stream.transition().await, 3, "closed", "isolated");
    // An id from another dashboard (beyond what this one recorded) starts afresh.
    let mut stream = Stream::open(addr, Some(99)).await;
    let first = stream.next().await;
    assert_eq!(
        (first.event.as_str(), first.id.as_deref()),
        ("message", Some("3"))
    );
}
