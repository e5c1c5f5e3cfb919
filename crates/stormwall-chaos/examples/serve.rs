//! The chaos proxy's API on an address, as `stormwall chaos --listen` serves it (the same
//! `ChaosServer` on a multi-thread runtime), without building the whole CLI: used by
//! `bench/chaos.sh`.
//!
//! ```sh
//! cargo run --release -p stormwall-chaos --example serve -- 127.0.0.1:8474
//! ```

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8474".into());
    let api = tokio::net::TcpListener::bind(&listen).await?;
    stormwall_chaos::ChaosServer::new().serve(api).await
}
