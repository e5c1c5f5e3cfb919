//! A successful execution through the full composite allocates nothing.
//!
//! A counting global allocator wraps the system one; the count is read around the calls.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use stormwall::bulkhead::BulkheadOptions;
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::fallback::FallbackOptions;
use stormwall::pipeline::Strategy;
use stormwall::retry::RetryOptions;
use stormwall::Pipeline;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
/// The counter is global: tests that count take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

// SAFETY: every call is forwarded unchanged to `System`; the wrapper only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
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
        if COUNTING.load(Ordering::Relaxed) {
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up: the runtime's timer wheel, its deferred-wake list and thread-locals
        // allocate (and grow) on first use.
        for _ in 0..2000 {
            ready_call(pipeline).await;
            pending_call(pipeline).await;
        }
        COUNTING.store(true, Ordering::SeqCst);
        for _ in 0..1000 {
            ready_call(pipeline).await;
        }
        let ready = ALLOCATIONS.swap(0, Ordering::SeqCst);
        for _ in 0..1000 {
            pending_call(pipeline).await;
        }
        let pending = ALLOCATIONS.swap(0, Ordering::SeqCst);
        COUNTING.store(false, Ordering::SeqCst);
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
    assert_eq!(
        allocations(&pipeline),
        (0, 0),
        "(ready, pending) allocations"
    );
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
    assert_eq!(
        allocations(&pipeline),
        (0, 0),
        "(ready, pending) allocations"
    );
}

/// An operation that is ready at once: no timer is ever armed.
async fn ready_call<S: Strategy<u64, ()>>(pipeline: &Pipeline<S>) {
    let v = pipeline.execute(|_| async { Ok::<_, ()>(1u64) }).await;
    assert_eq!(v, Ok(1));
}

/// An operation that is pending once: both timeouts arm a timer.
async fn pending_call<S: Strategy<u64, ()>>(pipeline: &Pipeline<S>) {
    let v = pipeline
        .execute(|_| async {
            tokio::task::yield_now().await;
            Ok::<_, ()>(2u64)
        })
        .await;
    assert_eq!(v, Ok(2));
}

#[test]
fn the_counter_sees_allocations() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Proves the allocator above counts: without this, a broken counter passes the test.
    COUNTING.store(true, Ordering::SeqCst);
    let v = std::hint::black_box(vec![1u8; 64]);
    COUNTING.store(false, Ordering::SeqCst);
    drop(v);
    assert!(ALLOCATIONS.swap(0, Ordering::SeqCst) >= 1);
}
