//! One circuit breaker per key (tenant, endpoint), with bounded memory.

use super::{CircuitBreaker, CircuitBreakerOptions, CircuitState};
use crate::keyed::Keyed;
use crate::pipeline::{Attach, Context, OnError, Predicate, Strategy};
use crate::telemetry::Telemetry;
use crate::Error;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tower_layer::Layer;
use tower_service::Service;

/// A circuit breaker per [`Context::key`]: one tenant's or endpoint's failures open only
/// its own circuit. Calls without a key share a default breaker.
///
/// At most `max_keys` breakers are kept, in least-recently-used order. A new key at the
/// limit takes the place of the least recently used breaker that is closed and has no call
/// in flight (forgetting it loses only its window's counts); open, half-open, isolated or
/// disabled breakers are never forgotten. When none of the few least recently used can go
/// (looked up in O(1), not by a scan), the call runs through the default breaker instead —
/// it is still protected, memory stays bounded.
///
/// Clones share the breakers. Every breaker is built from the same options; per-key
/// transitions reach the pipeline's listener like any breaker's.
///
/// ```
/// use std::time::Duration;
/// use stormwall::{Context, Error, Pipeline};
/// use stormwall::circuit_breaker::{CircuitBreakerOptions, CircuitState, KeyedCircuitBreaker};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let breakers = KeyedCircuitBreaker::new(CircuitBreakerOptions::consecutive(2), 10_000).unwrap();
/// let pipeline = Pipeline::builder().strategy(breakers.clone()).build().unwrap();
/// let tenant = |name: &str| Context::new().with_key(name);
///
/// for _ in 0..2 {
///     let _ = pipeline.execute_with(tenant("a"), |_| async { Err::<(), _>("down") }).await;
/// }
/// assert_eq!(breakers.state("a"), Some(CircuitState::Open));
/// // Tenant b is not affected by tenant a's outage.
/// assert_eq!(pipeline.execute_with(tenant("b"), |_| async { Ok::<_, &str>(()) }).await, Ok(()));
/// # }
/// ```
pub struct KeyedCircuitBreaker<P = OnError> {
    options: Arc<CircuitBreakerOptions<P>>,
    default: Arc<CircuitBreaker<P>>,
    by_key: Arc<Keyed<CircuitBreaker<P>>>,
    /// Set once by `attach` when the pipeline is built; handed to each breaker made.
    telemetry: Telemetry,
}

impl<P> Clone for KeyedCircuitBreaker<P> {
    // Not derived: clones share the breakers, so `P` need not be `Clone`.
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            options: Arc::clone(&self.options),
            default: Arc::clone(&self.default),
            by_key: Arc::clone(&self.by_key),
            telemetry: self.telemetry.clone(),
        }
    }
}

impl<P> std::fmt::Debug for KeyedCircuitBreaker<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

impl<P: Clone> KeyedCircuitBreaker<P> {
    /// Breakers with `options` each (validated), for at most `max_keys` keys at once.
    pub fn new(
        options: CircuitBreakerOptions<P>,
        max_keys: usize,
    ) -> Result<Self, crate::ConfigError> {
        let default = CircuitBreaker::new(options.clone())?;
        Ok(KeyedCircuitBreaker {
            options: Arc::new(options),
            default: Arc::new(default),
            by_key: Arc::new(Keyed::new(max_keys, "circuit_breaker.max_keys")?),
            telemetry: Telemetry::default(),
        })
    }

    /// The breaker of `key`, made on first use; the default breaker when `key` is `None`
    /// or when no room can be made for it.
    pub fn breaker(&self, key: Option<&str>) -> Arc<CircuitBreaker<P>> {
        let Some(key) = key else {
            return Arc::clone(&self.default);
        };
        let made = self.by_key.get_or_make(
            key,
            // Forgetting a closed breaker nobody is calling loses only its counts.
            |b| b.state() == CircuitState::Closed,
            || {
                let breaker = CircuitBreaker::from_validated(self.options.as_ref().clone());
                breaker.report_to(&self.telemetry);
                breaker
            },
        );
        made.unwrap_or_else(|| Arc::clone(&self.default))
    }
}

impl<P> KeyedCircuitBreaker<P> {
    /// How many keys have a breaker now.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// The state of `key`'s breaker, if it has one (looking counts as a use).
    pub fn state(&self, key: &str) -> Option<CircuitState> {
        self.by_key.get(key).map(|b| b.state())
    }

    /// The breaker for calls without a key.
    pub fn default_breaker(&self) -> &CircuitBreaker<P> {
        &self.default
    }
}

impl<P> Attach for KeyedCircuitBreaker<P> {
    fn attach(&mut self, telemetry: &Telemetry) {
        self.telemetry = telemetry.clone();
        self.default.report_to(telemetry);
    }
}

impl<T, E, P> Strategy<T, E> for KeyedCircuitBreaker<P>
where
    P: Predicate<T, E> + Clone + Send + Sync,
{
    fn execute<F, Fut>(
        &self,
        ctx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send
    where
        F: Fn(Context) -> Fut + Copy + Send + Sync,
        Fut: Future<Output = Result<T, Error<E>>> + Send,
        T: Send,
        E: Send,
    {
        let breaker = self.breaker(ctx.key());
        async move { breaker.execute(ctx, op).await }
    }
}

/// A [`KeyedCircuitBreaker`] as a tower layer: `key` names each request's breaker
/// (a tenant header, the request's authority), `None` for the default breaker.
///
/// A request whose circuit is open fails at once with [`Error::CircuitOpen`]; the inner
/// service's error comes back as [`Error::Inner`]. The service is always ready: the inner
/// service's readiness is awaited inside the breaker's permit.
pub struct KeyedCircuitBreakerLayer<P, K> {
    breakers: KeyedCircuitBreaker<P>,
    key: Arc<K>,
}

impl<P, K> Clone for KeyedCircuitBreakerLayer<P, K> {
    // Not derived: clones share the breakers and the key function.
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            breakers: self.breakers.clone(),
            key: Arc::clone(&self.key),
        }
    }
}

impl<P, K> KeyedCircuitBreakerLayer<P, K> {
    /// A layer guarding each request with the breaker of the key `key` returns for it:
    /// any `Fn(&Request) -> Option<String>`.
    pub fn new(breakers: KeyedCircuitBreaker<P>, key: K) -> Self {
        KeyedCircuitBreakerLayer {
            breakers,
            key: Arc::new(key),
        }
    }
}

impl<P, K, S> Layer<S> for KeyedCircuitBreakerLayer<P, K> {
    type Service = KeyedCircuitBreakerService<P, K, S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreakerService {
            breakers: self.breakers.clone(),
            key: Arc::clone(&self.key),
            inner,
        }
    }
}

/// The service [`KeyedCircuitBreakerLayer`] makes.
pub struct KeyedCircuitBreakerService<P, K, S> {
    breakers: KeyedCircuitBreaker<P>,
    key: Arc<K>,
    inner: S,
}

impl<P, K, S: Clone> Clone for KeyedCircuitBreakerService<P, K, S> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerService {
            breakers: self.breakers.clone(),
            key: Arc::clone(&self.key),
            inner: self.inner.clone(),
        }
    }
}

/// The boxed response future of [`KeyedCircuitBreakerService`].
pub type KeyedResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, Error<E>>> + Send>>;

impl<P, K, S, Req> Service<Req> for KeyedCircuitBreakerService<P, K, S>
where
    P: Predicate<S::Response, S::Error> + Clone + Send + Sync + 'static,
    K: Fn(&Req) -> Option<String>,
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = KeyedResponseFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let breaker = self.breakers.breaker((self.key)(&request).as_deref());
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let mut permit = match breaker.try_acquire() {
                Ok(permit) => permit,
                Err(rejected) => {
                    return Err(Error::CircuitOpen {
                        retry_after: rejected.retry_after,
                    })
                }
            };
            let outcome = async {
                poll_fn(|cx| inner.poll_ready(cx)).await?;
                inner.call(request).await
            }
            .await
            .map_err(Error::Inner);
            permit.record(breaker.is_failure(&outcome));
            outcome
        })
    }
}
