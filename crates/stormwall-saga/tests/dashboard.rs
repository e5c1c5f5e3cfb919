//! The dashboard's saga panel, fed by a `SagaTracker` and served on a real loopback
//! socket: its data (`/dashboard/state`), its live stream and its page show each saga's
//! state and where a stalled one stopped — the page as a browser renders it too (headless
//! Chromium's DOM after the page's script ran: `STORMWALL_CHROMIUM`, else `chromium`,
//! which `scripts/test` installs).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stormwall_proxy::dashboard::Dashboard;
use stormwall_saga::choreography::{Message, SagaTracker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(60);

/// `GET path` over a new connection: the whole response (status line, headers, body).
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The JSON body of `GET /dashboard/state`.
async fn state(addr: SocketAddr) -> serde_json::Value {
    let response = get(addr, "/dashboard/state").await;
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(body).unwrap()
}

/// Polls the dashboard's state until `done` holds (panics after `DEADLINE`, naming `what`).
async fn state_when(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let state = state(addr).await;
        if done(&state) {
            return state;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting until {what}: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The page at `url` as headless Chromium renders it (its DOM once loaded).
fn rendered(url: &str, profile: &std::path::Path) -> String {
    let chromium = std::env::var_os("STORMWALL_CHROMIUM").unwrap_or_else(|| "chromium".into());
    let mut browser = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{chromium:?} (scripts/test installs chromium): {e}"));
    let mut stdout = browser.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut dom).unwrap();
        dom
    });
    let started = Instant::now();
    while browser.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            browser.kill().unwrap();
            panic!("chromium did not render the page within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reader.join().unwrap()
}

fn status_of(state: &serde_json::Value, correlation_id: &str) -> Option<String> {
    state["sagas"]
        .as_array()?
        .iter()
        .find(|s| s["correlation_id"] == correlation_id)
        .map(|s| s["status"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_sagas_progress_and_where_a_stalled_one_stopped() {
    let dir = std::env::temp_dir().join(format!("stormwall-saga-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tracker.db");
    let tracker = SagaTracker::open(&path, ["order.completed", "order.cancelled"])
        .unwrap()
        .stalled_after(Duration::from_secs(60));
    let created = |key: &str| Message::new("order.created", key, &()).unwrap();
    let (done, stuck, going) = (created("order-1"), created("order-2"), created("order-3"));
    for (first, next) in [
        (&done, &["payment.completed", "order.completed"][..]),
        (&stuck, &["payment.completed"][..]),
        (&going, &[][..]),
    ] {
        tracker.record(first).await.unwrap();
        for kind in next {
            let m = Message::reacting_to(first, *kind, &first.stream_key, &()).unwrap();
            tracker.record(&m).await.unwrap();
        }
    }
    // Order 2's last event was seen ten minutes ago: it stalled there.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE stormwall_saga_tracking SET seen_at = seen_at - 600000 WHERE correlation_id = ?1",
            [&stuck.correlation_id],
        )
        .unwrap();

    let dashboard = Dashboard::new();
    let reader = tracker.clone();
    let _feed = dashboard.feed_sagas(Duration::from_millis(50), move || {
        let tracker = reader.clone();
        async move { tracker.overview(50).await }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, dashboard.router()).into_future());

    let state = state_when(addr, "the panel lists the three sagas", |s| {
        s["sagas"].as_array().is_some_and(|a| a.len() == 3)
    })
    .await;
    let sagas = state["sagas"].as_array().unwrap();
    let ids: Vec<&str> = sagas
        .iter()
        .map(|s| s["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            done.correlation_id.as_str(),
            &stuck.correlation_id,
            &going.correlation_id
        ],
        "in the order they started"
    );
    let statuses: Vec<&str> = sagas
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["finished", "stalled", "running"]);
    let steps = |s: &serde_json::Value| -> Vec<String> {
        s["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        steps(&sagas[0]),
        ["order.created", "payment.completed", "order.completed"]
    );
    assert_eq!(
        steps(&sagas[1]).last().map(String::as_str),
        Some("payment.completed"),
        "where the stalled one stopped"
    );

    // The panel follows the tracker: order 3 completes.
    let completed = Message::reacting_to(&going, "order.completed", "order-3", &()).unwrap();
    tracker.record(&completed).await.unwrap();
    state_when(addr, "order 3 shows finished", |s| {
        status_of(s, &going.correlation_id).as_deref() == Some("finished")
    })
    .await;

    // The page arrives with the sagas in it; the live stream's first view has them too.
    let page = get(addr, "/dashboard").await;
    assert!(
        page.contains(r#"id="sagas-panel""#),
        "the page has a saga panel"
    );
    assert!(page.contains(&format!(
        r#""correlation_id":"{}","status":"stalled""#,
        stuck.correlation_id
    )));
    // As a browser shows it: the panel visible, the stalled saga's row saying where it
    // stopped.
    let url = format!("http://{addr}/dashboard");
    let profile = dir.join("chromium");
    let dom = tokio::task::spawn_blocking(move || rendered(&url, &profile))
        .await
        .unwrap();
    assert!(
        dom.contains(r#"<section id="sagas-panel">"#),
        "shown: {dom}"
    );
    assert!(
        dom.contains(&format!(
            r#"<tr class="saga stalled" data-correlation-id="{}" data-status="stalled" data-stopped-at="payment.completed">"#,
            stuck.correlation_id
        )),
        "{dom}"
    );
    assert!(
        dom.contains("stopped after payment.completed (order-2)"),
        "{dom}"
    );
    assert_eq!(dom.matches(r#"data-status="finished""#).count(), 2, "{dom}");

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /dashboard/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut received = Vec::new();
    let started = Instant::now();
    while !String::from_utf8_lossy(&received).contains(r#""status":"stalled""#) {
        assert!(started.elapsed() < DEADLINE, "the stream sends the sagas");
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the stream stays open");
        received.extend_from_slice(&chunk[..n]);
    }
    std::fs::remove_dir_all(&dir).ok();
}
