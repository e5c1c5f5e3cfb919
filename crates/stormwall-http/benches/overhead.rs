//! The standard handler's cost over a plain hyper client, on the happy path, over loopback:
//! both clients in the same run, the ratio is what counts (goal ≤ 1.05).
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::{BodyExt, Full};
use stormwall_http::{StandardLayer, StandardOptions};
use tower::{Layer, Service, ServiceExt};

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });
    let uri = format!("http://{addr}/");
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let standard = StandardLayer::new(StandardOptions::default())
        .unwrap()
        .layer(plain.clone());
    let mut g = c.benchmark_group("GET over loopback");
    g.bench_function("hyper-util client", |b| {
        b.to_async(&rt).iter(|| {
            let mut client = plain.clone();
            let request = Request::get(&uri).body(Full::default()).unwrap();
            async move {
                let response = client.ready().await.unwrap().call(request).await.unwrap();
                response.into_body().collect().await.unwrap();
            }
        })
    });
    g.bench_function("hyper-util client + standard handler", |b| {
        b.to_async(&rt).iter(|| {
            let mut client = standard.clone();
            let request = Request::get(&uri).body(Full::default()).unwrap();
            async move {
                let response = client.ready().await.unwrap().call(request).await.unwrap();
                response.into_body().collect().await.unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
