use super::body::IdempotencyBody;
use super::options::IdempotencyOptions;
use super::record;
use crate::store::{Begin, ClaimLease, ScopedKey, Store};
use crate::SagaError;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Applies `Idempotency-Key` semantics to a service, keeping keys in a [`Store`].
///
/// ```no_run
/// # async fn run(store: stormwall_saga::SqliteStore) {
/// use axum::{routing::post, Router};
/// use stormwall_saga::{IdempotencyLayer, IdempotencyOptions, IdempotencyScope};
/// let app: Router = Router::new()
///     .route("/orders", post(|| async { "created" }))
///     .layer(IdempotencyLayer::new(
///         store,
///         IdempotencyOptions {
///             // Keys belong to the API key that sent them.
///             scope: IdempotencyScope::Header(http::HeaderName::from_static("x-api-key")),
///             ..Default::default()
///         },
///     ));
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

fn plain<B>(status: StatusCode, message: String) -> Response<IdempotencyBody<B>> {
    let mut response = Response::new(IdempotencyBody::whole(Bytes::from(message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A request's hold on its key. Armed while the store may be claiming the key for it and
/// from [`Begin::Started`] until its response is stored: dropped then (the caller gave up,
/// the handler failed), it releases the key so that a retry runs instead of meeting 409.
/// While the handler runs, a task renews the claim's lease every third of it.
struct Claim<S: Store> {
    store: S,
    scope: String,
    key: String,
    /// The token naming this request's claim: only its holder can renew, complete or
    /// release it.
    owner: String,
    /// Renews the lease once the key is claimed; aborted when the claim ends.
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// Whether dropping the claim releases the key.
    armed: bool,
}

impl<S: Store> Claim<S> {
    fn new(store: S, scope: String, key: String) -> Self {
        Claim {
            store,
            scope,
            key,
            owner: record::claim_owner(),
            renewal: None,
            armed: false,
        }
    }

    fn key(&self) -> ScopedKey<'_> {
        ScopedKey {
            scope: &self.scope,
            key: &self.key,
        }
    }

    /// Asks the store for the key (armed meanwhile: a caller that gives up while the
    /// store answers releases what it may have claimed).
    async fn begin(
        &mut self,
        fingerprint: &str,
        options: &IdempotencyOptions,
    ) -> Result<Begin, SagaError> {
        let claim = ClaimLease {
            owner: &self.owner,
            now_ms: (options.clock)(),
            lease_ms: options.claim_lease_ms(),
        };
        let ttl = i64::try_from(options.ttl.as_millis()).unwrap_or(i64::MAX);
        self.armed = true;
        let begun = self
            .store
            .idempotency_begin(self.key(), fingerprint, claim, ttl)
            .await;
        self.armed = matches!(begun, Ok(Begin::Started));
        begun
    }

    /// Renews the claim's lease in the background until the claim ends.
    fn keep_renewed(&mut self, options: Arc<IdempotencyOptions>) {
        let (store, scope, key, owner) = (
            self.store.clone(),
            self.scope.clone(),
            self.key.clone(),
            self.owner.clone(),
        );
        self.renewal = Some(tokio::spawn(async move {
            let lease_ms = options.claim_lease_ms();
            let every = Duration::from_millis((lease_ms / 3) as u64);
            loop {
                tokio::time::sleep(every).await;
                let claim = ClaimLease {
                    owner: &owner,
                    now_ms: (options.clock)(),
                    lease_ms,
                };
                let key = ScopedKey {
                    scope: &scope,
                    key: &key,
                };
                match store.idempotency_renew(key, claim).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(key = %key.key, "stormwall idempotency: the claim ran out and another request took the key over");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(key = %key.key, error = %e, "stormwall idempotency: could not renew a claim");
                    }
                }
            }
        }));
    }

    /// Stores the response (whole, or `replayable: false`: its head only).
    async fn complete(&mut self, response: Vec<u8>, replayable: bool) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        match self
            .store
            .idempotency_complete(self.key(), &self.owner, response, replayable)
            .await
        {
            Ok(true) => self.armed = false,
            Ok(false) => {
                tracing::warn!(key = %self.key, "stormwall idempotency: the claim ran out before the response was stored; it is not kept")
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "stormwall idempotency: response not stored; the key is released")
            }
        }
    }
}

impl<S: Store> Drop for Claim<S> {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        if !self.armed {
            return;
        }
        let (store, scope, key, owner) = (
            self.store.clone(),
            std::mem::take(&mut self.scope),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.owner),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let scoped = ScopedKey {
                    scope: &scope,
                    key: &key,
                };
                if let Err(e) = store.idempotency_abandon(scoped, &owner).await {
                    tracing::warn!(%key, error = %e, "stormwall idempotency: could not release a key");
                }
            });
        }
    }
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

/// A response body read up to a limit.
enum Read<B> {
    /// All of it.
    Whole(Bytes),
    /// Over the limit: what was read, and the rest still to send.
    TooLarge(VecDeque<Bytes>, Pin<Box<B>>),
}

/// Reads `body` until its end or past `limit` bytes (trailers are not kept).
async fn read_up_to<B>(body: B, limit: usize) -> Result<Read<B>, String>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = Box::pin(body);
    let mut read = VecDeque::new();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("response body unreadable: {}", e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        length += data.len();
        read.push_back(data);
        if length > limit {
            return Ok(Read::TooLarge(read, body));
        }
    }
    Ok(Read::Whole(match read.len() {
        1 => read.pop_front().unwrap_or_default(),
        _ => read.into_iter().flatten().collect(),
    }))
}

/// The answer to a repeat of a request that completed.
fn replay<B>(
    options: &IdempotencyOptions,
    key: &str,
    stored: &[u8],
    replayable: bool,
) -> Response<IdempotencyBody<B>> {
    let Some(response) = record::decode(stored) else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the stored response of {} {key:?} is corrupt",
                options.header
            ),
        );
    };
    if !replayable {
        return plain(
            StatusCode::CONFLICT,
            format!(
                "the request with {} {key:?} completed ({}), but its response was over \
                 max_body_bytes ({} bytes) and was not kept: it cannot be replayed, and the \
                 request is not run again",
                options.header,
                response.status(),
                options.max_body_bytes
            ),
        );
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static("true"),
    );
    Response::from_parts(parts, IdempotencyBody::whole(body))
}

impl<S, I, B, RB> tower_service::Service<Request<B>> for IdempotencyService<S, I>
where
    S: Store,
    I: tower_service::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    I::Future: Send,
    I::Error: Send,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<IdempotencyBody<RB>>;
    type Error = I::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, I::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready inner service serves this request; its clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(key) = request.headers().get(&self.options.header).cloned() else {
            let response = inner.call(request);
            return Box::pin(async move { Ok(response.await?.map(IdempotencyBody::handler)) });
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
            let scope = match options.scope.of(&parts, &options.header) {
                Ok(scope) => record::scope_id(&scope),
                Err((status, why)) => return Ok(plain(status, why)),
            };
            let body = match collect(body, options.max_body_bytes).await {
                Ok(body) => body,
                Err(e) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, format!("request {e}"))),
            };
            let fingerprint = record::fingerprint(&parts, &body);
            let mut claim = Claim::new(store, scope, key.clone());
            let waited_since = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(5);
            loop {
                match claim.begin(&fingerprint, &options).await {
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
                        return Ok(replay(&options, &key, &stored, true))
                    }
                    Ok(Begin::CompletedUnstored(stored)) => {
                        return Ok(replay(&options, &key, &stored, false))
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
            claim.keep_renewed(options.clone());
            let response = inner
                .call(Request::from_parts(parts, B::from(body)))
                .await?;
            // 5xx: the work may not have happened; a retry should run it (the claim's
            // drop releases the key).
            if response.status().is_server_error() {
                return Ok(response.map(IdempotencyBody::handler));
            }
            let (parts, body) = response.into_parts();
            match read_up_to(body, options.max_body_bytes).await {
                Ok(Read::Whole(body)) => {
                    claim
                        .complete(record::encode(parts.status, &parts.headers, &body), true)
                        .await;
                    Ok(Response::from_parts(parts, IdempotencyBody::whole(body)))
                }
                Ok(Read::TooLarge(read, rest)) => {
                    // The handler ran: its repeats must not run it again. Keep what can be
                    // kept (status, headers) and stream the rest to this client.
                    claim
                        .complete(record::encode(parts.status, &parts.headers, &[]), false)
                        .await;
                    Ok(Response::from_parts(
                        parts,
                        IdempotencyBody::rest(read, rest),
                    ))
                }
                Err(e) => Ok(plain(StatusCode::BAD_GATEWAY, e)),
            }
        })
    }
}
