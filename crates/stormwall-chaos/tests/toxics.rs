//! Each toxic, measured on real loopback connections.
//!
//! These measure wall-clock behaviour of real sockets (the proxy's timers run on the real
//! clock because the bytes cross the kernel), so each keeps its delays short.

mod common;

use common::*;
use std::io::ErrorKind;
use std::time::{Duration, Instant};
use stormwall_chaos::{ChaosServer, Stream, Toxic, ToxicKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The measured tests run one at a time (and not beside the 1,000-connection test): on a
/// 2-core machine, a neighbour's load would otherwise decide a ±2 ms measurement.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn toxic(kind: ToxicKind, stream: Stream) -> Toxic {
    let mut t = Toxic::new(kind);
    t.stream = stream;
    t.name = format!("{}_{}", t.kind.type_name(), stream.as_str());
    t
}

/// Sends `message` and times the echo.
async fn echo_time(conn: &mut TcpStream, message: &[u8]) -> Duration {
    let started = Instant::now();
    conn.write_all(message).await.unwrap();
    let mut back = vec![0; message.len()];
    conn.read_exact(&mut back).await.unwrap();
    assert_eq!(back, message);
    started.elapsed()
}

/// The median of `n` echo times: one late wake-up of a loaded CI machine does not decide.
async fn median_echo(conn: &mut TcpStream, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        times.push(echo_time(conn, b"hello").await);
    }
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn latency_delays_each_chunk_by_the_setting_within_2ms() {
    let _serial = SERIAL.lock().await;
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    let mut conn = TcpStream::connect(&listen).await.unwrap();
    let base = median_echo(&mut conn, 5).await;
    server
        .add_toxic(
            "p",
            toxic(
                ToxicKind::Latency {
                    latency: 50,
                    jitter: 0,
                },
                Stream::Downstream,
            ),
        )
        .unwrap();
    let took = median_echo(&mut conn, 5).await;
    assert!(
        took >= Duration::from_millis(50) && took.saturating_sub(base) <= Duration::from_millis(52),
        "took {took:?} (base {base:?})"
    );
    // Both directions add up (each toxic within its 2 ms: tokio's timer wakes on the next
    // millisecond).
    server
        .add_toxic(
            "p",
            toxic(
                ToxicKind::Latency {
                    latency: 30,
                    jitter: 0,
                },
                Stream::Upstream,
            ),
        )
        .unwrap();
    let took = median_echo(&mut conn, 5).await;
    assert!(
        took >= Duration::from_millis(80) && took.saturating_sub(base) <= Duration::from_millis(84),
        "took {took:?} (base {base:?})"
    );
    // Removed: back to fast, on the same live connection.
    server.remove_toxic("p", "latency_downstream").unwrap();
    server.remove_toxic("p", "latency_upstream").unwrap();
    assert!(echo_time(&mut conn, b"fast").await < Duration::from_millis(20));
}

#[tokio::test]
async fn bandwidth_limits_throughput_within_10_percent() {
    let _serial = SERIAL.lock().await;
    let server = ChaosServer::new();
    let bytes = 100_000;
    let listen = proxy(&server, "p", sending_server(bytes).await).await;
    // 500 KB/s: 100 KB take 200 ms.
    server
        .add_toxic(
            "p",
            toxic(ToxicKind::Bandwidth { rate: 500 }, Stream::Downstream),
        )
        .unwrap();
    let started = Instant::now();
    let mut conn = TcpStream::connect(&listen).await.unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    let took = started.elapsed();
    assert_eq!(got, pattern(bytes));
    let expected = Duration::from_millis(200);
    assert!(
        took >= expected.mul_f64(0.9) && took <= expected.mul_f64(1.1),
        "{took:?} for 100 KB at 500 KB/s"
    );
}

#[tokio::test]
async fn timeout_drops_data_and_closes_after_the_set_time() {
    let _serial = SERIAL.lock().await;
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    server
        .add_toxic(
            "p",
            toxic(ToxicKind::Timeout { timeout: 100 }, Stream::Upstream),
        )
        .unwrap();
    let started = Instant::now();
    let mut conn = TcpStream::connect(&listen).await.unwrap();
    conn.write_all(b"lost").await.unwrap();
    let mut buf = [0; 16];
    let read = conn.read(&mut buf).await;
    let took = started.elapsed();
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "no data, then closed: {read:?}"
    );
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(150),
        "{took:?}"
    );
}

#[tokio::test]
async fn timeout_zero_holds_until_removed_then_data_flows_again() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    let mut conn = TcpStream::connect(&listen).await.unwrap();
    echo_time(&mut conn, b"before").await;
    server
        .add_toxic(
            "p",
            toxic(ToxicKind::Timeout { timeout: 0 }, Stream::Downstream),
        )
        .unwrap();
    conn.write_all(b"held").await.unwrap();
    let mut buf = [0; 16];
    let held = tokio::time::timeout(Duration::from_millis(150), conn.read(&mut buf)).await;
    assert!(
        held.is_err(),
        "nothing passes while the toxic is there: {held:?}"
    );
    server.remove_toxic("p", "timeout_downstream").unwrap();
    echo_time(&mut conn, b"after").await;
}

#[tokio::test]
async fn reset_peer_resets_the_connection() {
    let _serial = SERIAL.lock().await;
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    server
        .add_toxic(
            "p",
            toxic(ToxicKind::ResetPeer { timeout: 50 }, Stream::Downstream),
        )
        .unwrap();
    let started = Instant::now();
    let mut conn = TcpStream::connect(&listen).await.unwrap();
    // Data passes until the reset.
    echo_time(&mut conn, b"ok").await;
    let mut buf = [0; 16];
    let read = conn.read(&mut buf).await;
    assert_eq!(read.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn limit_data_closes_after_n_bytes() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", sending_server(10_000).await).await;
    server
        .add_toxic(
            "p",
            toxic(ToxicKind::LimitData { bytes: 1234 }, Stream::Downstream),
        )
        .unwrap();
    let mut conn = TcpStream::connect(&listen).await.unwrap();
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got).await;
    assert_eq!(got, pattern(1234));
}

#[tokio::test]
async fn slicer_and_bandwidth_deliver_every_byte_intact() {
    let server = ChaosServer::new();
    let bytes = 50_000;
    let listen = proxy(&server, "p", sending_server(bytes).await).await;
    server
        .add_toxic(
            "p",
            toxic(
                ToxicKind::Slicer {
                    average_size: 500,
                    size_variation: 300,
                    delay: 100,
                },
                Stream::Downstream,
            ),
        )
        .unwrap();
    let mut limit = toxic(ToxicKind::Bandwidth { rate: 1000 }, Stream::Downstream);
    limit.name = "slow".into();
    server.add_toxic("p", limit).unwrap();
    let mut conn = TcpStream::connect(&listen).await.unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, pattern(bytes));
}

#[tokio::test]
async fn slow_close_delays_the_close() {
    let _serial = SERIAL.lock().await;
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", sending_server(10).await).await;
    server
        .add_toxic(
            "p",
            toxic(ToxicKind::SlowClose { delay: 100 }, Stream::Downstream),
        )
        .unwrap();
    let started = Instant::now();
    let mut conn = TcpStream::connect(&listen).await.unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), 10);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(150),
        "{took:?}"
    );
}

#[tokio::test]
async fn toxicity_zero_never_applies_and_one_always_does() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    let mut never = toxic(ToxicKind::Timeout { timeout: 0 }, Stream::Downstream);
    never.toxicity = 0.0;
    server.add_toxic("p", never).unwrap();
    for _ in 0..20 {
        let mut conn = TcpStream::connect(&listen).await.unwrap();
        assert!(echo_time(&mut conn, b"x").await < Duration::from_millis(50));
    }
}

#[tokio::test]
async fn many_concurrent_connections_without_errors() {
    let _serial = SERIAL.lock().await;
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let listen = listen.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(&listen).await?;
            let message = i.to_be_bytes();
            conn.write_all(&message).await?;
            let mut back = [0; 4];
            conn.read_exact(&mut back).await?;
            assert_eq!(back, message);
            Ok::<_, std::io::Error>(conn)
        }));
    }
    // All 1000 held open at once, then closed.
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await.unwrap().unwrap());
    }
    assert_eq!(open.len(), 1000);
}
