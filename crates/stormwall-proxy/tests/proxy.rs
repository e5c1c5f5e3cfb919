//! The sidecar against real upstream servers on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stormwall_proxy::{admin_router, Config, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts requests per path; `/flaky` fails once, `/down` always, `/slow` takes 300 ms,
/// `/slow-once` takes 1 s the first time (answering "slow"), `/echo` answers the request
/// headers.
#[derive(Default)]
struct Upstream {
    hits: Mutex<HashMap<String, u32>>,
}

async fn upstream() -> (SocketAddr, Arc<Upstream>) {
    use axum::extract::{Request, State};
    use axum::http::StatusCode;
    let state = Arc::new(Upstream::default());
    async fn any(State(u): State<Arc<Upstream>>, request: Request) -> (StatusCode, String) {
        let path = request.uri().path().to_owned();
        let n = {
            let mut hits = u.hits.lock().unwrap();
            let n = hits.entry(path.clone()).or_insert(0);
            *n += 1;
            *n
        };
        match path.as_str() {
            p if p.ends_with("/flaky") && n == 1 => {
                (StatusCode::SERVICE_UNAVAILABLE, "busy".into())
            }
            p if p.ends_with("/down") => (StatusCode::INTERNAL_SERVER_ERROR, "boom".into()),
            p if p.ends_with("/slow-once") && n == 1 => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                (StatusCode::OK, "slow".into())
            }
            p if p.ends_with("/slow") => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                (StatusCode::OK, "slow".into())
            }
            p if p.ends_with("/echo") => {
                let headers: Vec<String> = request
                    .headers()
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")))
                    .collect();
                (StatusCode::OK, headers.join("\n"))
            }
            _ => (StatusCode::OK, format!("ok {path}")),
        }
    }
    let app = axum::Router::new().fallback(any).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, state)
}

impl Upstream {
    fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

struct Running {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    admin: SocketAddr,
    file: std::path::PathBuf,
}

async fn start(config: &str) -> Running {
    let file = std::env::temp_dir().join(format!(
        "stormwall-proxy-{}-{}.toml",
        std::process::id(),
        fastrand_port()
    ));
    std::fs::write(&file, config).unwrap();
    let proxy = Proxy::new(Config::parse(config).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy.clone().serve(listener));
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let reload = {
        let (proxy, file) = (proxy.clone(), file.clone());
        Arc::new(move || -> Result<(), String> {
            proxy
                .reload(&std::fs::read_to_string(&file).unwrap())
                .map_err(|e| e.to_string())
        })
    };
    let router = admin_router(proxy.clone(), reload);
    tokio::spawn(async move { axum::serve(admin, router).await });
    Running {
        proxy,
        addr,
        admin: admin_addr,
        file,
    }
}

fn fastrand_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; status, headers (lower-case names) and body.
async fn send(addr: SocketAddr, head: &str, body: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nHost: test.local\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A route with no strategies: what the server-wide bounds alone do.
fn plain(upstream: SocketAddr) -> String {
    format!("[[route]]\nname = \"plain\"\nmatch = {{ path_prefix = \"/plain\" }}\nupstream = \"http://{upstream}\"\n")
}

fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[route]]
name = "payment"
match = {{ path_prefix = "/payment" }}
upstream = "http://{upstream}"
critical = true
timeout = {{ total = "2s", attempt = "100ms" }}
retry = {{ max_retries = 3, backoff = "constant", delay = "10ms", jitter = "none" }}
circuit_breaker = {{ consecutive_failures = 3, break_duration = "30s" }}
fallback = {{ status = 202, body = '{{"status":"queued"}}' }}

[[route]]
name = "catalog"
match = {{ path_prefix = "/catalog" }}
upstream = "http://{upstream}"
client_key = "X-Tenant-Id"
bulkhead = {{ max_concurrency = 1, queue = 0 }}
rate_limit = {{ permits = 2, per = "10s" }}
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_retries_and_forwards_headers() {
    let (up, state) = upstream().await;
    let proxy = start(&config(up, "")).await;
    let (status, _, body) = send(proxy.addr, "GET /payment/flaky HTTP/1.1", "").await;
    assert_eq!((status, body.as_str()), (200, "ok /payment/flaky"));
    assert_eq!(state.hits("/payment/flaky"), 2, "retried once");

    let (status, _, body) = send(
        proxy.addr,
        "GET /catalog/echo HTTP/1.1\r\nConnection: close, X-Secret\r\nX-Secret: hop\r\nX-Forwarded-For: 10.0.0.1",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(
        !body.contains("x-secret"),
        "headers named in Connection are not forwarded: {body}"
    );

    let (status, _, _) = send(proxy.addr, "GET /nowhere HTTP/1.1", "").await;
    assert_eq!(status, 404);
    let _ = proxy.proxy;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_without_a_key_is_sent_once_and_the_breaker_then_serves_the_fallback_fast() {
    let (up, state) = upstream().await;
    let proxy = start(&config(up, "")).await;
    let (status, _, _) = send(proxy.addr, "POST /payment/down HTTP/1.1", "{}").await;
    // Gave up after one attempt: the fallback.
    assert_eq!(status, 202);
    assert_eq!(
        state.hits("/payment/down"),
        1,
        "POST without Idempotency-Key: no retry"
    );
    let (status, head, body) = send(proxy.addr, "GET /payment/down HTTP/1.1", "").await;
    assert_eq!((status, body.as_str()), (202, r#"{"status":"queued"}"#));
    assert!(head.contains("x-stormwall-fallback"), "{head}");
    let reached = state.hits("/payment/down");
    assert_eq!(reached, 3, "the breaker opened after 3 failures");
    // Open: fast, and the upstream sees nothing.
    let started = Instant::now();
    let (status, head, _) = send(proxy.addr, "GET /payment/down HTTP/1.1", "").await;
    assert_eq!(status, 202);
    assert!(head.contains("circuit_open"), "{head}");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(state.hits("/payment/down"), reached);

    // Readiness fails while the critical route's breaker is open.
    let (status, _, body) = send(proxy.admin, "GET /health/ready HTTP/1.1", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("route:payment"), "{body}");
    let (status, _, _) = send(proxy.admin, "GET /health/live HTTP/1.1", "").await;
    assert_eq!(status, 200);
    // Manual close from the admin API: ready again.
    let (status, _, _) = send(proxy.admin, "POST /admin/routes/payment/close HTTP/1.1", "").await;
    assert_eq!(status, 200);
    let (status, _, _) = send(proxy.admin, "GET /health/ready HTTP/1.1", "").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkhead_and_per_tenant_rate_limit_reject_with_their_status() {
    let (up, _) = upstream().await;
    let proxy = start(&config(up, "")).await;
    // One slot: a second concurrent request is shed.
    let slow = tokio::spawn(send(
        proxy.addr,
        "GET /catalog/slow HTTP/1.1\r\nX-Tenant-Id: a",
        "",
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = send(proxy.addr, "GET /catalog/x HTTP/1.1\r\nX-Tenant-Id: b", "").await;
    assert_eq!(status, 503);
    assert_eq!(slow.await.unwrap().0, 200);
    // Tenant a has used 1 of its 2 permits; tenant c has its own.
    assert_eq!(
        send(proxy.addr, "GET /catalog/x HTTP/1.1\r\nX-Tenant-Id: a", "")
            .await
            .0,
        200
    );
    let (status, head, _) = send(proxy.addr, "GET /catalog/x HTTP/1.1\r\nX-Tenant-Id: a", "").await;
    assert_eq!(status, 429);
    assert!(head.contains("retry-after:"), "{head}");
    assert_eq!(
        send(proxy.addr, "GET /catalog/x HTTP/1.1\r\nX-Tenant-Id: c", "")
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic_sent() {
    let (up, _) = upstream().await;
    let proxy = start(&config(up, "")).await;
    for _ in 0..3 {
        send(proxy.addr, "GET /payment/ok HTTP/1.1", "").await;
    }
    let (status, _, body) = send(proxy.admin, "GET /metrics HTTP/1.1", "").await;
    assert_eq!(status, 200);
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("stormwall_requests_total")
                && l.contains("route=\"payment\"")
                && l.contains("class=\"2xx\"")
        })
        .unwrap_or_else(|| panic!("{body}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    // Other tests in this process share the recorder; this route's 2xx count is at least ours.
    assert!(count >= 3.0, "{line}");
    // The request duration histogram counted them too, each in a bucket (`+Inf` holds all).
    let count_of = |prefix: &str| -> f64 {
        let line = body
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains("route=\"payment\""))
            .unwrap_or_else(|| panic!("no {prefix} in {body}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let histogram_count = count_of("stormwall_request_duration_seconds_count");
    assert!(histogram_count >= 3.0, "{body}");
    assert!(
        body.lines().any(
            |l| l.starts_with("stormwall_request_duration_seconds_bucket{")
                && l.contains("route=\"payment\"")
                && l.contains("le=\"+Inf\"")
                && l.ends_with(&format!(" {histogram_count}"))
        ),
        "{body}"
    );
    assert!(body.contains("stormwall_circuit_state"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_good_file_refuses_a_bad_one_and_admin_needs_the_token() {
    let (up, _) = upstream().await;
    let base = config(up, "");
    let with_token = base.replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nadmin_token = \"s3cret\"",
    );
    let proxy = start(&with_token).await;
    let (status, _, _) = send(proxy.admin, "POST /admin/reload HTTP/1.1", "").await;
    assert_eq!(status, 401);
    assert_eq!(
        send(proxy.admin, "GET /admin/circuits HTTP/1.1", "")
            .await
            .0,
        401
    );

    // A bad file: refused, naming the key; the old routes keep serving.
    std::fs::write(
        &proxy.file,
        with_token.replace("max_retries = 3", "max_retries = \"x\""),
    )
    .unwrap();
    let (status, _, body) = send(
        proxy.admin,
        "POST /admin/reload HTTP/1.1\r\nAuthorization: Bearer s3cret",
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("line"), "{body}");
    assert!(body.contains("route[payment].retry.max_retries"), "{body}");
    // The scheme in any case (RFC 9110 §11.1); a wrong token of the same length refused.
    for (authorization, expected) in [
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("Bearer s3creT", 401),
        ("Bearer s3cret2", 401),
        ("Basic s3cret", 401),
    ] {
        let head = format!("GET /admin/circuits HTTP/1.1\r\nAuthorization: {authorization}");
        assert_eq!(
            send(proxy.admin, &head, "").await.0,
            expected,
            "{authorization}"
        );
    }
    assert_eq!(
        send(proxy.addr, "GET /payment/ok HTTP/1.1", "").await.0,
        200
    );

    // A good file with a new route.
    let extra = format!("[[route]]\nname = \"search\"\nmatch = {{ path_prefix = \"/search\" }}\nupstream = \"http://{up}\"\n");
    std::fs::write(&proxy.file, format!("{with_token}\n{extra}")).unwrap();
    let (status, _, body) = send(
        proxy.admin,
        "POST /admin/reload HTTP/1.1\r\nAuthorization: Bearer s3cret",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = send(proxy.addr, "GET /search/q HTTP/1.1", "").await;
    assert_eq!((status, body.as_str()), (200, "ok /search/q"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413() {
    let (up, _) = upstream().await;
    let small = config(up, "").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_body_bytes = 10",
    );
    let proxy = start(&small).await;
    let (status, _, _) = send(
        proxy.addr,
        "POST /catalog/x HTTP/1.1",
        "this body is longer than ten bytes",
    )
    .await;
    assert_eq!(status, 413);
    let _ = AtomicU32::new(0).load(Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_limit_gets_431_and_a_small_limit_is_a_config_error() {
    let (up, _) = upstream().await;
    let small = config(up, &plain(up)).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_header_bytes = 8192",
    );
    let proxy = start(&small).await;
    let big = format!("GET /plain/x HTTP/1.1\r\nX-Big: {}", "a".repeat(10_000));
    let (status, _, _) = send(proxy.addr, &big, "").await;
    assert_eq!(status, 431);
    let (status, _, _) = send(proxy.addr, "GET /plain/x HTTP/1.1", "").await;
    assert_eq!(status, 200, "normal heads still pass");
    let tiny = config(up, &plain(up)).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_header_bytes = 100",
    );
    let err = Config::parse(&tiny).unwrap_err().to_string();
    assert!(
        err.contains("server.max_header_bytes") && err.contains("100"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_in_flight_bound_requests_get_503_with_retry_after() {
    let (up, state) = upstream().await;
    let bounded = config(up, &plain(up)).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_in_flight = 2",
    );
    let proxy = start(&bounded).await;
    // Two slow requests hold both slots; the third is turned away at once.
    let slow = || send(proxy.addr, "GET /plain/slow HTTP/1.1", "");
    let (a, b, c) = tokio::join!(slow(), slow(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let answer = send(proxy.addr, "GET /plain/other HTTP/1.1", "").await;
        (answer, started.elapsed())
    });
    assert_eq!((a.0, b.0), (200, 200));
    let ((status, head, _), took) = c;
    assert_eq!(status, 503);
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(took < Duration::from_millis(150), "rejected fast: {took:?}");
    assert_eq!(state.hits("/plain/other"), 0, "the upstream never saw it");
    // Once they finish, the proxy serves again.
    let (status, _, _) = send(proxy.addr, "GET /plain/other HTTP/1.1", "").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_the_live_dashboard_of_the_routes() {
    let (up, _) = upstream().await;
    let proxy = start(&config(up, "")).await;
    send(proxy.addr, "GET /payment/ok HTTP/1.1", "").await;
    let (status, _, page) = send(proxy.admin, "GET /dashboard HTTP/1.1", "").await;
    assert_eq!(status, 200);
    assert!(page.contains("EventSource('/dashboard/stream')"));
    let (status, _, state) = send(proxy.admin, "GET /dashboard/state HTTP/1.1", "").await;
    assert_eq!(status, 200);
    assert!(state.contains("\"name\":\"payment\""), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_turns_readiness_off_and_waits_for_requests_in_flight() {
    let (up, _) = upstream().await;
    let proxy = start(&config(up, "")).await;
    let slow = tokio::spawn(send(proxy.addr, "GET /catalog/slow HTTP/1.1", ""));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(proxy.proxy.in_flight(), 1);
    proxy.proxy.start_draining();
    let (status, _, _) = send(proxy.admin, "GET /health/ready HTTP/1.1", "").await;
    assert_eq!(status, 503, "not ready while draining");
    assert!(proxy.proxy.drained(Duration::from_secs(2)).await);
    assert_eq!(slow.await.unwrap().0, 200, "the request in flight finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_h2c_with_prior_knowledge() {
    use http_body_util::{BodyExt, Empty};
    let (up, _) = upstream().await;
    let proxy = start(&config(up, "")).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<bytes::Bytes>>();
    let request = http::Request::get(format!("http://{}/payment/h2", proxy.addr))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok /payment/h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_upstream_check_turns_readiness_off_for_a_critical_route() {
    let (up, _) = upstream().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[route]]
name = "alive"
match = {{ path_prefix = "/a" }}
upstream = "http://{up}"
health_check = {{ path = "/health", interval = "50ms" }}

[[route]]
name = "gone"
match = {{ path_prefix = "/g" }}
upstream = "http://{dead}"
critical = true
health_check = {{ path = "/health", interval = "50ms", timeout = "100ms" }}
"#
    );
    let proxy = start(&text).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = send(proxy.admin, "GET /health/ready HTTP/1.1", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("upstream:gone") && body.contains("health check failed"),
        "{body}"
    );
    assert!(
        body.contains(r#""upstream:alive":{"status":"Healthy""#),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_uses_only_metrics_the_proxy_exports() {
    let (up, _) = upstream().await;
    let proxy = start(&config(up, "")).await;
    send(proxy.addr, "GET /payment/flaky HTTP/1.1", "").await; // a retry event too
    send(proxy.addr, "GET /payment/ok HTTP/1.1", "").await;
    let (_, _, metrics) = send(proxy.admin, "GET /metrics HTTP/1.1", "").await;
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/stormwall.json"
    ))
    .unwrap();
    // Every name as the dashboard writes it: its histogram panels read `_bucket` series,
    // which exist only when the exporter has buckets.
    let mut names: Vec<String> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("stormwall_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 5, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("_bucket")), "{names:?}");
    for name in names {
        let exported = metrics.lines().any(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        });
        assert!(exported, "{name} is not exported:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_upstream_down_keyed_posts_get_202_and_reach_it_once_when_it_returns() {
    store_and_forward("").await;
}

/// The same with a breaker that the failing requests open, and no request after them: the
/// replay worker itself must move the elapsed break to half-open and probe (a worker that
/// only looked at the breaker's state waited for ever, or dead-lettered every replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_probe_a_breaker_that_live_traffic_opened() {
    store_and_forward(
        "circuit_breaker = { consecutive_failures = 3, break_duration = \"200ms\" }\n",
    )
    .await;
}

/// A path for a new defer database (none there yet).
fn fresh_database(name: &str, port: u16) -> std::path::PathBuf {
    let database =
        std::env::temp_dir().join(format!("stormwall-{name}-{}-{port}.db", std::process::id()));
    let _ = std::fs::remove_file(&database);
    database
}

/// A proxy with one route, `orders`, to `port` that defers keyed requests into `database`.
fn deferring_route(port: u16, database: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[route]]
name = "orders"
match = {{ path_prefix = "/orders" }}
upstream = "http://127.0.0.1:{port}"
timeout = {{ total = "1s", attempt = "200ms" }}
defer = {{ database = "{}" }}
{extra}"#,
        database.display()
    )
}

async fn store_and_forward(extra: &str) {
    // A port with nothing listening yet: the upstream starts there later.
    let port = fastrand_port();
    let database = fresh_database("defer", port);
    let proxy = start(&deferring_route(port, &database, extra)).await;
    for i in 0..20 {
        let (status, _, body) = send(
            proxy.addr,
            &format!("POST /orders HTTP/1.1\r\nIdempotency-Key: order-{i}\r\nContent-Type: application/json"),
            &format!("{{\"order\":{i}}}"),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert!(body.contains("\"status\":\"accepted\""), "{body}");
    }
    let (status, _, body) = send(
        proxy.addr,
        "POST /orders HTTP/1.1\r\nIdempotency-Key: order-3",
        "{\"order\":3}",
    )
    .await;
    assert_eq!(status, 202);
    assert!(body.contains("\"duplicate\":true"), "{body}");
    // Credentials are never written to the database: such a request is refused, saying so.
    for credential in ["Authorization: Bearer abc", "Cookie: session=abc"] {
        let (status, _, body) = send(
            proxy.addr,
            &format!("POST /orders HTTP/1.1\r\nIdempotency-Key: secret-order\r\n{credential}"),
            "{\"order\":\"secret\"}",
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("credentials are never stored"), "{body}");
    }
    // The database and its write-ahead log.
    let mut stored = std::fs::read(&database).unwrap_or_default();
    stored.extend(std::fs::read(format!("{}-wal", database.display())).unwrap_or_default());
    assert!(
        String::from_utf8_lossy(&stored).contains("order-7"),
        "the check reads the store"
    );
    let text = String::from_utf8_lossy(&stored);
    assert!(
        !text.contains("secret-order") && !text.contains("abc"),
        "credentials on disk"
    );
    let (status, _, _) = send(proxy.addr, "POST /orders HTTP/1.1", "{}").await;
    // 502 (upstream unreachable), or 503 once the breaker is open.
    assert!(
        matches!(status, 502 | 503),
        "without a key nothing is kept: {status}"
    );

    // The upstream comes back: every deferred order reaches it, once.
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let record = record.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                record.lock().unwrap().push((key, body));
                "charged"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let started = Instant::now();
    while seen.lock().unwrap().len() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "replayed: {}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    let keys: std::collections::HashSet<_> = seen.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys.len(), 20);
    assert_eq!(seen.len(), 20, "each once");
    assert!(
        seen.iter()
            .any(|(k, b)| k == "order-7" && b == "{\"order\":7}"),
        "bodies kept"
    );
}

/// A replay to an upstream that accepts and never answers is bounded by the route's
/// attempt timeout (200 ms): the next replay, once the upstream answers, delivers. Before,
/// the first replay waited for ever and nothing after it was replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_a_silent_upstream_times_out_and_the_next_one_delivers() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts and holds every connection, answering nothing.
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    let accepting = tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    let database = fresh_database("silent", port);
    let proxy = start(&deferring_route(port, &database, "")).await;
    let (status, _, body) = send(
        proxy.addr,
        "POST /orders HTTP/1.1\r\nIdempotency-Key: order-1",
        "{\"order\":1}",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // The replay worker reaches the silent upstream too (the live attempts' connections,
    // then a replay's).
    let live = held.lock().unwrap().len();
    let started = Instant::now();
    while held.lock().unwrap().len() <= live {
        assert!(started.elapsed() < Duration::from_secs(20), "no replay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The upstream answers now (same port; the silent connections stay open).
    accepting.abort();
    let _ = accepting.await;
    let seen = Arc::new(AtomicU32::new(0));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post(move || {
            record.fetch_add(1, Ordering::SeqCst);
            async { "charged" }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let started = Instant::now();
    while seen.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replay stuck on the silent connection never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_routes_breaker_through_redis() {
    let redis = stormwall_testkit::RedisServer::start();
    let (up, state) = upstream().await;
    let shared = format!(
        "[[route]]\nname = \"shared\"\nmatch = {{ path_prefix = \"/shared\" }}\nupstream = \"http://{up}\"\n\
         circuit_breaker = {{ consecutive_failures = 3, break_duration = \"30s\", redis = \"{}\" }}\n",
        redis.url()
    );
    // Two sidecar replicas with the same configuration.
    let (a, b) = (
        start(&config(up, &shared)).await,
        start(&config(up, &shared)).await,
    );
    let state_of = |running: &Running| {
        running
            .proxy
            .routes()
            .iter()
            .find(|r| r.name() == "shared")
            .and_then(|r| r.circuit_state())
    };
    // Both join Redis (in the background: a reload must not wait for it).
    let joined_redis = |running: &Running| {
        running
            .proxy
            .routes()
            .iter()
            .any(|r| r.name() == "shared" && r.circuit_shared())
    };
    let joined = Instant::now();
    while !(joined_redis(&a) && joined_redis(&b)) {
        assert!(
            joined.elapsed() < Duration::from_secs(5),
            "both replicas join Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Replica a sees the upstream fail three times: its breaker opens...
    for _ in 0..3 {
        let (status, _, _) = send(a.addr, "GET /shared/down HTTP/1.1", "").await;
        assert_eq!(status, 500);
    }
    assert_eq!(state.hits("/shared/down"), 3);
    // ...and so does replica b's, which has not sent a single request.
    let opened = Instant::now();
    while state_of(&b) != Some(stormwall::circuit_breaker::CircuitState::Open) {
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "replica b learns of the open circuit: b {:?}, a {:?}",
            state_of(&b),
            state_of(&a)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, head, _) = send(b.addr, "GET /shared/down HTTP/1.1", "").await;
    assert_eq!(status, 503, "{head}");
    let (_, _, circuits) = send(b.admin, "GET /admin/circuits HTTP/1.1", "").await;
    assert!(circuits.contains(r#""shared":true"#), "{circuits}");
    assert_eq!(
        state.hits("/shared/down"),
        3,
        "b failed fast, the upstream saw nothing"
    );
    // A bad URL names the key.
    let bad = config(up, &shared.replace(&redis.url(), "http://not-redis"));
    let err = Config::parse(&bad)
        .and_then(Proxy::new)
        .unwrap_err()
        .to_string();
    assert!(err.contains("route[shared].circuit_breaker.redis"), "{err}");
}

/// Replayed requests are deleted once older than `defer.keep_done` (24 h by default), and
/// their key is then free again; younger ones stay and still deduplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_requests_are_deleted_after_keep_done() {
    let port = fastrand_port();
    let database = fresh_database("keep", port);
    // Two requests replayed earlier: one deferred two days ago, one an hour ago.
    {
        let queue = stormwall_durable::DurableQueue::open(&database, Default::default()).unwrap();
        for key in ["old", "recent"] {
            queue
                .enqueue("orders", b"x".to_vec(), Some(key))
                .await
                .unwrap();
        }
        for job in queue
            .lease("orders", "earlier", 10, Duration::from_secs(30))
            .await
            .unwrap()
        {
            queue.ack(&job).await.unwrap();
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let db = rusqlite::Connection::open(&database).unwrap();
    for (key, age_ms) in [("old", 48 * 3_600_000), ("recent", 3_600_000)] {
        db.execute(
            "UPDATE stormwall_jobs SET created_at = ?1 WHERE idempotency_key = ?2",
            rusqlite::params![now_ms - age_ms, key],
        )
        .unwrap();
    }
    let keys = |db: &rusqlite::Connection| -> Vec<String> {
        let mut s = db
            .prepare("SELECT idempotency_key FROM stormwall_jobs ORDER BY id")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(keys(&db), ["old", "recent"]);

    let proxy = start(&deferring_route(port, &database, "")).await;
    // The replay worker purges as it starts.
    let started = std::time::Instant::now();
    while keys(&db) != ["recent"] {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not purged: {:?}",
            keys(&db)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // "old" is free again; "recent" still deduplicates (the upstream is down: both defer).
    for (key, duplicate) in [("old", false), ("recent", true)] {
        let (status, _, body) = send(
            proxy.addr,
            &format!("POST /orders HTTP/1.1\r\nIdempotency-Key: {key}"),
            "{}",
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert!(
            body.contains(&format!("\"duplicate\":{duplicate}")),
            "{key}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_get_is_hedged_and_the_hedge_wins_while_a_post_is_never_hedged() {
    let (up, state) = upstream().await;
    let hedged = format!(
        "[[route]]\nname = \"hedged\"\nmatch = {{ path_prefix = \"/hedged\" }}\nupstream = \"http://{up}\"\nhedging = {{ delay = \"50ms\" }}\n"
    );
    let proxy = start(&config(up, &hedged)).await;
    // The first attempt takes 1 s; the hedge started after 50 ms answers first.
    let (status, _, body) = send(proxy.addr, "GET /hedged/get/slow-once HTTP/1.1", "").await;
    assert_eq!((status, body.as_str()), (200, "ok /hedged/get/slow-once"));
    assert_eq!(state.hits("/hedged/get/slow-once"), 2);
    // Not idempotent: one attempt, however slow.
    let (status, _, body) = send(proxy.addr, "POST /hedged/post/slow-once HTTP/1.1", "{}").await;
    assert_eq!((status, body.as_str()), (200, "slow"));
    assert_eq!(state.hits("/hedged/post/slow-once"), 1);
    let (_, _, metrics) = send(proxy.admin, "GET /metrics HTTP/1.1", "").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("stormwall_strategy_events_total")
                && l.contains("pipeline=\"hedged\"")
                && l.contains("event=\"hedge_started\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    // A bad option names its key.
    let bad = config(
        up,
        &hedged.replace(
            "delay = \"50ms\"",
            "delay = \"50ms\", max_hedged_attempts = 11",
        ),
    );
    let err = Config::parse(&bad).and_then(Proxy::new).unwrap_err();
    assert!(
        err.to_string()
            .contains("route[hedged].hedging.max_hedged_attempts"),
        "{err}"
    );
}
