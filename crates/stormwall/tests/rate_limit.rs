//! Rate limiter: the algorithms through the pipeline, per-key limits, and the quota held
//! under random arrivals (property test), on a paused clock.

mod common;

use common::Recorder;
use proptest::prelude::*;
use std::time::Duration;
use stormwall::rate_limit::{
    KeyedRateLimiter, RateLimitAlgorithm, RateLimitOptions, RateLimited, RateLimiter,
};
use stormwall::telemetry::Event;
use stormwall::{Context, Error, Pipeline};
use tokio::time::advance;

#[tokio::test(start_paused = true)]
async fn rejects_over_the_rate_with_retry_after_and_an_event() {
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .rate_limit(RateLimitOptions::per_second(4).burst(1))
        .build()
        .unwrap();
    let call = || p.execute(|_| async { Ok::<_, ()>(()) });
    assert_eq!(call().await, Ok(()));
    let rejected = Error::RateLimited {
        retry_after: Duration::from_millis(250),
    };
    assert_eq!(call().await, Err(rejected.clone()));
    assert!(recorder.events().contains(&Event::RateLimited(RateLimited {
        retry_after: Duration::from_millis(250)
    })));
    assert_eq!(recorder.count("rate_limited"), 1);
    advance(Duration::from_millis(250)).await;
    assert_eq!(call().await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn a_rejected_call_never_runs() {
    let limiter = RateLimiter::new(RateLimitOptions::per_minute(1)).unwrap();
    let p = Pipeline::builder()
        .rate_limit(limiter.clone())
        .build()
        .unwrap();
    assert!(limiter.try_acquire().is_ok()); // the permit is shared with the handle
    let ran = std::sync::atomic::AtomicBool::new(false);
    let outcome = p
        .execute(|_| {
            ran.store(true, std::sync::atomic::Ordering::Relaxed);
            async { Ok::<_, ()>(()) }
        })
        .await;
    assert!(matches!(outcome, Err(Error::RateLimited { .. })));
    assert!(!ran.load(std::sync::atomic::Ordering::Relaxed));
}

#[tokio::test(start_paused = true)]
async fn keyed_limiters_isolate_tenants_and_forget_idle_ones() {
    let keyed = KeyedRateLimiter::new(RateLimitOptions::per_second(1), 2).unwrap();
    let p = Pipeline::builder()
        .rate_limit(keyed.clone())
        .build()
        .unwrap();
    let call = |key: &'static str| {
        let p = &p;
        async move {
            p.execute_with(Context::new().with_key(key), |_| async { Ok::<_, ()>(()) })
                .await
        }
    };
    assert_eq!(call("a").await, Ok(()));
    assert!(call("a").await.is_err(), "a used its permit");
    assert_eq!(call("b").await, Ok(()), "b has its own");
    // Two busy keys tracked: a third is turned away rather than growing the map.
    assert_eq!(
        call("c").await,
        Err(Error::RateLimited {
            retry_after: Duration::from_secs(1)
        })
    );
    assert_eq!(keyed.keys(), 2);
    advance(Duration::from_secs(1)).await;
    // a and b are back to full: c replaces them.
    assert_eq!(call("c").await, Ok(()));
    assert!(keyed.keys() <= 2);
}

#[test]
fn fast_clock_limits_the_same_way() {
    // Real time, no sleeping: a burst of 3 in a period of an hour, then a refusal whose
    // wait is about the interval (20 minutes).
    let limiter = RateLimiter::new(
        RateLimitOptions::per(3, Duration::from_secs(3600)).clock(stormwall::clock::Clock::Fast),
    )
    .unwrap();
    for _ in 0..3 {
        assert!(limiter.try_acquire().is_ok());
    }
    let wait = limiter.try_acquire().unwrap_err();
    assert!(
        wait > Duration::from_secs(1190) && wait <= Duration::from_secs(1200),
        "{wait:?}"
    );
}

#[test]
fn invalid_options_are_rejected_naming_the_field() {
    let field = |o: RateLimitOptions| RateLimiter::new(o).unwrap_err().field;
    assert_eq!(field(RateLimitOptions::per_second(0)), "rate_limit.permits");
    assert_eq!(
        field(RateLimitOptions::per(1, Duration::ZERO)),
        "rate_limit.period"
    );
    assert_eq!(
        field(RateLimitOptions::per_second(1).burst(0)),
        "rate_limit.burst"
    );
    assert_eq!(
        field(
            RateLimitOptions::per_second(1)
                .algorithm(RateLimitAlgorithm::SlidingWindow { segments: 0 })
        ),
        "rate_limit.algorithm.segments"
    );
    assert_eq!(
        KeyedRateLimiter::new(RateLimitOptions::per_second(1), 0)
            .unwrap_err()
            .field,
        "rate_limit.max_keys"
    );
}

fn algorithm() -> impl Strategy<Value = RateLimitAlgorithm> {
    prop_oneof![
        Just(RateLimitAlgorithm::Gcra),
        Just(RateLimitAlgorithm::TokenBucket),
        Just(RateLimitAlgorithm::FixedWindow),
        Just(RateLimitAlgorithm::SlidingWindow { segments: 4 }),
    ]
}

/// The most permits any of the algorithms may admit within `span_ms` (period = 1000 ms).
fn quota(algorithm: RateLimitAlgorithm, permits: u64, burst: u64, span_ms: u64) -> u64 {
    match algorithm {
        // One permit per interval plus the burst.
        RateLimitAlgorithm::Gcra => burst + span_ms * permits / 1000,
        // The bucket's content plus one refill per period boundary crossed.
        RateLimitAlgorithm::TokenBucket => burst + permits * (span_ms / 1000 + 1),
        // One window's worth per window touched.
        RateLimitAlgorithm::FixedWindow => permits * (span_ms / 1000 + 2),
        RateLimitAlgorithm::SlidingWindow { .. } => permits * (span_ms / 1000 + 2),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Random arrivals: within any 1-second span no algorithm admits more than its quota,
    /// and the fixed and sliding windows never more than `permits` per window.
    #[test]
    fn never_more_than_the_quota_in_any_window(
        algorithm in algorithm(),
        permits in 1u32..6,
        burst in 1u32..6,
        gaps in prop::collection::vec(0u64..300, 1..120),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let options = RateLimitOptions::per_second(permits).burst(burst).algorithm(algorithm);
        let admitted: Vec<u64> = rt.block_on(async {
            let limiter = RateLimiter::new(options).unwrap();
            let mut now = 0;
            let mut admitted = vec![];
            for gap in gaps {
                advance(Duration::from_millis(gap)).await;
                now += gap;
                match limiter.try_acquire() {
                    Ok(()) => admitted.push(now),
                    Err(retry_after) => {
                        // The promised wait is never zero and never more than a period.
                        assert!(retry_after > Duration::ZERO);
                        assert!(retry_after <= Duration::from_secs(1));
                    }
                }
            }
            admitted
        });
        for (i, &start) in admitted.iter().enumerate() {
            let within = admitted[i..].iter().take_while(|&&t| t < start + 1000).count() as u64;
            prop_assert!(
                within <= quota(algorithm, permits.into(), burst.into(), 999),
                "{} admitted in 1 s from {} ms: {:?}", within, start, admitted
            );
        }
        match algorithm {
            RateLimitAlgorithm::FixedWindow => {
                for window in 0..=admitted.last().copied().unwrap_or(0) / 1000 {
                    let n = admitted.iter().filter(|&&t| t / 1000 == window).count() as u32;
                    prop_assert!(n <= permits);
                }
            }
            RateLimitAlgorithm::SlidingWindow { segments } => {
                let width = 1000 / u64::from(segments);
                for &t in &admitted {
                    let segment = t / width;
                    let n = admitted
                        .iter()
                        .filter(|&&u| u / width + u64::from(segments) > segment && u / width <= segment)
                        .count() as u32;
                    prop_assert!(n <= permits, "{n} in the window ending at {t}: {admitted:?}");
                }
            }
            _ => {}
        }
    }
}

#[test]
fn the_fast_clock_limiter_answers_retry_after_in_real_time() {
    // 10 per second, no burst: the second permit right after the first is ~100 ms away.
    let limiter = stormwall::rate_limit::RateLimiter::new(
        stormwall::rate_limit::RateLimitOptions::per_second(10)
            .burst(1)
            .clock(stormwall::clock::Clock::Fast),
    )
    .unwrap();
    assert_eq!(limiter.try_acquire(), Ok(()));
    let wait = limiter.try_acquire().unwrap_err();
    assert!(
        wait > std::time::Duration::from_millis(10)
            && wait <= std::time::Duration::from_millis(100),
        "{wait:?}"
    );
}
