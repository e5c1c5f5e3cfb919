//! Runs one hot path N times, for `bench/icount.sh` to count its instructions under
//! callgrind: `stormwall-icount CASE N`. Each case mirrors a row of
//! `crates/stormwall/benches/strategies.rs`.
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::fallback::FallbackOptions;
use stormwall::pipeline::Strategy;
use stormwall::retry::RetryOptions;
use stormwall::telemetry::{Event, EventListener, EventSource, MetricsListener};
use stormwall::Pipeline;

#[inline(never)]
async fn op() -> Result<u64, std::io::Error> {
    Ok(black_box(1))
}

#[inline(never)]
async fn fail() -> Result<u64, std::io::Error> {
    Err(std::io::Error::other("down"))
}

struct Ignore;

impl EventListener for Ignore {
    fn on_event(&self, _: &EventSource<'_>, event: &Event) {
        black_box(event);
    }
}

fn window() -> CircuitBreakerOptions {
    CircuitBreakerOptions::new()
        .failure_ratio(0.5)
        .minimum_throughput(10)
        .sampling_duration(Duration::from_secs(10))
}

/// The bench's composite: total timeout > retry > breaker > attempt timeout > fallback.
fn composite(
    listener: Option<Arc<dyn EventListener>>,
) -> Pipeline<impl Strategy<u64, std::io::Error>> {
    let mut builder = Pipeline::builder();
    if let Some(listener) = listener {
        builder = builder.listener(listener);
    }
    builder
        .fallback(FallbackOptions::value(0))
        .timeout(Duration::from_secs(30))
        .retry(RetryOptions::exponential(Duration::from_millis(200)).max_retries(3))
        .circuit_breaker(window())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

const CASES: &[&str] = &[
    "bare",
    "empty",
    "time-window",
    "count-window",
    "consecutive",
    "open",
    "recloser",
    "recloser-open",
    "composite",
    "composite-ignoring-listener",
    "composite-metrics-listener",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(case), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!(
            "usage: stormwall-icount CASE N   (CASE: {})",
            CASES.join(", ")
        );
        std::process::exit(2);
    };
    let Some(case) = CASES.iter().position(|c| c == case) else {
        eprintln!("unknown case {case:?} (one of: {})", CASES.join(", "));
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let empty = Pipeline::builder().build().unwrap();
        let time = Pipeline::builder()
            .circuit_breaker(window())
            .build()
            .unwrap();
        let count = Pipeline::builder()
            .circuit_breaker(window().count_window(100))
            .build()
            .unwrap();
        let consecutive = Pipeline::builder()
            .circuit_breaker(CircuitBreakerOptions::consecutive(5))
            .build()
            .unwrap();
        let open = Pipeline::builder()
            .circuit_breaker(
                CircuitBreakerOptions::consecutive(1).break_duration(Duration::from_secs(86_400)),
            )
            .build()
            .unwrap();
        let _ = open.execute(|_| fail()).await;
        let recloser =
            recloser::AsyncRecloser::from(recloser::Recloser::custom().closed_len(100).build());
        let recloser_open = recloser::AsyncRecloser::from(
            recloser::Recloser::custom()
                .error_rate(0.01)
                .closed_len(1)
                .open_wait(Duration::from_secs(86_400))
                .build(),
        );
        for _ in 0..3 {
            let _ = recloser_open.call(fail()).await;
        }
        let plain = composite(None);
        let ignoring = composite(Some(Arc::new(Ignore)));
        let metrics = composite(Some(Arc::new(MetricsListener::new())));
        for _ in 0..n {
            match case {
                0 => drop(black_box(op().await)),
                1 => drop(black_box(empty.execute(|_| op()).await)),
                2 => drop(black_box(time.execute(|_| op()).await)),
                3 => drop(black_box(count.execute(|_| op()).await)),
                4 => drop(black_box(consecutive.execute(|_| op()).await)),
                5 => drop(black_box(open.execute(|_| op()).await)),
                6 => drop(black_box(recloser.call(op()).await)),
                7 => drop(black_box(recloser_open.call(op()).await)),
                8 => drop(black_box(plain.execute(|_| op()).await)),
                9 => drop(black_box(ignoring.execute(|_| op()).await)),
                _ => drop(black_box(metrics.execute(|_| op()).await)),
            }
        }
    });
}
