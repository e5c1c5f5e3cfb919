//! Helpers: the chaos API on a free loopback port, a minimal HTTP/1.1 client, TCP servers.
#![allow(dead_code)]

use serde_json::Value;
use std::net::SocketAddr;
use stormwall_chaos::ChaosServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The chaos server and its API address.
pub async fn start_api() -> (ChaosServer, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = ChaosServer::new();
    tokio::spawn(server.clone().serve(listener));
    (server, addr)
}

/// One request with `Connection: close`; the status and the body.
pub async fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    request_as(addr, method, path, body, "stormwall-test").await
}

pub async fn request_as(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    user_agent: &str,
) -> (u16, String) {
    try_request(addr, method, path, body, user_agent)
        .await
        .unwrap()
}

/// One request; an error when the connection fails or closes before a status line.
pub async fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    user_agent: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {user_agent}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 0 {
        return Err(std::io::Error::other(format!("no status line: {text:?}")));
    }
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// A client connection with Nagle's algorithm off: a small write goes out at once
/// instead of waiting for the peer's (delayed) ACK of the previous one, which on the
/// paused clock would let time jump ahead.
pub async fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A TCP server echoing every byte back.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A TCP server that sends `bytes` bytes (0, 1, 2, ... mod 251) on each connection, then
/// closes.
pub async fn sending_server(bytes: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(&pattern(bytes)).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

pub fn pattern(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (i % 251) as u8).collect()
}

/// Creates a proxy to `upstream` through the Rust API; its listen address.
pub async fn proxy(server: &ChaosServer, name: &str, upstream: SocketAddr) -> String {
    server
        .create(stormwall_chaos::ProxySpec::new(name, upstream.to_string()))
        .await
        .unwrap()
        .listen
}
