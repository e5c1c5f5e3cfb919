//! Client-side adaptive throttling (Google SRE book, "Handling Overload"): when the
//! dependency has been rejecting most calls, reject some locally, with probability
//! `max(0, (requests − k × accepts) / (requests + 1))` over the last `window`.

use crate::circuit_breaker::window::TimeWindow;
use crate::clock::{Clock, Stopwatch};
use crate::error::ConfigError;
use crate::pipeline::{Context, OnError, Predicate, Strategy};
use crate::random::SplitMix;
use crate::telemetry::{Event, Telemetry};
use crate::Error;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Options of [`AdaptiveThrottle`].
#[derive(Debug, Clone)]
pub struct AdaptiveThrottleOptions<P = OnError> {
    /// The multiplier `k`: lower rejects sooner. Default: 2.0 (the SRE book's). Valid:
    /// 1.0 – 10.0.
    pub k: f64,
    /// The window requests and accepts are counted over. Default: 2 minutes (the SRE
    /// book's). Valid: ≥ 1 s and ≤ 1 hour.
    pub window: Duration,
    /// Which outcomes count as *not* accepted by the dependency. Default: every `Err`.
    pub should_handle: P,
    /// The clock. Default: [`Clock::Auto`].
    pub clock: Clock,
    /// Seeds the random rejections, for reproducible runs. Default: `None` (random).
    pub seed: Option<u64>,
}

impl Default for AdaptiveThrottleOptions {
    fn default() -> Self {
        AdaptiveThrottleOptions {
            k: 2.0,
            window: Duration::from_secs(120),
            should_handle: OnError,
            clock: Clock::Auto,
            seed: None,
        }
    }
}

impl<P> AdaptiveThrottleOptions<P> {
    /// Sets [`k`](Self::k).
    pub fn k(mut self, k: f64) -> Self {
        self.k = k;
        self
    }

    /// Sets [`window`](Self::window).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets [`seed`](Self::seed).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks every field against its valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1.0..=10.0).contains(&self.k) {
            return Err(ConfigError::new("k", self.k, "must be between 1 and 10"));
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "window",
                self.window,
                "must be ≥ 1s and ≤ 1 hour",
            ));
        }
        Ok(())
    }
}

/// Rejects calls locally with [`Error::Throttled`] in proportion to how often the
/// dependency has been rejecting them, so an overloaded dependency sees less traffic
/// instead of more. Clones share the counts.
#[derive(Debug, Clone)]
pub struct AdaptiveThrottle<P = OnError> {
    shared: Arc<Shared>,
    should_handle: P,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

#[derive(Debug)]
struct Shared {
    /// total = requests, failures = requests not accepted.
    window: TimeWindow,
    stopwatch: Stopwatch,
    k: f64,
    random: SplitMix,
}

impl<P> AdaptiveThrottle<P> {
    /// A throttle with `options`, validated.
    pub fn new(options: AdaptiveThrottleOptions<P>) -> Result<Self, ConfigError> {
        options
            .validate()
            .map_err(|e| e.within("adaptive_throttle"))?;
        Ok(AdaptiveThrottle {
            shared: Arc::new(Shared {
                window: TimeWindow::new(options.window),
                stopwatch: Stopwatch::start(options.clock),
                k: options.k,
                random: SplitMix::new(options.seed),
            }),
            should_handle: options.should_handle,
            telemetry: Telemetry::default(),
        })
    }

    /// The probability that the next call is rejected locally.
    pub fn rejection_probability(&self) -> f64 {
        let counts = self.shared.window.counts(self.shared.stopwatch.nanos());
        probability(counts.total, counts.total - counts.failures, self.shared.k)
    }
}

fn probability(requests: u32, accepts: u32, k: f64) -> f64 {
    let requests = f64::from(requests);
    ((requests - k * f64::from(accepts)) / (requests + 1.0)).max(0.0)
}

crate::pipeline::attach_telemetry!([P] AdaptiveThrottle<P>);

impl<T, E, P> Strategy<T, E> for AdaptiveThrottle<P>
where
    P: Predicate<T, E> + Send + Sync,
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
        async move {
            let shared = &self.shared;
            let now = shared.stopwatch.nanos();
            let counts = shared.window.counts(now);
            let p = probability(counts.total, counts.total - counts.failures, shared.k);
            if p > 0.0 && shared.random.next_f64() < p {
                // A locally rejected request still counts as a request, not an accept.
                shared.window.record(now, true, false);
                self.telemetry
                    .emit(crate::telemetry::strategy::ADAPTIVE_THROTTLE, || {
                        Event::Throttled(super::Throttled { probability: p })
                    });
                return Err(Error::Throttled);
            }
            let outcome = op(ctx).await;
            let rejected = self.should_handle.test(&outcome);
            shared
                .window
                .record(shared.stopwatch.nanos(), rejected, false);
            outcome
        }
    }
}
