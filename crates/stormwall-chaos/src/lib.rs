#![cfg_attr(docsrs, feature(doc_cfg))]
//! A chaos proxy that speaks Toxiproxy's HTTP API: existing Toxiproxy clients (Python,
//! Node, Go, Ruby, Rust) drive it unmodified.
//!
//! Each *proxy* listens on an address and forwards TCP connections to its upstream; each
//! *toxic* on a proxy changes the bytes of one direction of its connections: `latency`,
//! `bandwidth`, `slow_close`, `timeout`, `reset_peer`, `slicer`, `limit_data`, with a
//! `toxicity` (the chance it applies to a given connection). Toxics on one stream apply in
//! the order they were added; adding or removing one changes live connections at once,
//! without losing data. Each toxic follows Toxiproxy's Go source (docs/chaos.md has each
//! one's semantics); a stream with no toxic is relayed by `splice(2)` on Linux.
//!
//! Use it to prove that a service's resilience works: put it between the service and a
//! dependency, inject faults, and watch the retries, timeouts and breakers act. Do not
//! expose its API beyond loopback: like Toxiproxy it refuses browsers (`403` to a
//! `Mozilla/` user agent) but has no authentication.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! use stormwall_chaos::ChaosServer;
//! let api = tokio::net::TcpListener::bind("127.0.0.1:8474").await?;
//! ChaosServer::new().serve(api).await
//! # }
//! ```
//!
//! The Rust API does what the HTTP API does ([`ChaosServer::create`],
//! [`ChaosServer::add_toxic`], ...), for tests and the demo.

mod api;
mod error;
mod link;
mod proxy;
mod toxic;

pub use api::TOXIPROXY_API_VERSION;
pub use error::ChaosError;
pub use proxy::{ChaosServer, ProxyInfo, ProxySpec};
pub use toxic::{Stream, Toxic, ToxicKind, TOXIC_TYPES};

impl ChaosServer {
    /// The HTTP API as an axum `Router` (to mount elsewhere).
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Serves the HTTP API on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}
