//! The floor under `bench/proxy.sh`: the least a hyper reverse proxy does — the same server
//! and client crates and settings as the sidecar (hyper-util's pooled client, writev off,
//! TCP_NODELAY, mimalloc, one current-thread runtime), with no routing, no resilience
//! pipeline, no telemetry and no header rewriting. What separates it from haproxy is the
//! HTTP stack's; what separates the sidecar from it is stormwall's.
//!
//! `cargo run --release -p stormwall-proxy --example hyper_floor -- LISTEN UPSTREAM`
//! (both `host:port`, loopback in the bench).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: hyper_floor LISTEN UPSTREAM (host:port each)".into());
    };
    let authority: http::uri::Authority = upstream.parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, authority))
}

async fn serve(
    listen: String,
    upstream: http::uri::Authority,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(&listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http1_writev(false)
        .build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move { Ok::<_, hyper::Error>(forward(&client, upstream, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .writev(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: &Client<HttpConnector, Full<Bytes>>,
    upstream: http::uri::Authority,
    request: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, _) = request.into_parts();
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTP);
    target.authority = Some(upstream);
    target.path_and_query = parts.uri.path_and_query().cloned();
    let mut attempt = Request::new(Full::new(Bytes::new()));
    *attempt.method_mut() = parts.method;
    *attempt.headers_mut() = std::mem::take(&mut parts.headers);
    match http::Uri::from_parts(target) {
        Ok(uri) => *attempt.uri_mut() = uri,
        Err(_) => return status(StatusCode::BAD_REQUEST),
    }
    match client.request(attempt).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = code;
    response
}
