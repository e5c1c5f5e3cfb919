//! The `Idempotency-Key` header as a tower layer (axum, hyper, tonic): the first request
//! with a key runs; a repeat with the same key and payload gets the stored response
//! (`Idempotent-Replayed: true`); a repeat while the first still runs gets 409 (or waits
//! for it, up to `in_flight_wait`); the same key with another payload gets 422.
//! Concurrent duplicates run the handler once: the store claims a key atomically.

use crate::store::{Begin, Store};
use crate::SagaError;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The clock the layer reads expiry against: milliseconds since the epoch.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Options of the [`IdempotencyLayer`].
#[derive(Clone)]
pub struct IdempotencyOptions {
    /// The request header carrying the key. Default `Idempotency-Key`.
    pub header: HeaderName,
    /// How long a key's response is kept. Default 24 h (Stripe's).
    pub ttl: Duration,
    /// Largest request or response body buffered (larger: 413, or the response passes
    /// through unstored). Default 1 MiB.
    pub max_body_bytes: usize,
    /// How long a repeat waits for the first request with its key to finish before it
    /// answers 409. Default 0: at once (the IETF draft's behaviour).
    pub in_flight_wait: Duration,
    /// How often expired keys are deleted from the store, in the background of a request
    /// (it does not wait for it); `None`: never (purge with
    /// [`IdempotencyLayer::purge_expired`] from a job of your own). Default every minute:
    /// without it, every key ever used would stay in the store.
    pub purge_every: Option<Duration>,
    /// The time; `SystemTime` by default, injectable for tests.
    pub clock: Clock,
}

impl std::fmt::Debug for IdempotencyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyOptions")
            .field("header", &self.header)
            .field("ttl", &self.ttl)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("in_flight_wait", &self.in_flight_wait)
            .field("purge_every", &self.purge_every)
            .finish_non_exhaustive()
    }
}

impl Default for IdempotencyOptions {
    fn default() -> Self {
        IdempotencyOptions {
            header: HeaderName::from_static("idempotency-key"),
            ttl: Duration::from_secs(24 * 3600),
            max_body_bytes: 1024 * 1024,
            in_flight_wait: Duration::ZERO,
            purge_every: Some(Duration::from_secs(60)),
            clock: Arc::new(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64)
            }),
        }
    }
}

/// Applies `Idempotency-Key` semantics to a service, keeping keys in a [`Store`].
///
/// ```no_run
/// # async fn run(store: stormwall_saga::SqliteStore) {
/// use axum::{routing::post, Router};
/// use stormwall_saga::{IdempotencyLayer, IdempotencyOptions};
/// let app: Router = Router::new()
///     .route("/orders", post(|| async { "created" }))
///     .layer(IdempotencyLayer::new(store, IdempotencyOptions::default()));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct IdempotencyLayer<S> {
    store: S,
    options: Arc<IdempotencyOptions>,
    /// When expired keys were last purged (the clock's milliseconds), shared by every
    /// service the layer makes.
    purged_at: Arc<AtomicI64>,
}

impl<S: Store> IdempotencyLayer<S> {
    /// A layer keeping keys in `store`.
    pub fn new(store: S, options: IdempotencyOptions) -> Self {
        IdempotencyLayer {
            store,
            options: Arc::new(options),
            purged_at: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }

    /// Deletes the keys expired by now (on the options' clock); how many.
    pub async fn purge_expired(&self) -> Result<usize, SagaError> {
        self.store
            .idempotency_purge_expired((self.options.clock)())
            .await
    }
}

impl<S: Clone, I> tower_layer::Layer<I> for IdempotencyLayer<S> {
    type Service = IdempotencyService<S, I>;
    fn layer(&self, inner: I) -> Self::Service {
        IdempotencyService {
            store: self.store.clone(),
            options: self.options.clone(),
            purged_at: self.purged_at.clone(),
            inner,
        }
    }
}

/// The service of [`IdempotencyLayer`].
#[derive(Debug, Clone)]
pub struct IdempotencyService<S, I> {
    store: S,
    options: Arc<IdempotencyOptions>,
    purged_at: Arc<AtomicI64>,
    inner: I,
}

/// Starts a background purge of expired keys when the last one is `purge_every` old (one
/// caller wins the turn; the request does not wait for it).
fn purge_when_due<S: Store>(
    store: &S,
    options: &IdempotencyOptions,
    purged_at: &AtomicI64,
    now_ms: i64,
) {
    let Some(every) = options.purge_every else {
        return;
    };
    let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
    let last = purged_at.load(Ordering::Relaxed);
    if now_ms.saturating_sub(last) < every
        || purged_at
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let store = store.clone();
    runtime.spawn(async move {
        if let Err(e) = store.idempotency_purge_expired(now_ms).await {
            tracing::warn!(error = %e, "stormwall idempotency: could not purge expired keys");
        }
    });
}

fn plain<B: From<Bytes>>(status: StatusCode, message: String) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from(message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Forgets a claimed key if the request never finished (its future was dropped, or the
/// handler failed): a retry may run again instead of meeting 409 until the key expires.
struct Claim<S: Store> {
    store: S,
    key: Option<String>,
}

impl<S: Store> Drop for Claim<S> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let store = self.store.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = store.idempotency_abandon(&key).await {
                        tracing::warn!(%key, error = %e, "stormwall idempotency: could not release a key");
                    }
                });
            }
        }
    }
}

/// Stored response: status (2 bytes), header count (4), then each header's name and
/// value (each length-prefixed, 4 bytes), then the body.
fn encode(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        for part in [name.as_str().as_bytes(), value.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(body);
    out
}

fn decode<B: From<Bytes>>(stored: &[u8]) -> Option<Response<B>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if input.len() < n {
            return None;
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Some(head)
    }
    fn length(input: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(input, 4)?.try_into().ok()?) as usize)
    }
    let mut input = stored;
    let status =
        StatusCode::from_u16(u16::from_be_bytes(take(&mut input, 2)?.try_into().ok()?)).ok()?;
    let count = length(&mut input)?;
    let mut response = Response::new(B::from(Bytes::new()));
    for _ in 0..count {
        let n = length(&mut input)?;
        let name = HeaderName::from_bytes(take(&mut input, n)?).ok()?;
        let n = length(&mut input)?;
        let value = HeaderValue::from_bytes(take(&mut input, n)?).ok()?;
        response.headers_mut().append(name, value);
    }
    *response.body_mut() = B::from(Bytes::copy_from_slice(input));
    *response.status_mut() = status;
    Some(response)
}

/// A whole body, up to `limit` bytes.
async fn collect<B>(body: B, limit: usize) -> Result<Bytes, String>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| format!("body unreadable or over {limit} bytes: {e}"))
}

fn fingerprint(parts: &http::request::Parts, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str().as_bytes());
    hash.update(b"\n");
    hash.update(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    hash.update(b"\n");
    hash.update(body);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl<S, I, B, RB> tower_service::Service<Request<B>> for IdempotencyService<S, I>
where
    S: Store,
    I: tower_service::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    I::Future: Send,
    I::Error: Send,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    RB: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<RB>;
    type Error = I::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, I::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready inner service serves this request; its clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(key) = request.headers().get(&self.options.header).cloned() else {
            return Box::pin(inner.call(request));
        };
        let (store, options) = (self.store.clone(), self.options.clone());
        purge_when_due(&store, &options, &self.purged_at, (options.clock)());
        Box::pin(async move {
            let key = match key.to_str() {
                Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_owned(),
                _ => {
                    return Ok(plain(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "header {}: a key of 1 to 255 visible ASCII characters",
                            options.header
                        ),
                    ))
                }
            };
            let (parts, body) = request.into_parts();
            let body = match collect(body, options.max_body_bytes).await {
                Ok(body) => body,
                Err(e) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, format!("request {e}"))),
            };
            let fingerprint = fingerprint(&parts, &body);
            let ttl = options.ttl.as_millis() as i64;
            let waited_since = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(5);
            loop {
                let begun = store
                    .idempotency_begin(&key, &fingerprint, (options.clock)(), ttl)
                    .await;
                match begun {
                    Err(e) => {
                        // Without the record, running could do the work twice: refuse.
                        return Ok(plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("idempotency store unavailable: {e}"),
                        ));
                    }
                    Ok(Begin::Mismatch) => {
                        return Ok(plain(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            format!(
                                "{} {key:?} was used with a different request",
                                options.header
                            ),
                        ))
                    }
                    Ok(Begin::Completed(stored)) => {
                        return Ok(match decode::<RB>(&stored) {
                            Some(mut response) => {
                                response.headers_mut().insert(
                                    HeaderName::from_static("idempotent-replayed"),
                                    HeaderValue::from_static("true"),
                                );
                                response
                            }
                            None => plain(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                format!(
                                    "the stored response of {} {key:?} is corrupt",
                                    options.header
                                ),
                            ),
                        })
                    }
                    Ok(Begin::InProgress) => {
                        if waited_since.elapsed() >= options.in_flight_wait {
                            let mut response = plain(
                                StatusCode::CONFLICT,
                                format!("a request with {} {key:?} is in progress", options.header),
                            );
                            response
                                .headers_mut()
                                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                            return Ok(response);
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(200));
                    }
                    Ok(Begin::Started) => break,
                }
            }
            let mut claim = Claim {
                store: store.clone(),
                key: Some(key.clone()),
            };
            let response = inner
                .call(Request::from_parts(parts, B::from(body)))
                .await?;
            // 5xx: the work may not have happened; a retry should run it (the claim's
            // drop releases the key).
            if response.status().is_server_error() {
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = match collect(body, options.max_body_bytes).await {
                Ok(body) => body,
                Err(e) => return Ok(plain(StatusCode::BAD_GATEWAY, format!("response {e}"))),
            };
            let stored = encode(parts.status, &parts.headers, &body);
            match store.idempotency_complete(&key, stored).await {
                Ok(()) => claim.key = None,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "stormwall idempotency: response not stored; the key is released")
                }
            }
            Ok(Response::from_parts(parts, RB::from(body)))
        })
    }
}
