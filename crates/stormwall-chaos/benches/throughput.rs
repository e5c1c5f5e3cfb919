//! Bytes through the chaos proxy with no toxics, against the same transfer direct, in one
//! run: the proxy's goal is ≥ 90 % of direct loopback throughput.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::net::SocketAddr;
use stormwall_chaos::{ChaosServer, ProxySpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BYTES: usize = 32 * 1024 * 1024;

/// Reads everything a connection sends, then answers one byte.
async fn sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 256 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = stream.write_all(b"k").await;
            });
        }
    });
    addr
}

/// The reference: a bare proxy that only runs `tokio::io::copy_bidirectional`.
async fn plain_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut server = TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    addr
}

async fn transfer(addr: &str, data: &[u8]) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(data).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut ack = [0; 1];
    conn.read_exact(&mut ack).await.unwrap();
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (direct, proxied, plain) = rt.block_on(async {
        let upstream = sink().await;
        let chaos = ChaosServer::new();
        let proxy = chaos
            .create(ProxySpec::new("bench", upstream.to_string()))
            .await
            .unwrap();
        // Keep the server (and so the proxy) alive for the whole run.
        std::mem::forget(chaos);
        let plain = plain_proxy(upstream).await.to_string();
        (upstream.to_string(), proxy.listen, plain)
    });
    let data = vec![7u8; BYTES];
    let mut g = c.benchmark_group("loopback 32 MiB");
    g.throughput(Throughput::Bytes(BYTES as u64));
    g.sample_size(20);
    g.bench_function("direct", |b| {
        b.to_async(&rt).iter(|| transfer(&direct, &data))
    });
    g.bench_function("through tokio::io::copy_bidirectional (reference)", |b| {
        b.to_async(&rt).iter(|| transfer(&plain, &data))
    });
    g.bench_function("through the chaos proxy, no toxics", |b| {
        b.to_async(&rt).iter(|| transfer(&proxied, &data))
    });
    g.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
