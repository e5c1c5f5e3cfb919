//! A successful execution allocates nothing: through the full composite, through every
//! strategy alone (keyed ones on a key they know), and with a listener attached.
//!
//! A counting global allocator wraps the system one; the count is read around the calls.
//! Only the counting thread's allocations count: the test harness allocates on its own
//! threads whenever another test finishes (the runtimes here are current-thread, so every
//! allocation the code under test makes happens on the counting thread).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use stormwall::bulkhead::BulkheadOptions;
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::fallback::FallbackOptions;
use stormwall::pipeline::Strategy;
use stormwall::retry::RetryOptions;
use stormwall::{Context, Pipeline};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    /// Whether this thread's allocations are being counted.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

fn set_counting(on: bool) {
    COUNTING.with(|c| c.set(on));
}
/// The counter is global: tests that count take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

// SAFETY: every call is forwarded unchanged to `System`; the wrapper only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Warms `pipeline` up, then counts the allocations of 1000 calls that are ready at once
/// and of 1000 calls that are pending once (timers armed).
fn allocations<S: Strategy<u64, ()>>(pipeline: &Pipeline<S>) -> (usize, usize) {
    allocations_with(pipeline, Context::new())
}

/// [`allocations`] for executions carrying `ctx` (a key).
fn allocations_with<S: Strategy<u64, ()>>(pipeline: &Pipeline<S>, ctx: Context) -> (usize, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up: the runtime's timer wheel, its deferred-wake list and thread-locals
        // allocate (and grow) on first use.
        for _ in 0..2000 {
            ready_call(pipeline, &ctx).await;
            pending_call(pipeline, &ctx).await;
        }
        set_counting(true);
        for _ in 0..1000 {
            ready_call(pipeline, &ctx).await;
        }
        let ready = ALLOCATIONS.swap(0, Ordering::SeqCst);
        for _ in 0..1000 {
            pending_call(pipeline, &ctx).await;
        }
        let pending = ALLOCATIONS.swap(0, Ordering::SeqCst);
        set_counting(false);
        (ready, pending)
    })
}

#[test]
fn successful_composite_execution_allocates_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pipeline = Pipeline::builder()
        .fallback(FallbackOptions::value(0u64))
        .bulkhead(BulkheadOptions::new(100).queue_limit(10))
        .timeout(Duration::from_secs(30))
        .retry(RetryOptions::exponential(Duration::from_millis(200)).max_retries(3))
        .circuit_breaker(
            CircuitBreakerOptions::new()
                .failure_ratio(0.5)
                .minimum_throughput(10)
                .sampling_duration(Duration::from_secs(10)),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_allocates_nothing("the pipeline", allocations(&pipeline));
}

#[test]
fn hedging_primary_path_allocates_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pipeline = Pipeline::builder()
        .hedging(stormwall::hedging::HedgingOptions::latency(
            Duration::from_secs(2),
        ))
        .build()
        .unwrap();
    // Pending once: the hedge timer is armed, no hedge starts.
    assert_allocates_nothing("the pipeline", allocations(&pipeline));
}

/// `counts` (of ready calls, of pending calls) are both zero.
fn assert_allocates_nothing(what: &str, counts: (usize, usize)) {
    assert_eq!(counts, (0, 0), "{what}: (ready, pending) allocations");
}

/// An operation that is ready at once: no timer is ever armed.
async fn ready_call<S: Strategy<u64, ()>>(pipeline: &Pipeline<S>, ctx: &Context) {
    let v = pipeline
        .execute_with(ctx.clone(), |_| async { Ok::<_, ()>(1u64) })
        .await;
    assert_eq!(v, Ok(1));
}

/// An operation that is pending once: both timeouts arm a timer.
async fn pending_call<S: Strategy<u64, ()>>(pipeline: &Pipeline<S>, ctx: &Context) {
    let v = pipeline
        .execute_with(ctx.clone(), |_| async {
            tokio::task::yield_now().await;
            Ok::<_, ()>(2u64)
        })
        .await;
    assert_eq!(v, Ok(2));
}

#[test]
fn every_strategy_alone_allocates_nothing_on_success() {
    use stormwall::chaos::{Chaos, ChaosOptions, Latency};
    use stormwall::rate_limit::RateLimitOptions;
    use stormwall::retry::{AdaptiveThrottleOptions, RetryBudget, RetryBudgetOptions};
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let check = assert_allocates_nothing;
    check(
        "rate limiter",
        allocations(
            &Pipeline::builder()
                .rate_limit(RateLimitOptions::per_second(u32::MAX))
                .build()
                .unwrap(),
        ),
    );
    check(
        "retry with a budget",
        allocations(
            &Pipeline::builder()
                .retry(
                    RetryOptions::default()
                        .budget(RetryBudget::new(RetryBudgetOptions::default()).unwrap()),
                )
                .build()
                .unwrap(),
        ),
    );
    check(
        "adaptive throttle",
        allocations(
            &Pipeline::builder()
                .strategy(AdaptiveThrottleOptions::default())
                .build()
                .unwrap(),
        ),
    );
    check(
        "chaos, not injecting",
        allocations(
            &Pipeline::builder()
                .strategy(
                    Chaos::new(ChaosOptions::rate(0.0), Latency(Duration::from_secs(1))).unwrap(),
                )
                .build()
                .unwrap(),
        ),
    );
    check(
        "consecutive-failures breaker",
        allocations(
            &Pipeline::builder()
                .circuit_breaker(CircuitBreakerOptions::consecutive(5))
                .build()
                .unwrap(),
        ),
    );
    check(
        "timeout",
        allocations(
            &Pipeline::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        ),
    );
}

#[test]
fn keyed_strategies_allocate_nothing_for_a_known_key() {
    use stormwall::bulkhead::KeyedBulkhead;
    use stormwall::circuit_breaker::KeyedCircuitBreaker;
    use stormwall::rate_limit::{KeyedRateLimiter, RateLimitOptions};
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tenant = Context::new().with_key("tenant-7");
    let pipeline = Pipeline::builder()
        .bulkhead(KeyedBulkhead::new(BulkheadOptions::new(100), 1000).unwrap())
        .rate_limit(KeyedRateLimiter::new(RateLimitOptions::per_second(u32::MAX), 1000).unwrap())
        .strategy(KeyedCircuitBreaker::new(CircuitBreakerOptions::new(), 1000).unwrap())
        .build()
        .unwrap();
    assert_allocates_nothing("keyed strategies", allocations_with(&pipeline, tenant));
}

#[test]
fn a_pipeline_with_a_listener_allocates_nothing_on_success() {
    use stormwall::telemetry::{Event, EventListener, EventSource};
    struct Count(std::sync::atomic::AtomicU64);
    impl EventListener for Count {
        fn on_event(&self, _: &EventSource<'_>, _: &Event) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let listener = std::sync::Arc::new(Count(Default::default()));
    let pipeline = Pipeline::builder()
        .name("observed")
        .listener(listener.clone())
        .timeout(Duration::from_secs(30))
        .retry(RetryOptions::exponential(Duration::from_millis(200)))
        .circuit_breaker(CircuitBreakerOptions::new())
        .build()
        .unwrap();
    assert_allocates_nothing("the pipeline", allocations(&pipeline));
    assert!(
        listener.0.load(Ordering::Relaxed) > 0,
        "the listener heard nothing"
    );
}

#[test]
fn the_counter_sees_allocations() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Proves the allocator above counts: without this, a broken counter passes the test.
    set_counting(true);
    let v = std::hint::black_box(vec![1u8; 64]);
    set_counting(false);
    drop(v);
    assert!(ALLOCATIONS.swap(0, Ordering::SeqCst) >= 1);
}

/// A registry's pipeline in the fixed order (the example file's `payment`: bulkhead →
/// timeout → retry → breaker → timeout) allocates nothing on success either; one in
/// another order (breaker outside the retry) boxes between strategies: one allocation per
/// strategy and one for the operation's attempt, per call.
#[test]
fn a_registry_pipeline_allocates_nothing_in_the_fixed_order_and_boxes_in_another() {
    use stormwall::registry::{PipelineRegistry, PipelineSpec, RegistrySpec, StrategySpec};
    use stormwall::timeout::TimeoutOptions;
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let timeout = |secs| StrategySpec::Timeout(TimeoutOptions::new(Duration::from_secs(secs)));
    let retry =
        StrategySpec::Retry(RetryOptions::exponential(Duration::from_millis(200)).max_retries(3));
    let breaker = StrategySpec::CircuitBreaker(
        CircuitBreakerOptions::new()
            .failure_ratio(0.5)
            .minimum_throughput(10),
    );
    let fixed: PipelineSpec = [
        StrategySpec::Bulkhead(BulkheadOptions::new(100).queue_limit(10)),
        timeout(30),
        retry.clone(),
        breaker.clone(),
        timeout(10),
    ]
    .into_iter()
    .collect();
    let other: PipelineSpec = [breaker, retry, timeout(10)].into_iter().collect();
    let registry = PipelineRegistry::new(RegistrySpec {
        pipelines: [("fixed".to_owned(), fixed), ("other".to_owned(), other)]
            .into_iter()
            .collect(),
    })
    .unwrap();
    assert_allocates_nothing("fixed", allocations(&registry.get("fixed").unwrap()));
    let (ready, pending) = allocations(&registry.get("other").unwrap());
    assert_eq!(
        (ready, pending),
        (4000, 4000),
        "other: 3 strategies + the attempt"
    );
}
