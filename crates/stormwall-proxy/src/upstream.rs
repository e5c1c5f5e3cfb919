//! The way to the upstreams: one pooled HTTP client whose connect timeout follows the
//! configuration (`server.upstream_connect_timeout`, changed by a reload), and what one
//! attempt answers.

use crate::body::{BodyFailure, UpstreamBody};
use http::{HeaderMap, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// The client every route sends through (connections pooled per upstream).
pub(crate) type UpstreamClient = Client<Connector, UpstreamBody>;

/// Builds the client; `connect_timeout` is read at every connect.
pub(crate) fn client(connect_timeout: Arc<AtomicU64>) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http1_writev(false)
        .build(Connector {
            http,
            connect_timeout,
        })
}

/// Connects like hyper's `HttpConnector`, within the timeout the configuration has now.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    http: HttpConnector,
    /// `server.upstream_connect_timeout` in ms (a reload stores the new value).
    connect_timeout: Arc<AtomicU64>,
}

/// A connect that outlasted `server.upstream_connect_timeout`.
#[derive(Debug)]
struct ConnectTimeout(Duration);

impl std::fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connecting to the upstream took longer than server.upstream_connect_timeout ({:?})",
            self.0
        )
    }
}

impl std::error::Error for ConnectTimeout {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    // Boxed: a connect is rare next to the requests a pooled connection carries.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = Duration::from_millis(self.connect_timeout.load(Ordering::Relaxed));
        let connecting = self.http.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimeout(timeout)) as BoxError),
            }
        })
    }
}

/// What one attempt got: the upstream's response, or the client's body failing on the
/// way (which is the client's doing: not transient, never retried, not counted against
/// the upstream by the breaker).
#[derive(Debug)]
pub(crate) enum Attempt {
    Upstream(http::Response<Incoming>),
    ClientBody(BodyFailure),
}

impl stormwall_http::HttpResponse for Attempt {
    fn status_code(&self) -> StatusCode {
        match self {
            Attempt::Upstream(response) => response.status(),
            // As the classifiers see it: a client error, not transient. (The client gets
            // 413, 408 or 400; 408 would count as transient.)
            Attempt::ClientBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn header_map(&self) -> &HeaderMap {
        static NONE: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        match self {
            Attempt::Upstream(response) => response.headers(),
            Attempt::ClientBody(_) => NONE.get_or_init(HeaderMap::new),
        }
    }
}
