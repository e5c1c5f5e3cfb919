//! The order flow, with and without stormwall: inventory → payment → notification.

use super::Timings;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, CircuitState};
use stormwall::fallback::FallbackOptions;
use stormwall::retry::RetryOptions;
use stormwall::Pipeline;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Why a call to a dependency failed.
#[derive(Debug)]
pub enum CallError {
    /// No answer: refused, reset, timed out.
    Transport(reqwest::Error),
    /// An answer that is not 2xx.
    Status(u16),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "transport: {e}"),
            CallError::Status(s) => write!(f, "status {s}"),
        }
    }
}

/// Where the dependencies are (through their chaos proxies), and how often each was called.
pub struct Dependencies {
    pub client: reqwest::Client,
    pub payment: String,
    pub inventory: String,
    pub notification: String,
    /// Attempts made to payment, inventory, notification.
    pub calls: [AtomicU64; 3],
}

impl Dependencies {
    pub fn new(payment: String, inventory: String, notification: String) -> Self {
        Dependencies {
            // A connection per request, as many clients do: the chaos proxy decides a
            // toxic's toxicity per connection.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_default(),
            payment,
            inventory,
            notification,
            calls: Default::default(),
        }
    }

    pub fn calls(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.calls[i].load(Ordering::Relaxed))
    }

    async fn call(
        &self,
        which: usize,
        order: u64,
        timeout: Option<Duration>,
    ) -> Result<(), CallError> {
        self.calls[which].fetch_add(1, Ordering::Relaxed);
        let request = match which {
            0 => self
                .client
                .post(format!("http://{}/charge", self.payment))
                .header("Idempotency-Key", format!("order-{order}")),
            1 => self.client.get(format!("http://{}/stock", self.inventory)),
            _ => self
                .client
                .post(format!("http://{}/notify", self.notification)),
        };
        let request = match timeout {
            Some(t) => request.timeout(t),
            None => request,
        };
        let response = request.send().await.map_err(CallError::Transport)?;
        if !response.status().is_success() {
            return Err(CallError::Status(response.status().as_u16()));
        }
        response.bytes().await.map_err(CallError::Transport)?;
        Ok(())
    }
}

/// One order as it ended.
#[derive(Debug, Clone, Copy)]
pub struct OrderRecord {
    /// When it started, from the run's start.
    pub started: Duration,
    pub latency: Duration,
    /// Accepted (charged, or payment queued for later).
    pub accepted: bool,
    /// Fallbacks it used (cached stock, queued payment, skipped notification).
    pub fallbacks: u32,
}

/// What happened to the payment step of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Done,
    /// The fallback answered (cached, queued, skipped).
    Fallback,
}

/// Everything one run recorded.
#[derive(Debug, Default)]
pub struct RunRecord {
    pub orders: Vec<OrderRecord>,
    /// The payment breaker's state over time (resilient runs).
    pub breaker: Vec<(Duration, CircuitState)>,
    pub calls: [u64; 3],
    pub served: [u64; 3],
}

/// The load: `orders` orders arriving one every `interval` (the same for every run, whatever
/// the answers), at most `concurrency` in flight.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub orders: u64,
    pub interval: Duration,
    pub concurrency: usize,
}

/// Runs the load and records each order.
async fn load<F, Fut>(load: Load, progress: &indicatif::ProgressBar, place: F) -> Vec<OrderRecord>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = (bool, u32)>,
{
    let permits = Semaphore::new(load.concurrency);
    let records = Mutex::new(Vec::with_capacity(load.orders as usize));
    let start = Instant::now();
    let all = (0..load.orders).map(|id| {
        let (permits, records, place) = (&permits, &records, &place);
        async move {
            tokio::time::sleep_until(start + load.interval * id as u32).await;
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let began = Instant::now();
            let (accepted, fallbacks) = place(id).await;
            let record = OrderRecord {
                started: began - start,
                latency: began.elapsed(),
                accepted,
                fallbacks,
            };
            records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(record);
            progress.inc(1);
        }
    });
    futures_join_all(all).await;
    let mut records = records.into_inner().unwrap_or_else(|e| e.into_inner());
    records.sort_by_key(|r| r.started);
    records
}

/// Polls every future to completion on the current task.
async fn futures_join_all<I>(futures: I)
where
    I: IntoIterator,
    I::Item: std::future::Future<Output = ()>,
{
    let mut set: Vec<_> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| std::future::Future::poll(f.as_mut(), cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// The order flow without resilience: each call once, with the HTTP client's own timeout.
pub async fn run_plain(
    deps: &Dependencies,
    t: &Timings,
    shape: Load,
    progress: &indicatif::ProgressBar,
) -> Vec<OrderRecord> {
    let timeout = Some(t.scaled(30.0));
    load(shape, progress, |id| async move {
        let ok = deps.call(1, id, timeout).await.is_ok()
            && deps.call(0, id, timeout).await.is_ok()
            && deps.call(2, id, timeout).await.is_ok();
        (ok, 0)
    })
    .await
}

/// The order flow through stormwall pipelines configured as in the seeds (timings scaled).
pub async fn run_resilient(
    deps: &Dependencies,
    t: &Timings,
    shape: Load,
    progress: &indicatif::ProgressBar,
    listener: Option<Arc<dyn stormwall::telemetry::EventListener>>,
) -> Result<(Vec<OrderRecord>, Vec<(Duration, CircuitState)>), stormwall::ConfigError> {
    let builder = |name: &'static str| {
        let builder = Pipeline::builder().name(name);
        match &listener {
            Some(listener) => builder.listener(Arc::clone(listener)),
            None => builder,
        }
    };
    // payment: attempt 10 s, total 30 s, 3 retries, breaker 50 % over 10 s; fallback: queue
    // the payment for later (the order is accepted as PaymentPending).
    let breaker = CircuitBreaker::new(
        CircuitBreakerOptions::new()
            .failure_ratio(0.5)
            .minimum_throughput(10)
            .sampling_duration(t.scaled(10.0))
            .break_duration(t.scaled(5.0)),
    )?;
    let payment = builder("payment")
        .fallback(FallbackOptions::value(Step::Fallback))
        .timeout(t.scaled(30.0))
        .retry(RetryOptions::exponential(t.scaled(1.0)).max_retries(3))
        .circuit_breaker(breaker.clone())
        .timeout(t.scaled(10.0))
        .build()?;
    // inventory: 5 s, 2 retries, cached fallback.
    let inventory = builder("inventory")
        .fallback(FallbackOptions::value(Step::Fallback))
        .retry(RetryOptions::exponential(t.scaled(1.0)).max_retries(2))
        .timeout(t.scaled(5.0))
        .build()?;
    // notification: 3 s, 1 retry, log and continue.
    let notification = builder("notification")
        .fallback(FallbackOptions::value(Step::Fallback))
        .retry(RetryOptions::exponential(t.scaled(1.0)).max_retries(1))
        .timeout(t.scaled(3.0))
        .build()?;
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (breaker, timeline) = (breaker.clone(), timeline.clone());
        let every = t.scaled(0.2).max(Duration::from_millis(5));
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                timeline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((start.elapsed(), breaker.state()));
                tokio::time::sleep(every).await;
            }
        })
    };
    let records = load(shape, progress, |id| {
        let (payment, inventory, notification) = (&payment, &inventory, &notification);
        async move {
            let call = |which| {
                move |_| async move { deps.call(which, id, None).await.map(|()| Step::Done) }
            };
            let outcomes = [
                inventory.execute(call(1)).await,
                payment.execute(call(0)).await,
                notification.execute(call(2)).await,
            ];
            let accepted = outcomes.iter().all(|o| o.is_ok());
            let fallbacks = outcomes
                .iter()
                .filter(|o| matches!(o, Ok(Step::Fallback)))
                .count() as u32;
            (accepted, fallbacks)
        }
    })
    .await;
    sampler.abort();
    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((records, timeline))
}
