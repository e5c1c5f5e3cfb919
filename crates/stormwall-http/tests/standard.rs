//! The standard handler against scripted HTTP services: in-process (a tower service on
//! tokio's paused clock) for the timing rules, and over real loopback sockets with
//! hyper-util's client.

use http::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall::Error;
use stormwall_http::{StandardLayer, StandardOptions};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// What the scripted server does for a path: a list of (status, headers) answers, the
/// last repeated; a delay before answering.
#[derive(Clone, Default)]
struct Script {
    answers: Vec<(u16, Vec<(&'static str, String)>)>,
    delay: Duration,
}

/// A scripted HTTP server as a tower service; counts requests per `authority + path`.
#[derive(Clone, Default)]
struct Server {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    seen_headers: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl Server {
    fn script(&self, path: &str, answers: &[u16], delay: Duration) {
        let script = Script {
            answers: answers.iter().map(|s| (*s, vec![])).collect(),
            delay,
        };
        self.scripts.lock().unwrap().insert(path.into(), script);
    }

    fn script_with(&self, path: &str, answers: Vec<(u16, Vec<(&'static str, String)>)>) {
        let script = Script {
            answers,
            delay: Duration::ZERO,
        };
        self.scripts.lock().unwrap().insert(path.into(), script);
    }

    fn hits(&self, key: &str) -> usize {
        self.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<String>,
        Response = Response<String>,
        Error = std::io::Error,
        Future: Send,
    > + Clone
           + Send
           + Sync
           + 'static {
        let server = self.clone();
        service_fn(move |request: Request<String>| {
            let server = server.clone();
            async move {
                let key = format!(
                    "{}{}",
                    request.uri().authority().map(|a| a.as_str()).unwrap_or(""),
                    request.uri().path()
                );
                let n = {
                    let mut hits = server.hits.lock().unwrap();
                    let n = hits.entry(key.clone()).or_insert(0);
                    *n += 1;
                    *n - 1
                };
                server
                    .seen_headers
                    .lock()
                    .unwrap()
                    .push(request.headers().clone());
                let script = server
                    .scripts
                    .lock()
                    .unwrap()
                    .get(request.uri().path())
                    .cloned()
                    .unwrap_or_default();
                tokio::time::sleep(script.delay).await;
                let (status, headers) = script
                    .answers
                    .get(n.min(script.answers.len().saturating_sub(1)))
                    .cloned()
                    .unwrap_or((200, vec![]));
                let mut response = Response::builder().status(status);
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                Ok::<_, std::io::Error>(response.body(format!("answer {n}")).unwrap())
            }
        })
    }
}

fn fast_options() -> StandardOptions {
    let mut o = StandardOptions::default();
    o.retry.delay = Duration::from_millis(100);
    o.attempt_timeout = Duration::from_millis(500);
    o.total_request_timeout = Duration::from_secs(5);
    o.circuit_breaker.minimum_throughput = 4;
    o.circuit_breaker.failure_ratio = Some(0.5);
    o.circuit_breaker.sampling_duration = Duration::from_secs(10);
    o
}

fn get(uri: &str) -> Request<String> {
    Request::get(uri).body(String::new()).unwrap()
}

/// Sends `request` through `client` once it is ready.
async fn send<S: Service<Request<B>>, B>(
    client: &mut S,
    request: Request<B>,
) -> Result<S::Response, S::Error> {
    client.ready().await?.call(request).await
}

#[tokio::test(start_paused = true)]
async fn a_503_then_200_succeeds_after_two_attempts() {
    let server = Server::default();
    server.script("/flaky", &[503, 200], Duration::ZERO);
    let mut client = StandardLayer::new(fast_options())
        .unwrap()
        .layer(server.service());
    let response = send(&mut client, get("http://a.test/flaky")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.hits("a.test/flaky"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_waits_at_least_that_long() {
    let server = Server::default();
    server.script_with(
        "/limited",
        vec![(429, vec![("retry-after", "1".into())]), (200, vec![])],
    );
    let mut client = StandardLayer::new(fast_options())
        .unwrap()
        .layer(server.service());
    let started = Instant::now();
    let response = send(&mut client, get("http://a.test/limited"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.hits("a.test/limited"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_total_timeout_returns_the_response_at_once() {
    let server = Server::default();
    server.script_with("/later", vec![(503, vec![("retry-after", "60".into())])]);
    let mut client = StandardLayer::new(fast_options())
        .unwrap()
        .layer(server.service());
    let started = Instant::now();
    let response = send(&mut client, get("http://a.test/later")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_millis(10));
    assert_eq!(server.hits("a.test/later"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_retry_after_falls_back_to_backoff() {
    let server = Server::default();
    server.script_with(
        "/odd",
        vec![
            (503, vec![("retry-after", "whenever".into())]),
            (200, vec![]),
        ],
    );
    let mut client = StandardLayer::new(fast_options())
        .unwrap()
        .layer(server.service());
    let response = send(&mut client, get("http://a.test/odd")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.hits("a.test/odd"), 2);
}

#[tokio::test(start_paused = true)]
async fn post_without_a_key_is_sent_once_and_with_a_key_is_retried() {
    let server = Server::default();
    server.script("/pay", &[503], Duration::ZERO);
    let mut options = fast_options();
    // A breaker that stays closed for the five failures this test makes.
    options.circuit_breaker.minimum_throughput = 100;
    let mut client = StandardLayer::new(options).unwrap().layer(server.service());
    let post = Request::post("http://a.test/pay")
        .body("{}".to_string())
        .unwrap();
    let response = send(&mut client, post).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.hits("a.test/pay"), 1);

    let keyed = Request::post("http://a.test/pay")
        .header("Idempotency-Key", "order-7")
        .body("{}".to_string())
        .unwrap();
    send(&mut client, keyed).await.unwrap();
    assert_eq!(
        server.hits("a.test/pay"),
        1 + 4,
        "first attempt + 3 retries"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_responses_time_out_per_attempt_are_retried_and_the_total_is_bounded() {
    let server = Server::default();
    server.script("/slow", &[200], Duration::from_secs(2));
    let mut options = fast_options();
    options.total_request_timeout = Duration::from_millis(1200);
    options.circuit_breaker.sampling_duration = Duration::from_secs(10);
    let mut client = StandardLayer::new(options).unwrap().layer(server.service());
    let started = Instant::now();
    let outcome = send(&mut client, get("http://a.test/slow")).await;
    assert!(matches!(outcome, Err(Error::Timeout(_))), "{outcome:?}");
    assert!(
        started.elapsed() <= Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert!(
        server.hits("a.test/slow") >= 2,
        "retried after the attempt timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_per_authority_and_fails_fast_without_reaching_the_server() {
    let server = Server::default();
    server.script("/down", &[500], Duration::ZERO);
    server.script("/up", &[200], Duration::ZERO);
    let mut options = fast_options();
    options.retry.max_retries = 1;
    let layer = StandardLayer::new(options).unwrap();
    let mut client = layer.clone().layer(server.service());
    for _ in 0..2 {
        let r = send(&mut client, get("http://bad.test/down"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let reached = server.hits("bad.test/down");
    assert_eq!(reached, 4);
    let outcome = send(&mut client, get("http://bad.test/down")).await;
    assert!(
        matches!(outcome, Err(Error::CircuitOpen { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        server.hits("bad.test/down"),
        reached,
        "open: the server saw nothing"
    );
    // Another authority has its own breaker.
    let r = send(&mut client, get("http://good.test/up")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(layer.breaker("http://good.test:80").is_some());
    assert_eq!(
        layer.breaker("http://bad.test:80").unwrap().state(),
        stormwall::circuit_breaker::CircuitState::Open
    );
}

#[tokio::test(start_paused = true)]
async fn the_remaining_budget_is_sent_in_the_deadline_header() {
    let server = Server::default();
    let mut options = fast_options();
    options.deadline_header = Some("x-request-timeout-ms".into());
    let mut client = StandardLayer::new(options).unwrap().layer(server.service());
    send(&mut client, get("http://a.test/x")).await.unwrap();
    let seen = server.seen_headers.lock().unwrap();
    let ms: u64 = seen[0]["x-request-timeout-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The attempt timeout (500 ms) is the tightest deadline.
    assert_eq!(ms, 500);
}

#[test]
fn invalid_options_name_the_field() {
    let options = StandardOptions {
        deadline_header: Some("bad header".into()),
        ..Default::default()
    };
    assert_eq!(
        StandardLayer::new(options).unwrap_err().field,
        "deadline_header"
    );
    let options = StandardOptions {
        attempt_timeout: Duration::from_secs(31),
        ..Default::default()
    };
    assert_eq!(
        StandardLayer::new(options).unwrap_err().field,
        "attempt_timeout"
    );
}

/// A real HTTP server on loopback whose `/flaky` answers `first` once, then 200 "done";
/// its address and how many requests it served.
async fn flaky_server(
    first: StatusCode,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU32>) {
    let hits = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/flaky",
        axum::routing::get(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    (first, "busy")
                } else {
                    (StatusCode::OK, "done")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

#[tokio::test]
async fn over_real_sockets_with_hyper_utils_client() {
    use http_body_util::{BodyExt, Full};
    let (addr, hits) = flaky_server(StatusCode::SERVICE_UNAVAILABLE).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut client = StandardLayer::new(fast_options()).unwrap().layer(client);
    let request = Request::get(format!("http://{addr}/flaky"))
        .body(Full::default())
        .unwrap();
    let response = send(&mut client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn reqwest_middleware_retries_and_reports_the_breaker() {
    let (addr, hits) = flaky_server(StatusCode::BAD_GATEWAY).await;
    let layer = StandardLayer::new(fast_options()).unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(stormwall_http::StandardMiddleware::new(layer.clone()))
        .build();
    let response = client
        .get(format!("http://{addr}/flaky"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "done");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(layer.breaker(&format!("http://{addr}")).is_some());
}

/// A body that cannot be sent twice (a stream).
#[derive(Default)]
struct OneShot;

impl stormwall_http::ReplayBody for OneShot {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_is_sent_once_even_for_get() {
    let server = Server::default();
    server.script("/stream", &[503], Duration::ZERO);
    let inner = server.service();
    let adapt = service_fn(move |request: Request<OneShot>| {
        inner.clone().oneshot(request.map(|_| String::new()))
    });
    let mut client = StandardLayer::new(fast_options()).unwrap().layer(adapt);
    let request = Request::get("http://a.test/stream").body(OneShot).unwrap();
    let response = send(&mut client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.hits("a.test/stream"), 1);
}

#[tokio::test(start_paused = true)]
async fn authorities_beyond_the_limit_share_the_overflow_set() {
    let server = Server::default();
    let layer = StandardLayer::builder(fast_options())
        .max_authorities(1)
        .build()
        .unwrap();
    let mut client = layer.clone().layer(server.service());
    for uri in ["http://a.test/x", "http://b.test/x", "http://c.test/x"] {
        let r = send(&mut client, get(uri)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(layer.authorities(), vec!["http://a.test:80".to_string()]);
    assert_eq!(server.hits("b.test/x") + server.hits("c.test/x"), 2);
}

/// The example file the sidecar and the registry read too: its `payment` pipeline
/// configures the standard handler.
#[test]
fn the_shared_example_file_configures_the_standard_handler() {
    use stormwall::registry::StrategySpec;
    let spec: stormwall::registry::RegistrySpec =
        toml::from_str(include_str!("../../../examples/stormwall.toml")).unwrap();
    let options = StandardOptions::from_pipeline(&spec.pipelines["payment"]).unwrap();
    assert_eq!(options.total_request_timeout, Duration::from_secs(30));
    assert_eq!(options.attempt_timeout, Duration::from_secs(10));
    assert_eq!(options.retry.delay, Duration::from_millis(200));
    assert_eq!(options.retry.max_delay, Some(Duration::from_secs(5)));
    assert_eq!(options.retry.jitter, stormwall::retry::Jitter::Full);
    assert_eq!(options.circuit_breaker.failure_ratio, Some(0.5));
    assert_eq!(options.rate_limiter.queue_limit, 50);
    // What the file leaves out keeps the standard default.
    assert_eq!(options.retry.max_retry_after, Duration::from_secs(60));
    StandardLayer::new(options).unwrap();
    let inventory = StandardOptions::from_pipeline(&spec.pipelines["inventory"]).unwrap();
    assert_eq!(inventory.circuit_breaker.consecutive_failures, Some(5));
    // A strategy the standard handler does not have is refused by its key.
    let mut with_limit = spec.pipelines["payment"].clone();
    with_limit.strategies.insert(
        0,
        StrategySpec::RateLimit(stormwall::rate_limit::RateLimitOptions::per_second(5)),
    );
    assert_eq!(
        StandardOptions::from_pipeline(&with_limit)
            .unwrap_err()
            .field,
        "strategies[0].rate_limit"
    );
    // So is another order: the breaker outside the retry.
    let mut reordered = spec.pipelines["inventory"].clone();
    reordered.strategies.swap(1, 2);
    assert_eq!(
        StandardOptions::from_pipeline(&reordered)
            .unwrap_err()
            .field,
        "strategies[2].retry"
    );
    // One timeout: before the retry the total one, after it the attempt one.
    let total: stormwall::registry::PipelineSpec =
        toml::from_str("strategies = [{ timeout = \"20s\" }, { retry = {} }]").unwrap();
    let o = StandardOptions::from_pipeline(&total).unwrap();
    assert_eq!(o.total_request_timeout, Duration::from_secs(20));
    assert_eq!(o.attempt_timeout, Duration::from_secs(10));
    let attempt: stormwall::registry::PipelineSpec =
        toml::from_str("strategies = [{ retry = {} }, { timeout = \"2s\" }]").unwrap();
    let o = StandardOptions::from_pipeline(&attempt).unwrap();
    assert_eq!(o.total_request_timeout, Duration::from_secs(30));
    assert_eq!(o.attempt_timeout, Duration::from_secs(2));
}
