use http::{HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The clock the layer reads expiry against: milliseconds since the epoch.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Reads a request's client (its scope) from the request's head.
pub type ScopeFn = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;

/// Which client a key belongs to: keys are stored as (scope, key), so two clients that
/// happen to send the same `Idempotency-Key` never get each other's response, nor a 422
/// for a key they never used (Stripe and the IETF draft scope keys the same way).
///
/// The scope's value is stored hashed (SHA-256), never in clear: it may be a credential.
#[derive(Clone)]
pub enum IdempotencyScope {
    /// One scope for everyone: unsafe as soon as two clients can pick the same key (one
    /// gets the other's stored response). Only for a service with a single client, or
    /// keys that are random by contract.
    Global,
    /// The value of this request header: the API key, `Authorization`, a tenant id. A
    /// request with a key but without this header is refused (400).
    Header(HeaderName),
    /// Whatever this function reads from the request, e.g. the authenticated principal a
    /// layer before this one put in the request's extensions. `None`: the request is
    /// refused (400).
    Custom(ScopeFn),
}

impl IdempotencyScope {
    /// The scope of a request (before hashing), or the 400 that says what is missing.
    pub(crate) fn of(
        &self,
        parts: &http::request::Parts,
        key_header: &HeaderName,
    ) -> Result<Vec<u8>, (StatusCode, String)> {
        let missing = |what: String| {
            (
                StatusCode::BAD_REQUEST,
                format!("{key_header} is scoped per client: {what}"),
            )
        };
        match self {
            IdempotencyScope::Global => Ok(Vec::new()),
            IdempotencyScope::Header(name) => parts
                .headers
                .get(name)
                .map(|v: &HeaderValue| v.as_bytes().to_vec())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| missing(format!("the request needs the {name} header"))),
            IdempotencyScope::Custom(scope) => scope(parts)
                .map(String::into_bytes)
                .ok_or_else(|| missing("the request's client is unknown".to_owned())),
        }
    }
}

impl std::fmt::Debug for IdempotencyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdempotencyScope::Global => f.write_str("Global"),
            IdempotencyScope::Header(name) => f.debug_tuple("Header").field(name).finish(),
            IdempotencyScope::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Options of the [`IdempotencyLayer`](super::IdempotencyLayer).
#[derive(Clone)]
pub struct IdempotencyOptions {
    /// The request header carrying the key. Default `Idempotency-Key`.
    pub header: HeaderName,
    /// Which client a key belongs to. Default: the `Authorization` header
    /// ([`IdempotencyScope::Header`]); a request with a key but no `Authorization` gets
    /// 400.
    pub scope: IdempotencyScope,
    /// How long a key's response is kept. Default 24 h (Stripe's).
    pub ttl: Duration,
    /// How long a request's claim on its key lasts without renewal. The layer renews it
    /// every third of this while the handler runs, so it bounds only how long a key stays
    /// blocked (409) after the process holding it died: a retry after that runs the
    /// request. Default 10 s; valid > 0 (smaller than 3 ms is treated as 3 ms).
    pub claim_lease: Duration,
    /// Largest request or response body buffered. A larger request gets 413; a larger
    /// response reaches its client in full but is not stored: its repeats get 409 saying
    /// so, and the handler does not run again. Default 1 MiB.
    pub max_body_bytes: usize,
    /// How long a repeat waits for the first request with its key to finish before it
    /// answers 409. Default 0: at once (the IETF draft's behaviour).
    pub in_flight_wait: Duration,
    /// How often expired keys are deleted from the store, in the background of a request
    /// (it does not wait for it); `None`: never (purge with
    /// [`IdempotencyLayer::purge_expired`](super::IdempotencyLayer::purge_expired) from a
    /// job of your own). Default every minute: without it, every key ever used would stay
    /// in the store.
    pub purge_every: Option<Duration>,
    /// The time; `SystemTime` by default, injectable for tests.
    pub clock: Clock,
}

impl std::fmt::Debug for IdempotencyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyOptions")
            .field("header", &self.header)
            .field("scope", &self.scope)
            .field("ttl", &self.ttl)
            .field("claim_lease", &self.claim_lease)
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
            scope: IdempotencyScope::Header(http::header::AUTHORIZATION),
            ttl: Duration::from_secs(24 * 3600),
            claim_lease: Duration::from_secs(10),
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

impl IdempotencyOptions {
    /// `claim_lease` in milliseconds, at least 3 (renewed every third).
    pub(crate) fn claim_lease_ms(&self) -> i64 {
        i64::try_from(self.claim_lease.as_millis())
            .unwrap_or(i64::MAX)
            .max(3)
    }
}
