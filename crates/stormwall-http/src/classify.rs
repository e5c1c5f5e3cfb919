//! What counts as a transient failure, which requests may be retried, and `Retry-After`.

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use stormwall::pipeline::Predicate;
use stormwall::retry::DelayGenerator;
use stormwall::Error;

/// A response as the handler reads it: `http::Response<B>` and `reqwest::Response`.
pub trait HttpResponse {
    /// The status code.
    fn status_code(&self) -> StatusCode;
    /// The headers.
    fn header_map(&self) -> &HeaderMap;
}

impl<B> HttpResponse for http::Response<B> {
    fn status_code(&self) -> StatusCode {
        self.status()
    }
    fn header_map(&self) -> &HeaderMap {
        self.headers()
    }
}

impl HttpResponse for reqwest::Response {
    fn status_code(&self) -> StatusCode {
        self.status()
    }
    fn header_map(&self) -> &HeaderMap {
        self.headers()
    }
}

/// How one attempt ended, as a classifier sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response arrived with this status.
    Status(StatusCode),
    /// The request failed before a response (connect error, reset, ...).
    ConnectionError,
    /// The attempt timeout fired.
    Timeout,
}

/// Decides whether an attempt's outcome is a transient failure: retried, and counted by
/// the breaker. Replaces [`is_transient`] when set with `StandardLayer::classifier`.
pub type Classifier = Arc<dyn Fn(AttemptOutcome) -> bool + Send + Sync>;

/// The standard classification: 5xx, 408, 429, connection errors and attempt timeouts are
/// transient; other statuses (2xx, 3xx, other 4xx) are not.
pub fn is_transient(outcome: AttemptOutcome) -> bool {
    match outcome {
        AttemptOutcome::Status(status) => {
            status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
        }
        AttemptOutcome::ConnectionError | AttemptOutcome::Timeout => true,
    }
}

/// The retry and breaker predicate: a transient failure by the classifier. Rejections by
/// other strategies (open circuit, full limiter) are never transient.
#[derive(Clone, Default)]
pub struct Transient {
    classifier: Option<Classifier>,
}

impl Transient {
    /// With `classifier` instead of [`is_transient`].
    pub fn new(classifier: Option<Classifier>) -> Self {
        Transient { classifier }
    }
}

impl std::fmt::Debug for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transient")
            .field("custom", &self.classifier.is_some())
            .finish()
    }
}

impl<R: HttpResponse, E> Predicate<R, E> for Transient {
    fn test(&self, outcome: &Result<R, Error<E>>) -> bool {
        let attempt = match outcome {
            Ok(response) => AttemptOutcome::Status(response.status_code()),
            Err(Error::Inner(_)) => AttemptOutcome::ConnectionError,
            Err(Error::Timeout(_)) => AttemptOutcome::Timeout,
            Err(_) => return false,
        };
        match &self.classifier {
            Some(classify) => classify(attempt),
            None => is_transient(attempt),
        }
    }
}

/// Waits what a 429 or 503 response's `Retry-After` asks (seconds or an HTTP date), capped
/// at `max`; other outcomes keep the computed backoff. A malformed value is ignored (with
/// a debug event). The retry never sleeps past the total timeout: a wait that would end
/// after it returns the response at once.
#[derive(Debug, Clone, Copy)]
pub struct RetryAfter {
    /// The longest wait honoured.
    pub max: Duration,
}

impl<R: HttpResponse, E> DelayGenerator<R, E> for RetryAfter {
    fn delay(&self, outcome: &Result<R, Error<E>>, _attempt: u32) -> Option<Duration> {
        let Ok(response) = outcome else {
            return None;
        };
        let status = response.status_code();
        if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        let value = response.header_map().get(RETRY_AFTER)?;
        match parse_retry_after(value, SystemTime::now()) {
            Some(wait) => Some(wait.min(self.max)),
            None => {
                tracing::debug!(value = ?value, "stormwall-http: malformed Retry-After ignored; normal backoff");
                None
            }
        }
    }
}

/// A `Retry-After` value as a wait from `now`: delta-seconds or an HTTP date (a date in
/// the past is no wait). `None` when malformed.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The header that makes a POST or PATCH safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether a request may be retried by its method: GET, HEAD, OPTIONS, PUT, DELETE and
/// TRACE are idempotent; others only with an `Idempotency-Key` header or the opt-in.
pub fn may_retry(method: &Method, headers: &HeaderMap, retry_unsafe_methods: bool) -> bool {
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    idempotent || retry_unsafe_methods || headers.contains_key(IDEMPOTENCY_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_standard_handler() {
        for (code, transient) in [
            (200, false),
            (404, false),
            (400, false),
            (408, true),
            (429, true),
            (500, true),
            (503, true),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(
                is_transient(AttemptOutcome::Status(status)),
                transient,
                "{code}"
            );
        }
        assert!(is_transient(AttemptOutcome::ConnectionError));
        assert!(is_transient(AttemptOutcome::Timeout));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_ignores_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            parse_retry_after(&v("7"), now),
            Some(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&v(&date), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&v(&past), now), Some(Duration::ZERO));
        for garbage in ["soon", "-1", "1.5", "", "Mon, 99 Foo 2024"] {
            assert_eq!(parse_retry_after(&v(garbage), now), None, "{garbage:?}");
        }
        assert_eq!(
            parse_retry_after(&HeaderValue::from_bytes(b"\xff").unwrap(), now),
            None
        );
    }

    #[test]
    fn unsafe_methods_need_a_key_or_the_opt_in() {
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k1"));
        assert!(may_retry(&Method::GET, &none, false));
        assert!(may_retry(&Method::PUT, &none, false));
        assert!(!may_retry(&Method::POST, &none, false));
        assert!(!may_retry(&Method::PATCH, &none, false));
        assert!(may_retry(&Method::POST, &keyed, false));
        assert!(may_retry(&Method::PATCH, &none, true));
    }
}
