//! The mock dependencies of the order flow: payment, inventory, notification. Each is a
//! real HTTP service on loopback that counts the requests it served.

use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A running mock service.
pub struct Service {
    pub addr: SocketAddr,
    pub served: Arc<AtomicU64>,
}

impl Service {
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// Starts payment (`POST /charge`), inventory (`GET /stock`) and notification
/// (`POST /notify`), each on its own free loopback port.
pub async fn start() -> std::io::Result<[Service; 3]> {
    Ok([
        serve("/charge", true, "charged").await?,
        serve("/stock", false, "in stock").await?,
        serve("/notify", true, "sent").await?,
    ])
}

async fn serve(path: &str, is_post: bool, answer: &'static str) -> std::io::Result<Service> {
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let handler = move || {
        counter.fetch_add(1, Ordering::Relaxed);
        async move { answer }
    };
    let route = if is_post { post(handler) } else { get(handler) };
    let app = axum::Router::new().route(path, route);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Service { addr, served })
}
