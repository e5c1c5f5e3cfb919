//! Each toxic on real loopback connections, timed on tokio's paused clock.
//!
//! The proxy, its upstream and the client all run in the test's runtime, so every byte
//! written on loopback is readable before the runtime next looks for work, and the clock
//! only moves when every task waits on a timer: the times measured here are the toxics'
//! own, exact to tokio's 1 ms timer tick, however loaded the machine. "Nothing arrives"
//! is checked over 10 s of that clock, which takes no real time.
//!
//! The semantics checked are Toxiproxy's (`toxics/*.go`); docs/chaos.md lists them.

mod common;

use common::*;
use std::io::ErrorKind;
use std::time::Duration;
use stormwall_chaos::{ChaosServer, Stream, Toxic, ToxicKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

fn toxic(kind: ToxicKind, stream: Stream) -> Toxic {
    let mut t = Toxic::new(kind);
    t.stream = stream;
    t.name = format!("{}_{}", t.kind.type_name(), stream.as_str());
    t
}

/// Adds [`toxic`]`(kind, stream)` to the proxy `p`.
fn add_toxic(server: &ChaosServer, kind: ToxicKind, stream: Stream) {
    server.add_toxic("p", toxic(kind, stream)).unwrap();
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Within tokio's timer tick of `expected`.
fn assert_about(took: Duration, expected: Duration) {
    assert!(
        took >= expected && took <= expected + ms(1),
        "took {took:?}, expected {expected:?}"
    );
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

/// Reads until the proxy closes the connection.
async fn read_all(conn: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    got
}

/// Waits 10 s of the paused clock for a read: `None` when nothing came.
async fn read_within_10s(conn: &mut TcpStream) -> Option<std::io::Result<usize>> {
    let mut buf = [0; 64];
    timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .ok()
}

/// A server that answers nothing and, when each connection ends, reports what it
/// received on it.
async fn recording_server() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = stream.read_to_end(&mut got).await;
                let _ = tx.send(got);
            });
        }
    });
    (addr, rx)
}

#[tokio::test(start_paused = true)]
async fn latency_delays_each_chunk_by_the_setting_counted_from_its_arrival() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    let mut conn = connect(&listen).await;
    assert_eq!(echo_time(&mut conn, b"hello").await, Duration::ZERO);
    let latency = |latency| ToxicKind::Latency { latency, jitter: 0 };
    add_toxic(&server, latency(50), Stream::Downstream);
    assert_about(echo_time(&mut conn, b"hello").await, ms(50));
    // Both directions add up.
    add_toxic(&server, latency(30), Stream::Upstream);
    assert_about(echo_time(&mut conn, b"hello").await, ms(80));
    // Two on one stream add up too (each moves the chunk's time on, as Toxiproxy's).
    let mut second = toxic(latency(20), Stream::Downstream);
    second.name = "second".into();
    server.add_toxic("p", second).unwrap();
    assert_about(echo_time(&mut conn, b"hello").await, ms(100));
    server.remove_toxic("p", "second").unwrap();
    server.remove_toxic("p", "latency_upstream").unwrap();

    // Chunks are delayed from their own arrival, not queued behind each other: two
    // chunks 10 ms apart come back 50 ms after each was sent.
    let started = Instant::now();
    conn.write_all(b"one").await.unwrap();
    tokio::time::sleep(ms(10)).await;
    conn.write_all(b"two").await.unwrap();
    let mut back = [0; 3];
    conn.read_exact(&mut back).await.unwrap();
    assert_about(started.elapsed(), ms(50));
    conn.read_exact(&mut back).await.unwrap();
    assert_about(started.elapsed(), ms(60));

    // Removed: back to no delay, on the same live connection.
    server.remove_toxic("p", "latency_downstream").unwrap();
    assert_eq!(echo_time(&mut conn, b"fast").await, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn latency_jitter_stays_within_latency_plus_or_minus_jitter() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    add_toxic(
        &server,
        ToxicKind::Latency {
            latency: 100,
            jitter: 20,
        },
        Stream::Downstream,
    );
    let mut conn = connect(&listen).await;
    let mut seen = Vec::new();
    for _ in 0..50 {
        let took = echo_time(&mut conn, b"j").await;
        assert!(took >= ms(80) && took <= ms(121), "{took:?}");
        seen.push(took);
    }
    seen.sort();
    assert!(seen[49] - seen[0] >= ms(10), "jitter varies: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn bandwidth_passes_rate_kb_per_second_and_rate_0_holds_until_removed() {
    let server = ChaosServer::new();
    let bytes = 100_000;
    let listen = proxy(&server, "p", sending_server(bytes).await).await;
    // 500 KB/s: 100 KB take 200 ms.
    add_toxic(
        &server,
        ToxicKind::Bandwidth { rate: 500 },
        Stream::Downstream,
    );
    let started = Instant::now();
    let mut conn = connect(&listen).await;
    let got = read_all(&mut conn).await;
    assert_eq!(got, pattern(bytes));
    let took = started.elapsed();
    assert!(took >= ms(200) && took <= ms(205), "{took:?}");

    // Rate 0: nothing passes (Toxiproxy's loop never sends), nothing is lost.
    server
        .update_toxic(
            "p",
            "bandwidth_downstream",
            &serde_json::json!({"attributes": {"rate": 0}}),
        )
        .unwrap();
    let mut conn = connect(&listen).await;
    assert!(read_within_10s(&mut conn).await.is_none());
    server.remove_toxic("p", "bandwidth_downstream").unwrap();
    let got = read_all(&mut conn).await;
    assert_eq!(got, pattern(bytes));
}

#[tokio::test(start_paused = true)]
async fn bandwidth_of_huge_rates_passes_at_once_instead_of_looping() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", sending_server(2000).await).await;
    for (i, rate) in [1u64 << 62, i64::MAX as u64, u64::MAX]
        .into_iter()
        .enumerate()
    {
        let mut t = toxic(ToxicKind::Bandwidth { rate }, Stream::Downstream);
        t.name = format!("huge{i}");
        server.add_toxic("p", t).unwrap();
    }
    let started = Instant::now();
    let mut conn = connect(&listen).await;
    let got = read_all(&mut conn).await;
    assert_eq!(got, pattern(2000));
    assert!(started.elapsed() <= ms(1), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn timeout_drops_data_and_closes_the_set_time_after_the_connection_started() {
    let server = ChaosServer::new();
    let (upstream, mut received) = recording_server().await;
    let listen = proxy(&server, "p", upstream).await;
    add_toxic(
        &server,
        ToxicKind::Timeout { timeout: 100 },
        Stream::Upstream,
    );
    let started = Instant::now();
    let mut conn = connect(&listen).await;
    tokio::time::sleep(ms(40)).await;
    conn.write_all(b"lost").await.unwrap();
    let mut buf = [0; 16];
    // A close, not a reset (Toxiproxy's stub.Close()).
    assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
    assert_about(started.elapsed(), ms(100));
    assert_eq!(received.recv().await.unwrap(), b"", "the data was dropped");
}

#[tokio::test(start_paused = true)]
async fn timeout_zero_holds_the_connection_until_removed_which_closes_it() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    let mut conn = connect(&listen).await;
    echo_time(&mut conn, b"before").await;
    add_toxic(
        &server,
        ToxicKind::Timeout { timeout: 0 },
        Stream::Downstream,
    );
    conn.write_all(b"held").await.unwrap();
    assert!(
        read_within_10s(&mut conn).await.is_none(),
        "nothing passes and nothing closes while the toxic is there"
    );
    // Toxiproxy's timeout closes the connection when it is removed (its Cleanup).
    server.remove_toxic("p", "timeout_downstream").unwrap();
    let mut buf = [0; 16];
    assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
    // New connections pass again.
    let mut conn = connect(&listen).await;
    assert_eq!(echo_time(&mut conn, b"after").await, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn reset_peer_with_timeout_0_waits_for_the_first_data_drops_it_and_resets() {
    let server = ChaosServer::new();
    let (upstream, mut received) = recording_server().await;
    let listen = proxy(&server, "p", upstream).await;
    add_toxic(
        &server,
        ToxicKind::ResetPeer { timeout: 0 },
        Stream::Upstream,
    );
    for _ in 0..20 {
        // The connect succeeds and nothing happens until the client sends.
        let mut conn = connect(&listen).await;
        assert!(read_within_10s(&mut conn).await.is_none());
        conn.write_all(b"GET").await.unwrap();
        let mut buf = [0; 16];
        let read = conn.read(&mut buf).await;
        assert_eq!(read.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
        let got = received.recv().await.unwrap();
        assert!(
            got.is_empty(),
            "the data that started the clock was dropped"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn reset_peer_resets_its_timeout_after_the_first_data_on_its_stream() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    add_toxic(
        &server,
        ToxicKind::ResetPeer { timeout: 50 },
        Stream::Downstream,
    );
    let mut conn = connect(&listen).await;
    tokio::time::sleep(ms(30)).await;
    // Upstream passes; the echo is the downstream's first data: dropped, clock starts.
    let started = Instant::now();
    conn.write_all(b"ok").await.unwrap();
    let mut buf = [0; 16];
    let read = conn.read(&mut buf).await;
    assert_eq!(read.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    assert_about(started.elapsed(), ms(50));
}

#[tokio::test(start_paused = true)]
async fn limit_data_passes_exactly_n_bytes_then_closes() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", sending_server(100_000).await).await;
    add_toxic(
        &server,
        ToxicKind::LimitData { bytes: 41_234 },
        Stream::Downstream,
    );
    let mut conn = connect(&listen).await;
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got).await;
    assert_eq!(got, pattern(41_234));

    // 0 bytes: closes at the first data.
    server
        .update_toxic(
            "p",
            "limit_data_downstream",
            &serde_json::json!({"attributes": {"bytes": 0}}),
        )
        .unwrap();
    let mut conn = connect(&listen).await;
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got).await;
    assert!(got.is_empty());
}

#[tokio::test(start_paused = true)]
async fn slicer_delivers_every_byte_in_slices_delay_microseconds_apart() {
    let server = ChaosServer::new();
    let bytes = 10_000;
    let listen = proxy(&server, "p", sending_server(bytes).await).await;
    add_toxic(
        &server,
        ToxicKind::Slicer {
            average_size: 1000,
            size_variation: 0,
            delay: 10_000,
        },
        Stream::Downstream,
    );
    let started = Instant::now();
    let mut conn = connect(&listen).await;
    let got = read_all(&mut conn).await;
    assert_eq!(got, pattern(bytes));
    // 10,000 bytes halve into 16 slices of 625 (each ≤ 1000): 10 ms after each.
    let took = started.elapsed();
    assert!(took >= ms(150) && took <= ms(170), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn slicer_and_bandwidth_together_deliver_every_byte_intact() {
    let server = ChaosServer::new();
    let bytes = 50_000;
    let listen = proxy(&server, "p", sending_server(bytes).await).await;
    add_toxic(
        &server,
        ToxicKind::Slicer {
            average_size: 500,
            size_variation: 300,
            delay: 100,
        },
        Stream::Downstream,
    );
    let mut limit = toxic(ToxicKind::Bandwidth { rate: 1000 }, Stream::Downstream);
    limit.name = "slow".into();
    server.add_toxic("p", limit).unwrap();
    let mut conn = connect(&listen).await;
    let got = read_all(&mut conn).await;
    assert_eq!(got, pattern(bytes));
}

#[tokio::test(start_paused = true)]
async fn slow_close_passes_data_at_once_and_delays_the_close() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", sending_server(10).await).await;
    add_toxic(
        &server,
        ToxicKind::SlowClose { delay: 100 },
        Stream::Downstream,
    );
    let started = Instant::now();
    let mut conn = connect(&listen).await;
    let mut got = [0; 10];
    conn.read_exact(&mut got).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_about(started.elapsed(), ms(100));
}

#[tokio::test(start_paused = true)]
async fn toxicity_is_rolled_once_per_connection() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    let mut never = toxic(ToxicKind::Timeout { timeout: 0 }, Stream::Downstream);
    never.toxicity = 0.0;
    server.add_toxic("p", never).unwrap();
    for _ in 0..20 {
        let mut conn = connect(&listen).await;
        assert_eq!(echo_time(&mut conn, b"x").await, Duration::ZERO);
    }
    server.remove_toxic("p", "timeout_downstream").unwrap();
    let mut half = toxic(
        ToxicKind::Latency {
            latency: 100,
            jitter: 0,
        },
        Stream::Downstream,
    );
    half.toxicity = 0.5;
    server.add_toxic("p", half).unwrap();
    let mut delayed = 0;
    for _ in 0..200 {
        let mut conn = connect(&listen).await;
        let first = echo_time(&mut conn, b"x").await;
        // The same connection keeps its roll.
        for _ in 0..3 {
            assert_eq!(echo_time(&mut conn, b"x").await, first);
        }
        if first >= ms(100) {
            delayed += 1;
        }
    }
    // Binomial(200, 0.5): outside 60..=140 has odds below 1 in 10^8.
    assert!((60..=140).contains(&delayed), "{delayed} of 200 delayed");
}

#[tokio::test(start_paused = true)]
async fn toxics_added_and_removed_mid_stream_lose_no_byte() {
    let server = ChaosServer::new();
    let listen = proxy(&server, "p", echo_server().await).await;
    let mut conn = connect(&listen).await;
    let (mut read, mut write) = conn.split();
    let data = pattern(4 << 20);
    let sender = async {
        for (i, piece) in data.chunks(64 * 1024).enumerate() {
            write.write_all(piece).await.unwrap();
            match i % 16 {
                3 => {
                    let mut t = toxic(
                        ToxicKind::Latency {
                            latency: 5,
                            jitter: 0,
                        },
                        Stream::Downstream,
                    );
                    t.name = format!("l{i}");
                    server.add_toxic("p", t).unwrap();
                }
                7 => {
                    let mut t = toxic(
                        ToxicKind::Slicer {
                            average_size: 3000,
                            size_variation: 1000,
                            delay: 0,
                        },
                        Stream::Upstream,
                    );
                    t.name = format!("s{i}");
                    server.add_toxic("p", t).unwrap();
                }
                11 => {
                    for t in server.toxics("p").unwrap() {
                        server.remove_toxic("p", &t.name).unwrap();
                    }
                }
                _ => {}
            }
            tokio::task::yield_now().await;
        }
    };
    let receiver = async {
        let mut got = vec![0; data.len()];
        read.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(sender, receiver);
    assert!(got == data, "every byte, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_without_errors() {
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
