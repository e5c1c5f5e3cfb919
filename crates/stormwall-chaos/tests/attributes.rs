//! Every toxic over the whole attribute space, through real connections: no panic, no
//! endless loop, and the process's memory stays flat (a bandwidth rate of 2^62 once
//! wrapped to a 0-byte step and grew the process by 420 MB/s).
//!
//! Each case runs on its own paused-clock runtime (so waits of years cost nothing) in a
//! thread watched on the real clock: a case that spins without yielding fails the test
//! instead of hanging it.

mod common;

use common::*;
use proptest::prelude::*;
use std::time::Duration;
use stormwall_chaos::{ChaosServer, Stream, Toxic, ToxicKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Boundary values of a u64 attribute, and anything in between.
fn attribute() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(100),
        Just(1 << 31),
        Just(1 << 62),
        Just(i64::MAX as u64),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>(),
        0u64..100_000,
    ]
}

fn kind() -> impl Strategy<Value = ToxicKind> {
    let a = attribute;
    prop_oneof![
        (a(), a()).prop_map(|(latency, jitter)| ToxicKind::Latency { latency, jitter }),
        a().prop_map(|rate| ToxicKind::Bandwidth { rate }),
        a().prop_map(|delay| ToxicKind::SlowClose { delay }),
        a().prop_map(|timeout| ToxicKind::Timeout { timeout }),
        a().prop_map(|timeout| ToxicKind::ResetPeer { timeout }),
        (a(), a(), a()).prop_map(|(average_size, size_variation, delay)| {
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay,
            }
        }),
        a().prop_map(|bytes| ToxicKind::LimitData { bytes }),
    ]
}

fn toxics() -> impl Strategy<Value = Vec<(ToxicKind, bool, f64)>> {
    prop::collection::vec((kind(), any::<bool>(), 0.0..=1.0f64), 1..4)
}

/// Resident set size of this process, from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// One case: the toxics on a proxy to an echo server, 64 KiB sent each way and read for
/// 10 s of the paused clock, the connection closed, the toxics removed.
fn run_case(toxics: Vec<(ToxicKind, bool, f64)>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = ChaosServer::new();
        let listen = proxy(&server, "p", echo_server().await).await;
        for (i, (kind, upstream, toxicity)) in toxics.iter().enumerate() {
            let mut toxic = Toxic::new(*kind);
            toxic.name = format!("t{i}");
            toxic.stream = if *upstream {
                Stream::Upstream
            } else {
                Stream::Downstream
            };
            toxic.toxicity = *toxicity;
            server.add_toxic("p", toxic).unwrap();
        }
        let mut conn = connect(&listen).await;
        let data = pattern(64 * 1024);
        let (mut read, mut write) = conn.split();
        let exchange = async {
            let _ = write.write_all(&data).await;
            let mut got = Vec::new();
            let _ = read.read_to_end(&mut got).await;
            got
        };
        if let Ok(got) = tokio::time::timeout(Duration::from_secs(10), exchange).await {
            // Whatever arrived is the data's beginning, in order: toxics drop or cut, never
            // reorder or invent.
            assert_eq!(got, data[..got.len()], "{toxics:?}");
        }
        drop(conn);
        for i in 0..toxics.len() {
            let _ = server.remove_toxic("p", &format!("t{i}"));
        }
        server.delete("p").await.unwrap();
    });
}

#[test]
fn every_attribute_value_through_real_connections_keeps_memory_flat() {
    // Warm up allocator pools and the runtime's first allocations before measuring.
    run_case(vec![(ToxicKind::Bandwidth { rate: 1 }, false, 1.0)]);
    let before = rss_bytes();
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(case in toxics())| {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let label = format!("{case:?}");
        std::thread::spawn(move || {
            let ran = std::panic::catch_unwind(|| run_case(case));
            let _ = done_tx.send(ran.is_ok());
        });
        let finished = done_rx.recv_timeout(Duration::from_secs(60));
        prop_assert!(finished.is_ok(), "no answer within 60 s (an endless loop?): {label}");
        prop_assert!(finished == Ok(true), "panicked: {label}");
    });
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the process grew by {} MiB over the cases",
        grown >> 20
    );
}
