//! `stormwall proxy` as a process, configured from one options model: a reload that changes
//! only a route's retry keeps its open breaker, and `STORMWALL__…` environment overrides
//! apply at start and on every reload. Real sockets on loopback; an upstream that answers
//! 503 and counts what reaches it.

mod common;

use common::Sidecar;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request 503 and counts them.
async fn failing_upstream() -> (SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let hits = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, hits)
}

impl Sidecar {
    /// The route's breaker state as `/admin/circuits` shows it.
    async fn circuit(&self, route: &str) -> String {
        let (_, body) = admin(self.admin, "GET", "/admin/circuits").await.unwrap();
        let circuits: serde_json::Value = serde_json::from_str(&body).unwrap();
        circuits["circuits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["route"] == route)
            .and_then(|c| c["state"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// `POST /admin/reload`: status and body.
    async fn reload(&self) -> (u16, String) {
        admin(self.admin, "POST", "/admin/reload").await.unwrap()
    }

    /// GET `path` through the proxy: the status.
    async fn get(&self, path: &str) -> u16 {
        let (status, _) = request(self.listen, "GET", path).await.unwrap();
        status
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

async fn admin(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    request(addr, method, path).await
}

fn route(upstream: SocketAddr, retry: &str, breaker: &str) -> String {
    format!(
        "[[route]]\nname = \"pay\"\nmatch = {{ path_prefix = \"/pay\" }}\nupstream = \"http://{upstream}\"\n\
         retry = {{ {retry} }}\ncircuit_breaker = {{ {breaker} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_survives_a_reload_that_changes_only_the_routes_retry() {
    let (upstream, hits) = failing_upstream().await;
    let retry = "max_retries = 1, delay = \"1ms\", backoff = \"constant\", jitter = \"none\"";
    let breaker = "failure_ratio = \"off\", consecutive_failures = 2, break_duration = \"1h\"";
    let sidecar = Sidecar::spawn(&route(upstream, retry, breaker), &[])
        .ready()
        .await;
    // Two attempts fail (the first try and its retry): the breaker opens.
    assert_eq!(sidecar.get("/pay").await, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(sidecar.circuit("pay").await, "open");

    // Only the retry changes: the route is rebuilt, its breaker kept, still open.
    let more_retries = retry.replace("max_retries = 1", "max_retries = 3");
    sidecar.rewrite(&route(upstream, &more_retries, breaker));
    assert_eq!(sidecar.reload().await.0, 200);
    assert_eq!(sidecar.circuit("pay").await, "open");
    // Rejected by the open breaker: nothing reaches the upstream.
    assert_eq!(sidecar.get("/pay").await, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // The same through SIGHUP, changing the retry again (and `server.max_in_flight`, which
    // `/admin/config` shows once the reload is applied).
    sidecar.rewrite(&format!(
        "max_in_flight = 500\n\n{}",
        route(upstream, retry, breaker)
    ));
    sidecar.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = admin(sidecar.admin, "GET", "/admin/config").await.unwrap();
        let config: serde_json::Value = serde_json::from_str(&body).unwrap();
        if config["server"]["max_in_flight"] == 500 {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sidecar.circuit("pay").await, "open");
    assert_eq!(sidecar.get("/pay").await, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Changing the breaker itself rebuilds it: closed, and requests reach the upstream.
    let other_breaker = breaker.replace("consecutive_failures = 2", "consecutive_failures = 5");
    sidecar.rewrite(&format!(
        "max_in_flight = 500\n\n{}",
        route(upstream, retry, &other_breaker)
    ));
    assert_eq!(sidecar.reload().await.0, 200);
    assert_eq!(sidecar.circuit("pay").await, "closed");
    assert_eq!(sidecar.get("/pay").await, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_apply_at_start_and_on_every_reload() {
    let (upstream, hits) = failing_upstream().await;
    let file = |delay: &str| {
        format!(
            "[pipelines.pay]\nstrategies = [\n  {{ retry = {{ max_retries = 1, delay = \"{delay}\", backoff = \"constant\", jitter = \"none\" }} }},\n]\n\n\
             [[route]]\nname = \"pay\"\nmatch = {{ path_prefix = \"/pay\" }}\nupstream = \"http://{upstream}\"\npipeline = \"pay\"\n"
        )
    };
    let env = [("STORMWALL__PAY__RETRY__MAX_RETRIES", "3")];
    let sidecar = Sidecar::spawn(&file("1ms"), &env).ready().await;
    // The variable's 3 retries, not the file's 1: four attempts.
    assert_eq!(sidecar.get("/pay").await, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    // A reload that rebuilds the route reads the variable again.
    sidecar.rewrite(&file("2ms"));
    let (status, body) = sidecar.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sidecar.get("/pay").await, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 8);
    // A bad file is refused on reload, naming the key; the old configuration keeps serving.
    sidecar.rewrite(&file("soon"));
    let (status, body) = sidecar.reload().await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("pipelines.pay.strategies[0].retry.delay"),
        "{body}"
    );
    assert_eq!(sidecar.get("/pay").await, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 12);
    drop(sidecar);

    // An override out of range stops the start, naming the key and the variable.
    let mut bad = Sidecar::spawn(&file("1ms"), &[("STORMWALL__PAY__RETRY__MAX_RETRIES", "0")]);
    let status = bad.child.wait().unwrap();
    assert!(!status.success());
    let stderr = bad.log_text();
    assert!(
        stderr.contains("pipelines.pay.strategies[0].retry.max_retries"),
        "{stderr}"
    );
    assert!(
        stderr.contains("STORMWALL__PAY__RETRY__MAX_RETRIES"),
        "{stderr}"
    );
}
