//! Chaos strategies: rate, seeding, each kind of injection, runtime control.

mod common;

use common::Recorder;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use stormwall::chaos::{Behavior, Chaos, ChaosOptions, Fault, Latency, Outcome};
use stormwall::{Context, Error, Pipeline};
use tokio::time::Instant;

fn fault() -> Fault<impl Fn(&Context) -> Error<&'static str> + Clone> {
    Fault(|_: &Context| Error::Inner("injected"))
}

/// Which of `n` calls were hit, as a string of `x` (hit) and `.` (not).
async fn hits(
    chaos: Chaos<Fault<impl Fn(&Context) -> Error<&'static str> + Send + Sync>>,
    n: usize,
) -> String {
    let p = Pipeline::builder().strategy(chaos).build().unwrap();
    let mut s = String::new();
    for _ in 0..n {
        let hit = p.execute(|_| async { Ok::<_, &str>(()) }).await.is_err();
        s.push(if hit { 'x' } else { '.' });
    }
    s
}

#[tokio::test(start_paused = true)]
async fn injects_at_the_configured_rate() {
    let s = hits(
        Chaos::new(ChaosOptions::rate(0.3).seed(1), fault()).unwrap(),
        10_000,
    )
    .await;
    let rate = s.matches('x').count() as f64 / 10_000.0;
    assert!((rate - 0.3).abs() < 0.02, "{rate}");
}

#[tokio::test(start_paused = true)]
async fn a_seed_makes_the_run_reproducible() {
    let a = hits(
        Chaos::new(ChaosOptions::rate(0.5).seed(42), fault()).unwrap(),
        200,
    )
    .await;
    let b = hits(
        Chaos::new(ChaosOptions::rate(0.5).seed(42), fault()).unwrap(),
        200,
    )
    .await;
    let c = hits(
        Chaos::new(ChaosOptions::rate(0.5).seed(43), fault()).unwrap(),
        200,
    )
    .await;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test(start_paused = true)]
async fn latency_delays_then_runs_the_call() {
    let chaos = Chaos::new(ChaosOptions::rate(1.0), Latency(Duration::from_secs(2))).unwrap();
    let p = Pipeline::builder().strategy(chaos).build().unwrap();
    let start = Instant::now();
    assert_eq!(
        p.execute(|_| async { Ok::<_, ()>("real") }).await,
        Ok("real")
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn outcome_replaces_the_call_which_never_runs() {
    let recorder = Recorder::new();
    let chaos = Chaos::new(
        ChaosOptions::rate(1.0),
        Outcome(|_: &Context| Ok::<_, Error<()>>("fake")),
    )
    .unwrap();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .strategy(chaos)
        .build()
        .unwrap();
    let ran = AtomicU32::new(0);
    let outcome = p
        .execute(|_| {
            ran.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, ()>("real") }
        })
        .await;
    assert_eq!(outcome, Ok("fake"));
    assert_eq!(ran.load(Ordering::Relaxed), 0);
    assert_eq!(recorder.count("chaos_injected"), 1);
}

#[tokio::test(start_paused = true)]
async fn behavior_runs_a_side_effect_then_the_call() {
    let effects = AtomicU32::new(0);
    let chaos = Chaos::new(
        ChaosOptions::rate(1.0),
        Behavior(|_: &Context| {
            effects.fetch_add(1, Ordering::Relaxed);
            async {}
        }),
    )
    .unwrap();
    let p = Pipeline::builder().strategy(chaos).build().unwrap();
    assert_eq!(
        p.execute(|_| async { Ok::<_, ()>("real") }).await,
        Ok("real")
    );
    assert_eq!(effects.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn control_switches_injection_at_runtime() {
    let chaos = Chaos::new(ChaosOptions::rate(1.0).enabled(false), fault()).unwrap();
    let control = chaos.control();
    let p = Pipeline::builder().strategy(chaos).build().unwrap();
    let call = || p.execute(|_| async { Ok::<_, &str>(()) });
    assert_eq!(call().await, Ok(()), "starts disabled");
    control.enable();
    assert_eq!(call().await, Err(Error::Inner("injected")));
    control.set_injection_rate(0.0).unwrap();
    assert_eq!(call().await, Ok(()));
    let e = control.set_injection_rate(1.5).unwrap_err();
    assert_eq!(e.field, "chaos.injection_rate");
    assert_eq!(
        control.injection_rate(),
        0.0,
        "a refused rate changes nothing"
    );
    control.set_injection_rate(1.0).unwrap();
    control.disable();
    assert_eq!(call().await, Ok(()));
}

#[test]
fn invalid_injection_rate_is_rejected() {
    for rate in [-0.1, 1.1, f64::NAN] {
        let e = Chaos::new(ChaosOptions::rate(rate), Latency(Duration::from_secs(1))).unwrap_err();
        assert_eq!(e.field, "chaos.injection_rate");
    }
}
