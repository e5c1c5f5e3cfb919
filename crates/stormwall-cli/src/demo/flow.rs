//! The order flow, with and without stormwall: inventory → payment → notification.

use super::Timings;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stormwall::cache::{Cached, MemoryCache, StaleOnError, StaleOnErrorOptions, ValueCache};
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, CircuitState};
use stormwall::fallback::FallbackOptions;
use stormwall::hedging::HedgingOptions;
use stormwall::pipeline::Properties;
use stormwall::retry::{RetryBudget, RetryBudgetOptions, RetryOptions};
use stormwall::{Context, Pipeline};
use stormwall_durable::{
    Deferred, DurableQueue, QueueForLater, QueueOptions, Worker, WorkerOptions,
};
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
    /// Attempts the order flow made to payment, inventory, notification.
    pub calls: [AtomicU64; 3],
    /// Charges the queue's worker made after the load (not part of the flow's calls).
    pub later: AtomicU64,
    /// Orders that have reached their payment step (a scenario can end a fault after so
    /// many orders, whatever the machine's speed).
    pub at_payment: tokio::sync::watch::Sender<u64>,
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
            later: AtomicU64::new(0),
            at_payment: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Counts an order reaching its payment step.
    fn reach_payment(&self) {
        self.at_payment.send_modify(|n| *n += 1);
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
        self.send(which, order, timeout).await
    }

    /// A queued payment, charged by the worker with the order's idempotency key.
    async fn charge_later(&self, order: u64, timeout: Duration) -> Result<(), CallError> {
        self.later.fetch_add(1, Ordering::Relaxed);
        self.send(0, order, Some(timeout)).await
    }

    async fn send(
        &self,
        which: usize,
        order: u64,
        timeout: Option<Duration>,
    ) -> Result<(), CallError> {
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

/// What inventory answered for an item: which order's call fetched it, and when (ms since
/// the run started). Served stale, it is another order's answer, and its age shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stock {
    pub order: u64,
    pub fetched_ms: u64,
}

impl Stock {
    /// The documented default for an item never cached when inventory is down: assume it
    /// is in stock (the order goes on; stock is checked again when inventory is back).
    pub const DEFAULT: Stock = Stock {
        order: u64::MAX,
        fetched_ms: 0,
    };
}

/// The item an order asks inventory about: eight popular items (the healthy phase caches
/// them), and every fifth order a rare one never asked before (never cached).
pub fn item(order: u64) -> String {
    if order % 5 == 4 {
        format!("rare-{order}")
    } else {
        format!("sku-{}", order % 8)
    }
}

/// Where inventory's last good answers are kept: in memory, or on Redis (`--redis`).
#[derive(Clone)]
pub enum StockCache {
    Memory(MemoryCache<Stock>),
    Redis(stormwall_redis::RedisCache<Stock>),
}

impl StockCache {
    /// A fresh cache for one run; on Redis under a name of its own (`run`), entries
    /// expiring after 10 minutes.
    pub fn new(redis: Option<&str>, run: &str) -> Result<Self, String> {
        let ttl = Duration::from_secs(600);
        match redis {
            None => Ok(StockCache::Memory(MemoryCache::new(10_000, ttl))),
            Some(url) => stormwall_redis::RedisCache::new(
                url,
                &format!("demo-inventory-{run}"),
                ttl,
                Duration::from_millis(200),
            )
            .map(StockCache::Redis)
            .map_err(|e| format!("--redis {url}: {e}")),
        }
    }
}

impl ValueCache<Stock> for StockCache {
    fn get(&self, key: &str) -> impl std::future::Future<Output = Option<Cached<Stock>>> + Send {
        async move {
            match self {
                StockCache::Memory(cache) => cache.get(key).await,
                StockCache::Redis(cache) => cache.get(key).await,
            }
        }
    }

    fn put(&self, key: &str, value: Stock) -> impl std::future::Future<Output = ()> + Send {
        async move {
            match self {
                StockCache::Memory(cache) => cache.put(key, value).await,
                StockCache::Redis(cache) => cache.put(key, value).await,
            }
        }
    }
}

/// How inventory's answer came.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StockAnswer {
    Fresh,
    /// From the cache, this old.
    Stale(Duration),
    /// The documented default (never cached).
    Default,
    /// No answer (plain client).
    None,
}

/// One order as it ended.
#[derive(Debug, Clone, Copy)]
pub struct OrderRecord {
    /// When it started, from the run's start.
    pub started: Duration,
    pub latency: Duration,
    /// Accepted (charged, or payment queued for later).
    pub accepted: bool,
    /// Fallbacks it used (cached or default stock, queued payment, skipped notification).
    pub fallbacks: u32,
    /// How inventory answered.
    pub stock: StockAnswer,
}

/// What happened to the payment step of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Done,
    /// The fallback answered (cached, queued, skipped).
    Fallback,
}

/// Which stormwall configuration a resilient run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// As in the seeds: a breaker on payment only, no hedging, no retry budget.
    Seeds,
    /// Breakers on all three dependencies, hedged inventory reads, a retry budget per
    /// dependency.
    Recommended,
}

/// The breakers' states at one moment: payment, inventory, notification (`None`: that
/// dependency has no breaker in the run's setup).
pub type BreakerStates = [Option<CircuitState>; 3];

/// Everything one run recorded.
#[derive(Debug, Default)]
pub struct RunRecord {
    pub orders: Vec<OrderRecord>,
    /// The breakers' states over time (resilient runs).
    pub breaker: Vec<(Duration, BreakerStates)>,
    pub calls: [u64; 3],
    pub served: [u64; 3],
    /// Payments queued for later (the payment fallback), and how many of them the worker
    /// charged once the payment service answered again (resilient runs).
    pub payments: Deferrals,
}

/// The "queue it for later" payments of a resilient run: every one queued is charged,
/// still pending or dead-lettered (`queued = charged_later + pending + dead`).
#[derive(Debug, Default, Clone)]
pub struct Deferrals {
    pub queued: u64,
    pub charged_later: u64,
    /// Still in the queue when the drain's time ran out.
    pub pending: u64,
    /// Dead-lettered: their charge failed `MAX_CHARGE_ATTEMPTS` times.
    pub dead: u64,
    /// Why some are left (pending or dead), in words; `None` when all were charged.
    pub left: Option<String>,
}

/// What a resilient run returns: its orders, the payment breaker's timeline, its deferred
/// payments.
pub type Resilient = (Vec<OrderRecord>, Vec<(Duration, BreakerStates)>, Deferrals);

type Outcome<T> = Result<T, stormwall::Error<CallError>>;

/// Hedge an inventory read that failed (the recommended setup).
fn failed(outcome: &Outcome<Stock>) -> bool {
    outcome.is_err()
}

/// Never hedge (the seeds' setup, which has no hedging).
fn never(_: &Outcome<Stock>) -> bool {
    false
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
    Fut: std::future::Future<Output = (bool, u32, StockAnswer)>,
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
            let (accepted, fallbacks, stock) = place(id).await;
            let record = OrderRecord {
                started: began - start,
                latency: began.elapsed(),
                accepted,
                fallbacks,
                stock,
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
            && {
                deps.reach_payment();
                deps.call(0, id, timeout).await.is_ok()
            }
            && deps.call(2, id, timeout).await.is_ok();
        (ok, 0, StockAnswer::None)
    })
    .await
}

/// The order flow through stormwall pipelines configured as in the seeds (timings scaled).
/// A payment that fails is queued durably (SQLite) and the order accepted as
/// PaymentPending; after the load a worker charges the queued payments, waiting while the
/// payment breaker is open, with each order's idempotency key.
#[allow(clippy::too_many_arguments)]
pub async fn run_resilient(
    deps: &Dependencies,
    t: &Timings,
    shape: Load,
    progress: &indicatif::ProgressBar,
    listener: Option<Arc<dyn stormwall::telemetry::EventListener>>,
    files: &Path,
    stock_cache: StockCache,
    setup: Setup,
) -> Result<Resilient, String> {
    let builder = |name: &'static str| {
        let builder = Pipeline::builder().name(name);
        match &listener {
            Some(listener) => builder.listener(Arc::clone(listener)),
            None => builder,
        }
    };
    // In the demo's own directory, which it removes however it exits.
    let path = files.join(format!(
        "payments-{}.db",
        DEMO_RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let queue = DurableQueue::open(&path, QueueOptions::default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // Every breaker: 50 % over 10 s, at least 10 calls, open 5 s.
    let new_breaker = || {
        CircuitBreaker::new(
            CircuitBreakerOptions::new()
                .failure_ratio(0.5)
                .minimum_throughput(10)
                .sampling_duration(t.scaled(10.0))
                .break_duration(t.scaled(5.0)),
        )
        .map_err(|e| e.to_string())
    };
    let recommended = setup == Setup::Recommended;
    let breaker = new_breaker()?;
    let (inventory_breaker, notification_breaker) = (new_breaker()?, new_breaker()?);
    if !recommended {
        // The seeds have no breaker there: one that admits every call and counts nothing
        // (disabled before the pipelines are built, so no listener hears of it).
        inventory_breaker.disable();
        notification_breaker.disable();
    }
    // Retries: the seeds' counts; the recommended setup adds a retry budget per dependency
    // (Finagle's: 20 % of requests, at least 10 retries a second).
    let retry = |max_retries: u32| -> Result<RetryOptions, String> {
        let retry = RetryOptions::exponential(t.scaled(1.0)).max_retries(max_retries);
        if !recommended {
            return Ok(retry);
        }
        let budget = RetryBudget::new(RetryBudgetOptions::default()).map_err(|e| e.to_string())?;
        Ok(retry.budget(budget))
    };
    // Inventory reads are hedged in the recommended setup: a second read when the first has
    // not answered in 0.5 s (scaled), or at once when it failed.
    let hedging = if recommended {
        HedgingOptions::latency(t.scaled(0.5)).handle(failed as fn(&Outcome<Stock>) -> bool)
    } else {
        HedgingOptions::latency(Duration::from_secs(86_400))
            .handle(never as fn(&Outcome<Stock>) -> bool)
    };
    // payment: attempt 10 s, total 30 s, 3 retries, breaker 50 % over 10 s; fallback: queue
    // the payment for later (the order is accepted as PaymentPending).
    let payment = builder("payment")
        .fallback(FallbackOptions::action(QueueForLater::new(
            queue.clone(),
            "payments",
            Step::Fallback,
        )))
        .timeout(t.scaled(30.0))
        .retry(retry(3)?)
        .circuit_breaker(breaker.clone())
        .timeout(t.scaled(10.0))
        .build()
        .map_err(|e| e.to_string())?;
    // inventory: 5 s, 2 retries; fallback: the item's last good answer (stale-on-error over
    // the cache, up to 10 min old), else the documented default.
    let inventory = builder("inventory")
        .fallback(FallbackOptions::value(Stock::DEFAULT))
        .strategy(
            StaleOnError::new(stock_cache, StaleOnErrorOptions::new(t.scaled(600.0)))
                .map_err(|e| e.to_string())?,
        )
        .retry(retry(2)?)
        .circuit_breaker(inventory_breaker.clone())
        .hedging(hedging)
        .timeout(t.scaled(5.0))
        .build()
        .map_err(|e| e.to_string())?;
    // notification: 3 s, 1 retry; fallback: log and continue.
    let skipped = AtomicU64::new(0);
    let notification = builder("notification")
        .fallback(FallbackOptions::with(
            |outcome: Result<Step, stormwall::Error<CallError>>| {
                let skipped = &skipped;
                async move {
                    if let Err(e) = outcome {
                        log_skipped(skipped.fetch_add(1, Ordering::Relaxed), &e);
                    }
                    Ok(Step::Fallback)
                }
            },
        ))
        .retry(retry(1)?)
        .circuit_breaker(notification_breaker.clone())
        .timeout(t.scaled(3.0))
        .build()
        .map_err(|e| e.to_string())?;
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let breakers = [
            breaker.clone(),
            inventory_breaker.clone(),
            notification_breaker.clone(),
        ];
        let timeline = timeline.clone();
        let every = t.scaled(0.2).max(Duration::from_millis(5));
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                timeline.lock().unwrap_or_else(|e| e.into_inner()).push((
                    start.elapsed(),
                    [0, 1, 2].map(|i| (i == 0 || recommended).then(|| breakers[i].state())),
                ));
                tokio::time::sleep(every).await;
            }
        })
    };
    let start = Instant::now();
    let records = load(shape, progress, |id| {
        let (payment, inventory, notification) = (&payment, &inventory, &notification);
        async move {
            let call = |which| {
                move |_| async move { deps.call(which, id, None).await.map(|()| Step::Done) }
            };
            // What the payment fallback keeps if the charge fails: the order, by its key.
            let later = Context::new().with_properties(Properties::new().with(Deferred {
                payload: id.to_be_bytes().to_vec(),
                idempotency_key: Some(format!("order-{id}")),
            }));
            let look_up = |_| async move {
                deps.call(1, id, None).await?;
                Ok::<_, CallError>(Stock {
                    order: id,
                    fetched_ms: start.elapsed().as_millis() as u64,
                })
            };
            let stock = inventory
                .execute_with(Context::new().with_key(item(id)), look_up)
                .await;
            let stock = match stock {
                Ok(s) if s.order == id => StockAnswer::Fresh,
                Ok(s) if s == Stock::DEFAULT => StockAnswer::Default,
                Ok(s) => StockAnswer::Stale(Duration::from_millis(
                    (start.elapsed().as_millis() as u64).saturating_sub(s.fetched_ms),
                )),
                Err(_) => StockAnswer::None,
            };
            deps.reach_payment();
            let outcomes = [
                payment.execute_with(later, call(0)).await,
                notification.execute(call(2)).await,
            ];
            let accepted = stock != StockAnswer::None && outcomes.iter().all(|o| o.is_ok());
            let fallbacks = outcomes
                .iter()
                .filter(|o| matches!(o, Ok(Step::Fallback)))
                .count() as u32
                + u32::from(matches!(
                    stock,
                    StockAnswer::Stale(_) | StockAnswer::Default
                ));
            (accepted, fallbacks, stock)
        }
    })
    .await;
    let payments = drain(deps, t, &queue, &breaker, progress).await;
    sampler.abort();
    drop(queue);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((records, timeline, payments))
}

/// The notification fallback's log: the first skip of a run as a warning, the rest at debug
/// level (`RUST_LOG=debug`), so a dead notification service does not flood the terminal.
fn log_skipped(before: u64, error: &stormwall::Error<CallError>) {
    if before == 0 {
        tracing::warn!(
            %error,
            "notification failed: the order continues without it (log and continue); \
             further skips are logged at debug level"
        );
    } else {
        tracing::debug!(%error, skipped = before + 1, "notification skipped");
    }
}

/// Numbers the queue files of the runs of one process.
static DEMO_RUN: AtomicU64 = AtomicU64::new(0);

/// Attempts at a queued payment before it is dead-lettered.
const MAX_CHARGE_ATTEMPTS: u32 = 10;
/// The longest the demo waits for the queued payments to be charged, in the seeds' time.
const DRAIN_LIMIT_S: f64 = 60.0;

/// Charges the queued payments (each with its order's idempotency key) through the payment
/// breaker — waiting while it is open, probing when the break ends — until none is left or
/// the drain's limit (60 s of the seeds' time) runs out; says on `progress` how many are
/// left, and accounts for every one.
async fn drain(
    deps: &Dependencies,
    t: &Timings,
    queue: &DurableQueue,
    breaker: &CircuitBreaker,
    progress: &indicatif::ProgressBar,
) -> Deferrals {
    let idle = t.scaled(0.2).max(Duration::from_millis(5));
    let worker = Worker::new(
        queue.clone(),
        "payments",
        WorkerOptions {
            name: "payments-worker".into(),
            batch: 32,
            visibility: t.scaled(60.0).max(Duration::from_secs(1)),
            max_attempts: MAX_CHARGE_ATTEMPTS,
            backoff: t.scaled(0.5),
            idle,
            ..Default::default()
        },
        Some(breaker.clone()),
    );
    // The last failed charge, to say why a payment is left.
    let last_error = Mutex::new(None::<String>);
    let charge = |job: stormwall_durable::Job| {
        let last_error = &last_error;
        async move {
            let id = job
                .payload
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| "corrupt payment job".to_string())?;
            let charged = deps.charge_later(id, t.scaled(10.0)).await;
            charged.map_err(|e| {
                let e = e.to_string();
                *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                e
            })
        }
    };
    let message = progress.message();
    let done = async {
        loop {
            match queue.depth("payments").await {
                Ok(depth) if depth.ready + depth.leased == 0 => return,
                Err(_) => return,
                Ok(depth) => {
                    progress.set_message(format!(
                        "{message}: {} queued payments left",
                        depth.ready + depth.leased
                    ));
                    tokio::time::sleep(idle).await
                }
            }
        }
    };
    let limit = t.scaled(DRAIN_LIMIT_S);
    let mut timed_out = false;
    let stop = async {
        tokio::select! {
            () = done => {},
            () = tokio::time::sleep(limit) => timed_out = true,
        }
    };
    let ran = worker.run_until(charge, stop).await;
    progress.set_message(message);
    let depth = queue.depth("payments").await.unwrap_or_default();
    let pending = depth.ready + depth.leased;
    let mut why = Vec::new();
    if let Err(e) = ran {
        why.push(format!("the queue failed: {e}"));
    }
    if pending > 0 {
        let state = match breaker.state() {
            CircuitState::Open | CircuitState::HalfOpen => {
                "the payment breaker was still open (the service kept failing)".to_string()
            }
            _ => "they were waiting out the backoff after failed charges".to_string(),
        };
        why.push(format!(
            "{pending} still queued when the demo stopped waiting ({:.1} s{}): {state}; a \
             running worker would charge them later (the demo discards its queue at exit)",
            limit.as_secs_f64(),
            if timed_out { ", its limit" } else { "" }
        ));
    }
    if depth.dead > 0 {
        let last = queue
            .dead_letters("payments")
            .await
            .ok()
            .and_then(|dead| dead.into_iter().rev().find_map(|(_, _, error)| error));
        why.push(format!(
            "{} dead-lettered after {MAX_CHARGE_ATTEMPTS} failed charges (last error: {})",
            depth.dead,
            last.unwrap_or_else(|| "not recorded".into())
        ));
    }
    if !why.is_empty() {
        if let Some(e) = last_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            why.push(format!("the last failed charge: {e}"));
        }
    }
    Deferrals {
        queued: depth.ready + depth.leased + depth.done + depth.dead,
        charged_later: depth.done,
        pending,
        dead: depth.dead,
        left: (!why.is_empty()).then(|| why.join("; ")),
    }
}
