//! The standard handler as a `reqwest_middleware::Middleware`.

use crate::classify::may_retry;
use crate::standard::{authority_key, StandardLayer};
use http::{HeaderValue, Uri};
use reqwest_middleware::{Middleware, Next};
use std::sync::Mutex;

/// The [standard handler](StandardLayer) for `reqwest` through `reqwest-middleware`.
///
/// Rejections by the handler itself (open circuit, full limiter, timeout) come back as
/// `reqwest_middleware::Error::Middleware` whose message is the stormwall error's.
///
/// ```
/// use stormwall_http::{StandardLayer, StandardMiddleware, StandardOptions};
/// let layer = StandardLayer::new(StandardOptions::default()).unwrap();
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(StandardMiddleware::new(layer))
///     .build();
/// # let _ = client;
/// ```
#[derive(Debug, Clone)]
pub struct StandardMiddleware {
    layer: StandardLayer,
}

impl StandardMiddleware {
    /// The middleware for `layer` (they share authorities and breakers).
    pub fn new(layer: StandardLayer) -> Self {
        StandardMiddleware { layer }
    }
}

#[async_trait::async_trait]
impl Middleware for StandardMiddleware {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let shared = self.layer.shared();
        let uri: Uri = request.url().as_str().parse().unwrap_or_default();
        let authority = shared.authority(authority_key(&uri));
        let copy = request.try_clone();
        let by_method = may_retry(
            request.method(),
            request.headers(),
            shared.options().retry.retry_unsafe_methods,
        );
        if by_method && copy.is_none() {
            tracing::debug!(url = %request.url(), "stormwall-http: the body cannot be replayed; sent once, not retried");
        }
        let pipeline = authority.pipeline(by_method && copy.is_some());
        let first = Mutex::new(Some(request));
        // Attempts run one after another (retry, not hedging), so each borrows the
        // extensions in turn.
        let extensions = tokio::sync::Mutex::new(extensions);
        let deadline_header = shared.deadline_header();
        let outcome = pipeline
            .execute(|ctx| {
                let taken = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                let attempt = taken.or_else(|| copy.as_ref().and_then(reqwest::Request::try_clone));
                let (next, extensions) = (next.clone(), &extensions);
                async move {
                    let Some(mut attempt) = attempt else {
                        return Err(reqwest_middleware::Error::Middleware(anyhow::anyhow!(
                            "stormwall-http: request body cannot be replayed"
                        )));
                    };
                    if let (Some(name), Some(remaining)) = (deadline_header, ctx.remaining()) {
                        attempt.headers_mut().insert(
                            name.clone(),
                            HeaderValue::from(remaining.as_millis() as u64),
                        );
                    }
                    let mut extensions = extensions.lock().await;
                    next.run(attempt, &mut extensions).await
                }
            })
            .await;
        outcome.map_err(|e| match e {
            stormwall::Error::Inner(inner) => inner,
            other => reqwest_middleware::Error::Middleware(anyhow::anyhow!("{other}")),
        })
    }
}
