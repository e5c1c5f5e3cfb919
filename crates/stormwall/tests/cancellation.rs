//! Dropping an execution at any await point leaves every strategy consistent: the
//! half-open probe slot and the bulkhead slot come back, nothing stays queued.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;
use stormwall::bulkhead::{Bulkhead, BulkheadOptions};
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, CircuitState};
use stormwall::retry::RetryOptions;
use stormwall::Pipeline;
use tokio::time::{advance, sleep};

/// Polls `fut` `polls` times (advancing the paused clock between polls), then drops it.
async fn drop_after<F: Future>(fut: F, polls: usize) {
    let mut fut = pin!(fut);
    for _ in 0..polls {
        let ready = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_ready())).await;
        if ready {
            return;
        }
        advance(Duration::from_millis(7)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_an_execution_at_any_point_gives_every_slot_back() {
    for polls in 0..12 {
        let breaker = CircuitBreaker::new(
            CircuitBreakerOptions::consecutive(1).break_duration(Duration::from_millis(10)),
        )
        .unwrap();
        let bulkhead = Bulkhead::new(BulkheadOptions::new(1).queue_limit(2)).unwrap();
        let p = Pipeline::builder()
            .timeout(Duration::from_secs(10))
            .bulkhead(bulkhead.clone())
            .retry(RetryOptions::constant(Duration::from_millis(5)).max_retries(3))
            .circuit_breaker(breaker.clone())
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        // Open the breaker, then let the break pass: the next call is a half-open probe.
        breaker.try_acquire().unwrap().record_failure();
        advance(Duration::from_millis(10)).await;
        let execution = p.execute(|ctx| async move {
            if ctx.attempt() == 0 {
                sleep(Duration::from_millis(20)).await;
                return Err("slow and then failing");
            }
            sleep(Duration::from_millis(20)).await;
            Ok(())
        });
        drop_after(execution, polls).await;
        assert_eq!(
            (bulkhead.in_use(), bulkhead.queued()),
            (0, 0),
            "bulkhead after dropping at poll {polls}"
        );
        // Whatever state the breaker reached, a probe slot is free when it is half-open.
        if breaker.state() == CircuitState::HalfOpen {
            let probe = breaker.try_acquire();
            assert!(
                probe.is_ok(),
                "probe slot lost when dropped at poll {polls}"
            );
        }
        // And once the break has passed, a healthy call goes through and closes the
        // circuit: nothing the dropped execution held is still held.
        advance(Duration::from_millis(20)).await;
        let healthy = p.execute(|_| async { Ok::<_, &str>(()) }).await;
        assert_eq!(healthy, Ok(()), "at poll {polls}");
        assert_eq!(breaker.state(), CircuitState::Closed, "at poll {polls}");
    }
}
