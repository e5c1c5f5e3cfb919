//! `stormwall proxy` as a process, under hostile traffic: slow and idle clients, large
//! uploads, reloads through SIGHUP and `POST /admin/reload`, SIGTERM. Real sockets on
//! loopback; a raw-socket upstream that records what arrives.

mod common;

use common::{free_port, Sidecar};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A route `/plain` to `upstream`, with no strategies.
fn plain_route(upstream: SocketAddr, extra: &str) -> String {
    format!("[[route]]\nname = \"plain\"\nmatch = {{ path_prefix = \"/plain\" }}\nupstream = \"http://{upstream}\"\n{extra}\n")
}

impl Sidecar {
    /// The proxy with `server` as more `[server]` keys, then `routes`, logging at `info`;
    /// once it answers.
    async fn start(server: &str, routes: &str) -> Sidecar {
        Sidecar::spawn(&format!("{server}\n{routes}"), &[("RUST_LOG", "info")])
            .ready()
            .await
    }
}

/// GET on the admin listener: status and body; `None` when it does not answer.
async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(admin).await.ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let (status, _, body) = parse_response(&raw);
    Some((status, body))
}

async fn admin_post(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let (status, _, body) = parse_response(&raw);
    (status, body)
}

/// Reads the answer until the proxy closes the connection (up to 20 s): its status.
async fn status_at_close(stream: &mut (impl tokio::io::AsyncRead + Unpin), what: &str) -> u16 {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("no answer: {what}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    parse_response(&raw).0
}

fn parse_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// One request on a fresh connection (`Connection: close`): status, head, body.
async fn request(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nHost: test.local\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_response(&raw)
}

/// Reads one response from a keep-alive connection (its body has a Content-Length).
async fn read_response(stream: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut status_line = String::new();
    if stream.read_line(&mut status_line).await.ok()? == 0 {
        return None;
    }
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.ok()?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(status)
}

/// Waits until the peer closes `stream` (EOF or reset), up to `limit`; how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// What the raw upstream saw of one request.
#[derive(Debug, Clone)]
#[allow(dead_code)]
struct Seen {
    head: String,
    path: String,
    body_len: u64,
    /// Every byte matched [`pattern`] at its offset.
    pattern_ok: bool,
}

/// A raw-socket upstream: reads each request exactly as it arrives (Content-Length or
/// chunked), checks the body against [`pattern`], and answers 200 (`/fail...`: 503).
struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    bytes: Arc<AtomicU64>,
}

/// The byte at `offset` of every test body.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn pattern_chunk(start: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(start + i)).collect()
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bytes = Arc::new(AtomicU64::new(0));
        let (seen2, bytes2) = (Arc::clone(&seen), Arc::clone(&bytes));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, bytes) = (Arc::clone(&seen2), Arc::clone(&bytes2));
                tokio::spawn(async move {
                    let mut stream = BufReader::with_capacity(256 * 1024, stream);
                    while let Some(one) = Self::read_one(&mut stream, &bytes).await {
                        let status = if one.path.contains("/fail") {
                            "503 Service Unavailable"
                        } else {
                            "200 OK"
                        };
                        let body = format!("got {}", one.body_len);
                        seen.lock().unwrap().push(one);
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream
                            .get_mut()
                            .write_all(response.as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream { addr, seen, bytes }
    }

    async fn read_one(stream: &mut BufReader<TcpStream>, total: &AtomicU64) -> Option<Seen> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        let path = head.split(' ').nth(1)?.to_owned();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let chunked = lower
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        let mut body = BodyCheck {
            offset: 0,
            pattern_ok: true,
            buf: vec![0u8; 256 * 1024],
            total,
        };
        if chunked {
            loop {
                let mut size = String::new();
                stream.read_line(&mut size).await.ok()?;
                let size = u64::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let mut line = String::new();
                        stream.read_line(&mut line).await.ok()?;
                        if line == "\r\n" || line.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                body.consume(stream, size).await?;
                let mut crlf = String::new();
                stream.read_line(&mut crlf).await.ok()?;
            }
        } else if let Some(length) = length {
            body.consume(stream, length).await?;
        }
        Some(Seen {
            head,
            path,
            body_len: body.offset,
            pattern_ok: body.pattern_ok,
        })
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

/// A body being read: its length so far and whether it matches [`pattern`].
struct BodyCheck<'a> {
    offset: u64,
    pattern_ok: bool,
    buf: Vec<u8>,
    total: &'a AtomicU64,
}

impl BodyCheck<'_> {
    async fn consume(&mut self, stream: &mut BufReader<TcpStream>, mut n: u64) -> Option<()> {
        // The pattern from any offset is a slice of this (one memcmp per read).
        static REFERENCE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let reference = REFERENCE.get_or_init(|| pattern_chunk(0, 251 + 256 * 1024));
        while n > 0 {
            let want = n.min(self.buf.len() as u64) as usize;
            let got = stream.read(&mut self.buf[..want]).await.ok()?;
            if got == 0 {
                return None;
            }
            let start = (self.offset % 251) as usize;
            self.pattern_ok &= self.buf[..got] == reference[start..start + got];
            self.offset += got as u64;
            self.total.fetch_add(got as u64, Ordering::Relaxed);
            n -= got as u64;
        }
        Some(())
    }
}

/// Sends `size` bytes of [`pattern`] as a POST body with a Content-Length, in 64 KiB
/// writes; the proxy's answer.
async fn upload(addr: SocketAddr, path: &str, size: u64) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test.local\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // One period of the pattern (251) divides no power of two: write whole periods.
    let chunk = pattern_chunk(0, 251 * 261);
    let mut sent = 0u64;
    while sent < size {
        let n = (size - sent).min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).await.unwrap();
        sent += n as u64;
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let (status, _, body) = parse_response(&raw);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_at_the_header_timeout_and_normal_clients_are_served_at_max_connections(
) {
    let upstream = RawUpstream::start().await;
    let sidecar = Sidecar::start(
        "max_connections = 20\nheader_read_timeout = \"1s\"\nidle_timeout = \"60s\"",
        &plain_route(upstream.addr, ""),
    )
    .await;
    // One header byte every 200 ms: the head never ends; the header timeout cuts it.
    let mut dripping = TcpStream::connect(sidecar.listen).await.unwrap();
    dripping
        .write_all(b"GET /plain/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let first_byte = Instant::now();
    let drip = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if dripping.write_all(b"X").await.is_err() {
                return first_byte.elapsed();
            }
        }
    });
    let cut_after = tokio::time::timeout(Duration::from_secs(20), drip)
        .await
        .expect("the dripping client was never disconnected")
        .unwrap();
    assert!(
        cut_after >= Duration::from_secs(1),
        "cut before the header timeout: {cut_after:?}"
    );

    // Every slot taken by a client that sent half a head: new clients still get in.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(sidecar.listen).await.unwrap();
        s.write_all(b"GET /plain/x HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    for i in 0..40 {
        let (status, _, body) = tokio::time::timeout(
            Duration::from_secs(10),
            request(sidecar.listen, &format!("GET /plain/{i} HTTP/1.1"), b""),
        )
        .await
        .expect("a normal client was not served at max_connections");
        assert_eq!((status, body.as_str()), (200, "got 0"), "request {i}");
    }
    // And every slow one is gone (made room, or cut at the header timeout).
    for s in &mut slow {
        assert!(closed_within(s, Duration::from_secs(10)).await.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_make_room_for_new_clients_and_close_after_the_idle_timeout() {
    let upstream = RawUpstream::start().await;
    let sidecar = Sidecar::start(
        "max_connections = 10\nidle_timeout = \"1s\"\nheader_read_timeout = \"10s\"",
        &plain_route(upstream.addr, ""),
    )
    .await;
    // Ten keep-alive clients, each after one request: every slot is held by an idle one.
    let mut kept = Vec::new();
    for i in 0..10 {
        let stream = TcpStream::connect(sidecar.listen).await.unwrap();
        let mut stream = BufReader::new(stream);
        let head = format!("GET /plain/keep{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.get_mut().write_all(head.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut stream).await, Some(200));
        kept.push((stream, Instant::now()));
    }
    for i in 0..10 {
        let (status, _, _) = tokio::time::timeout(
            Duration::from_secs(10),
            request(sidecar.listen, &format!("GET /plain/new{i} HTTP/1.1"), b""),
        )
        .await
        .expect("a new client waited behind idle keep-alive connections");
        assert_eq!(status, 200);
    }
    // A keep-alive connection left alone is closed after the idle timeout, not before.
    let stream = TcpStream::connect(sidecar.listen).await.unwrap();
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"GET /plain/last HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await, Some(200));
    let idle = closed_within(stream.get_mut(), Duration::from_secs(20))
        .await
        .expect("an idle keep-alive connection was never closed");
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_max_connections_wait_in_the_configured_backlog() {
    let upstream = RawUpstream::start().await;
    let sidecar = Sidecar::start(
        "max_connections = 1\nbacklog = 1024",
        &plain_route(upstream.addr, ""),
    )
    .await;
    // The only slot serves a request whose body is still coming: not idle.
    let mut busy = TcpStream::connect(sidecar.listen).await.unwrap();
    busy.write_all(b"POST /plain/busy HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nx")
        .await
        .unwrap();
    // 600 more clients (above the 128 a default backlog would queue): every connect
    // completes, the kernel queueing them.
    let mut waiting = Vec::new();
    for i in 0..600 {
        let connected =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(sidecar.listen)).await;
        match connected {
            Ok(Ok(stream)) => waiting.push(stream),
            other => panic!("connect {i} did not complete: {other:?}"),
        }
    }
    // When the busy request ends, the first queued client is served.
    let mut first = waiting.remove(0);
    first
        .write_all(b"GET /plain/queued HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    busy.write_all(b"123456789").await.unwrap();
    let mut reader = BufReader::new(busy);
    assert_eq!(read_response(&mut reader).await, Some(200));
    drop(reader);
    assert_eq!(
        status_at_close(&mut first, "the first queued client").await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_gets_408() {
    let upstream = RawUpstream::start().await;
    let sidecar = Sidecar::start("body_timeout = \"1s\"", &plain_route(upstream.addr, "")).await;
    let mut stream = TcpStream::connect(sidecar.listen).await.unwrap();
    stream
        .write_all(
            b"POST /plain/stall HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(status_at_close(&mut stream, "a stalled body").await, 408);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_through_whole_in_under_100_mb() {
    let upstream = RawUpstream::start().await;
    let sidecar = Sidecar::start(
        "max_body_bytes = 2147483648",
        &plain_route(upstream.addr, ""),
    )
    .await;
    const SIZE: u64 = 1 << 30;
    let (status, body) = upload(sidecar.listen, "/plain/big", SIZE).await;
    assert_eq!((status, body.as_str()), (200, "got 1073741824"));
    let seen = upstream.seen("/plain/big");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, SIZE);
    assert!(seen[0].pattern_ok, "the body arrived altered");
    let peak = sidecar.peak_rss();
    eprintln!("1 GiB upload: peak RSS {} MiB", peak >> 20);
    assert!(peak < 100 << 20, "peak RSS {} MiB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_9_mib_uploads_stay_under_150_mb() {
    let upstream = RawUpstream::start().await;
    let sidecar = Sidecar::start("", &plain_route(upstream.addr, "")).await;
    const SIZE: u64 = 9 << 20;
    let uploads: Vec<_> = (0..50)
        .map(|i| {
            let addr = sidecar.listen;
            tokio::spawn(async move { upload(addr, &format!("/plain/u{i}"), SIZE).await })
        })
        .collect();
    for upload in uploads {
        let (status, body) = upload.await.unwrap();
        assert_eq!((status, body), (200, format!("got {SIZE}")));
    }
    assert_eq!(upstream.bytes.load(Ordering::Relaxed), 50 * SIZE);
    let peak = sidecar.peak_rss();
    eprintln!("50 × 9 MiB uploads: peak RSS {} MiB", peak >> 20);
    assert!(peak < 150 << 20, "peak RSS {} MiB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_larger_than_the_retry_buffer_is_sent_once_and_a_smaller_one_is_retried() {
    let upstream = RawUpstream::start().await;
    let sidecar = Sidecar::start(
        "retry_buffer_bytes = 4096",
        &plain_route(
            upstream.addr,
            "retry = { max_retries = 2, backoff = \"constant\", delay = \"10ms\", jitter = \"none\" }",
        ),
    )
    .await;
    for (path, size, attempts) in [
        ("/plain/fail-small", 4096, 3),
        ("/plain/fail-large", 4097, 1),
    ] {
        let head = format!("POST {path} HTTP/1.1\r\nIdempotency-Key: k-{size}");
        let (status, _, _) = request(sidecar.listen, &head, &pattern_chunk(0, size)).await;
        assert_eq!(
            status, 503,
            "{path}: the upstream's answer after the last attempt"
        );
        let seen = upstream.seen(path);
        assert_eq!(seen.len(), attempts, "{path}: attempts");
        for one in seen {
            assert_eq!(
                one.body_len, size as u64,
                "{path}: each attempt got the whole body"
            );
            assert!(one.pattern_ok, "{path}: body altered");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_gets_413_as_soon_as_it_passes_max_body_bytes() {
    let upstream = RawUpstream::start().await;
    let sidecar = Sidecar::start("max_body_bytes = 100000", &plain_route(upstream.addr, "")).await;
    let stream = TcpStream::connect(sidecar.listen).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"POST /plain/endless HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // Chunks of 16 KiB for as long as the proxy reads them.
    let sent = tokio::spawn(async move {
        let chunk = pattern_chunk(0, 16 * 1024);
        let mut sent = 0u64;
        loop {
            let head = format!("{:x}\r\n", chunk.len());
            if write.write_all(head.as_bytes()).await.is_err()
                || write.write_all(&chunk).await.is_err()
                || write.write_all(b"\r\n").await.is_err()
            {
                return sent;
            }
            sent += chunk.len() as u64;
            if sent > 1 << 30 {
                return sent;
            }
        }
    });
    assert_eq!(status_at_close(&mut read, "an endless body").await, 413);
    let sent = sent.await.unwrap();
    assert!(sent < 1 << 30, "the proxy read on after the limit");
}

/// `/admin/config`'s JSON.
async fn running_config(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = admin_get(admin, "/admin/config").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls until `condition` holds, up to 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_every_server_key_or_refuses_naming_it_and_sigterm_then_stops_at_once() {
    let upstream = RawUpstream::start().await;
    let routes = plain_route(upstream.addr, "");
    let sidecar = Sidecar::start("max_in_flight = 1", &routes).await;
    // One request in flight (its body still coming): the next is refused.
    let mut held = TcpStream::connect(sidecar.listen).await.unwrap();
    held.write_all(b"POST /plain/held HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nx")
        .await
        .unwrap();
    eventually("the held request reaches the upstream", || async {
        upstream.bytes.load(Ordering::Relaxed) >= 1
    })
    .await;
    let (status, _, _) = request(sidecar.listen, "GET /plain/probe HTTP/1.1", b"").await;
    assert_eq!(status, 503, "max_in_flight = 1 with one request in flight");

    // SIGHUP: a new address, a larger max_in_flight, a shorter header timeout.
    let moved: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = "max_in_flight = 2\nheader_read_timeout = \"1s\"\nbacklog = 2048\nmax_connections = 500\nupstream_connect_timeout = \"2s\"";
    sidecar.rewrite_at(moved, sidecar.admin, &format!("{server}\n{routes}"));
    sidecar.signal("HUP");
    eventually("/admin/config shows the new address", || async {
        running_config(sidecar.admin).await["server"]["listening"] == moved.to_string()
    })
    .await;
    let config = running_config(sidecar.admin).await;
    let server_json = &config["server"];
    assert_eq!(server_json["listen"], moved.to_string());
    assert_eq!(server_json["max_in_flight"], 2);
    assert_eq!(server_json["max_connections"], 500);
    assert_eq!(server_json["backlog"], 2048);
    assert_eq!(server_json["header_read_timeout"], "1s");
    // What it shows is what runs: the old address is closed, the new one serves, and a
    // second request fits beside the held one.
    assert!(
        TcpStream::connect(sidecar.listen).await.is_err(),
        "the old address still accepts"
    );
    let (status, _, _) = request(moved, "GET /plain/after HTTP/1.1", b"").await;
    assert_eq!(status, 200);
    let mut dripping = TcpStream::connect(moved).await.unwrap();
    dripping
        .write_all(b"GET /plain/x HTTP/1.1\r\n")
        .await
        .unwrap();
    let cut = closed_within(&mut dripping, Duration::from_secs(10)).await;
    assert!(cut.is_some(), "the new header timeout does not apply");

    // A key that cannot change on reload: refused, naming it; nothing changes.
    let other_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    sidecar.rewrite_at(moved, other_admin, &format!("max_in_flight = 7\n{routes}"));
    let (status, body) = admin_post(sidecar.admin, "/admin/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("server.admin"), "{body}");
    assert_eq!(
        running_config(sidecar.admin).await["server"]["max_in_flight"],
        2
    );
    // A bad value: refused naming the key.
    sidecar.rewrite_at(
        moved,
        sidecar.admin,
        &format!("idle_timeout = \"-3s\"\n{routes}"),
    );
    let (status, body) = admin_post(sidecar.admin, "/admin/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("server.idle_timeout"), "{body}");

    // The held request ends; SIGTERM stops the proxy at once, drained.
    held.write_all(b"y").await.unwrap();
    let mut reader = BufReader::new(held);
    assert_eq!(read_response(&mut reader).await, Some(200));
    let mut sidecar = sidecar;
    let stopping = Instant::now();
    sidecar.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sidecar.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "SIGTERM did not stop the proxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = stopping.elapsed();
    let log = sidecar.log_text();
    assert!(log.contains("drained=true"), "{log}");
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
}

/// Sends `raw` as is on a fresh connection; the status of the answer.
async fn raw_request(addr: SocketAddr, raw: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    status_at_close(&mut stream, raw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_attempts_are_refused_or_reframed_before_the_upstream() {
    let upstream = RawUpstream::start().await;
    let sidecar = Sidecar::start("", &plain_route(upstream.addr, "")).await;
    // Content-Length with Transfer-Encoding: chunked wins, the length is dropped, and what
    // follows the last chunk ("G") never reaches the upstream as a request of its own.
    for (path, lengths) in [
        (
            "/plain/cl-te",
            "Content-Length: 6\r\nTransfer-Encoding: chunked",
        ),
        (
            "/plain/te-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 6",
        ),
    ] {
        let raw = format!("POST {path} HTTP/1.1\r\nHost: a\r\n{lengths}\r\n\r\n0\r\n\r\nG");
        assert_eq!(raw_request(sidecar.listen, &raw).await, 200, "{path}");
        let seen = upstream.seen(path);
        assert_eq!(seen.len(), 1, "{path}");
        assert_eq!(seen[0].body_len, 0, "{path}");
        assert!(
            !seen[0]
                .head
                .to_ascii_lowercase()
                .contains("content-length: 6"),
            "{path}: the client's length was forwarded:\n{}",
            seen[0].head
        );
    }
    // Conflicting lengths and obfuscated transfer codings: 400, nothing forwarded.
    for (path, lengths) in [
        (
            "/plain/two-lengths",
            "Content-Length: 3\r\nContent-Length: 5",
        ),
        ("/plain/te-x", "Transfer-Encoding: xchunked"),
        (
            "/plain/te-last",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        ),
        ("/plain/te-list", "Transfer-Encoding: chunked, identity"),
        ("/plain/cl-sign", "Content-Length: +5"),
    ] {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\n{lengths}\r\nConnection: close\r\n\r\nhello"
        );
        assert_eq!(raw_request(sidecar.listen, &raw).await, 400, "{path}");
        assert!(
            upstream.seen(path).is_empty(),
            "{path} reached the upstream"
        );
    }
    // Only requests of their own ever reached the upstream.
    let paths: Vec<String> = upstream
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(paths, ["/plain/cl-te", "/plain/te-cl"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_count_limit_is_max_headers() {
    let upstream = RawUpstream::start().await;
    let many: String = (0..150).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let raw = format!("GET /plain/many HTTP/1.1\r\nHost: a\r\n{many}Connection: close\r\n\r\n");
    let default = Sidecar::start("", &plain_route(upstream.addr, "")).await;
    assert_eq!(
        raw_request(default.listen, &raw).await,
        431,
        "over the default 100"
    );
    let raised = Sidecar::start("max_headers = 200", &plain_route(upstream.addr, "")).await;
    assert_eq!(
        raw_request(raised.listen, &raw).await,
        200,
        "within max_headers = 200"
    );
}
