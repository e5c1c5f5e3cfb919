//! The pipeline as a whole: composition order, context, validation, tower, Send.

mod common;

use common::Recorder;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, CircuitState};
use stormwall::fallback::FallbackOptions;
use stormwall::layer::PipelineLayer;
use stormwall::pipeline::Properties;
use stormwall::retry::RetryOptions;
use stormwall::timeout::TimeoutOptions;
use stormwall::{ConfigError, Context, Error, Pipeline};
use tokio::time::{sleep, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn composite_recovers_from_a_slow_then_failing_then_healthy_dependency() {
    let recorder = Recorder::new();
    let pipeline = Pipeline::builder()
        .listener(recorder.clone())
        .fallback(FallbackOptions::value("fallback"))
        .timeout(Duration::from_secs(30))
        .retry(RetryOptions::constant(Duration::from_millis(100)).max_retries(3))
        .circuit_breaker(CircuitBreakerOptions::consecutive(5))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let outcome = pipeline
        .execute(|ctx| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                match ctx.attempt() {
                    0 => {
                        sleep(Duration::from_secs(5)).await; // attempt timeout
                        Ok("slow")
                    }
                    1 => Err("refused"),
                    _ => Ok("ok"),
                }
            }
        })
        .await;
    assert_eq!(outcome, Ok("ok"));
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    assert_eq!(recorder.count("retry"), 2);
    assert_eq!(recorder.count("timeout"), 1);
    assert_eq!(recorder.count("fallback"), 0);
}

#[tokio::test(start_paused = true)]
async fn fallback_outermost_covers_exhausted_retries() {
    let recorder = Recorder::new();
    let pipeline = Pipeline::builder()
        .listener(recorder.clone())
        .fallback(FallbackOptions::with(
            |outcome: Result<u32, Error<&'static str>>| async move {
                match outcome {
                    Err(Error::Inner(_)) => Ok(0),
                    other => other,
                }
            },
        ))
        .retry(RetryOptions::constant(Duration::from_millis(1)).max_retries(2))
        .build()
        .unwrap();
    let outcome = pipeline.execute(|_| async { Err::<u32, _>("down") }).await;
    assert_eq!(outcome, Ok(0));
    assert_eq!(recorder.count("fallback"), 1);
}

#[tokio::test(start_paused = true)]
async fn fallback_predicate_can_replace_ok_outcomes() {
    let pipeline = Pipeline::builder()
        .fallback(
            FallbackOptions::value(200u16)
                .handle(|r: &Result<u16, Error<()>>| matches!(r, Ok(s) if *s >= 500)),
        )
        .build()
        .unwrap();
    assert_eq!(
        pipeline.execute(|_| async { Ok::<_, ()>(503) }).await,
        Ok(200)
    );
    assert_eq!(
        pipeline.execute(|_| async { Ok::<_, ()>(404) }).await,
        Ok(404)
    );
}

#[tokio::test(start_paused = true)]
async fn context_carries_key_properties_and_attempt() {
    #[derive(Debug, PartialEq)]
    struct RequestId(u32);
    let pipeline = Pipeline::builder()
        .retry(RetryOptions::constant(Duration::from_millis(1)).max_retries(1))
        .build()
        .unwrap();
    let ctx = Context::new()
        .with_key("tenant-7")
        .with_properties(Properties::new().with(RequestId(9)));
    let seen = std::sync::Mutex::new(vec![]);
    let _ = pipeline
        .execute_with(ctx, |ctx| {
            seen.lock().unwrap().push((
                ctx.attempt(),
                ctx.key().map(str::to_owned),
                ctx.get::<RequestId>().map(|r| r.0),
            ));
            async { Err::<(), _>(()) }
        })
        .await;
    assert_eq!(
        seen.into_inner().unwrap(),
        vec![
            (0, Some("tenant-7".to_owned()), Some(9)),
            (1, Some("tenant-7".to_owned()), Some(9))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn one_breaker_shared_by_two_pipelines() {
    let breaker = CircuitBreaker::new(CircuitBreakerOptions::consecutive(2)).unwrap();
    let a = Pipeline::builder()
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    let b = Pipeline::builder()
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    let _ = a.execute(|_| async { Err::<(), _>(()) }).await;
    let _ = b.execute(|_| async { Err::<(), _>(()) }).await;
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test]
async fn execution_future_is_send_and_spawnable() {
    let pipeline = Arc::new(
        Pipeline::builder()
            .timeout(Duration::from_secs(5))
            .retry(RetryOptions::constant(Duration::from_millis(1)))
            .circuit_breaker(CircuitBreakerOptions::new())
            .fallback(FallbackOptions::value(7))
            .build()
            .unwrap(),
    );
    let handle = tokio::spawn(async move {
        pipeline
            .execute(|_| async { Ok::<_, std::io::Error>(1) })
            .await
    });
    assert_eq!(handle.await.unwrap().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn tower_layer_retries_a_service_and_composes_with_service_builder() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let flaky = tower::service_fn(move |req: String| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            if n < 2 {
                Err(std::io::Error::other("flaky"))
            } else {
                Ok(format!("hello {req}"))
            }
        }
    });
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_secs(5))
        .retry(RetryOptions::constant(Duration::from_millis(10)))
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .service(flaky);
    let answer = service
        .ready()
        .await
        .unwrap()
        .call("world".to_owned())
        .await;
    assert_eq!(answer.unwrap(), "hello world");
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn tower_layer_times_out_a_slow_service() {
    let slow = tower::service_fn(|_: ()| async {
        sleep(Duration::from_secs(10)).await;
        Ok::<_, std::io::Error>(())
    });
    let pipeline = Pipeline::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let outcome = PipelineLayer::new(pipeline).layer_oneshot(slow).await;
    assert!(matches!(outcome, Err(Error::Timeout(_))));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

trait LayerOneshot {
    fn layer_oneshot<Svc>(
        &self,
        svc: Svc,
    ) -> impl std::future::Future<Output = Result<(), Error<std::io::Error>>>
    where
        Svc: Service<(), Response = (), Error = std::io::Error> + Clone + Send + Sync + 'static,
        Svc::Future: Send;
}

impl<S: stormwall::pipeline::Strategy<(), std::io::Error> + 'static> LayerOneshot
    for PipelineLayer<S>
{
    async fn layer_oneshot<Svc>(&self, svc: Svc) -> Result<(), Error<std::io::Error>>
    where
        Svc: Service<(), Response = (), Error = std::io::Error> + Clone + Send + Sync + 'static,
        Svc::Future: Send,
    {
        tower::Layer::layer(self, svc).oneshot(()).await
    }
}

fn field_of<S>(result: Result<Pipeline<S>, ConfigError>) -> String {
    match result {
        Ok(_) => panic!("expected a configuration error"),
        Err(e) => {
            // Every message names the field, the value and the rule.
            let text = e.to_string();
            assert!(text.contains(&e.field) && text.contains(&e.value), "{text}");
            e.field
        }
    }
}

#[test]
fn invalid_options_are_rejected_at_build_naming_the_field() {
    let cases: Vec<(String, &str)> = vec![
        (
            field_of(Pipeline::builder().timeout(Duration::ZERO).build()),
            "timeout.timeout",
        ),
        (
            field_of(
                Pipeline::builder()
                    .timeout(TimeoutOptions::new(Duration::from_secs(100_000)))
                    .build(),
            ),
            "timeout.timeout",
        ),
        (
            field_of(
                Pipeline::builder()
                    .retry(RetryOptions::constant(Duration::ZERO))
                    .build(),
            ),
            "retry.delay",
        ),
        (
            field_of(
                Pipeline::builder()
                    .retry(RetryOptions::constant(Duration::from_secs(1)).max_retries(0))
                    .build(),
            ),
            "retry.max_retries",
        ),
        (
            field_of(
                Pipeline::builder()
                    .retry(
                        RetryOptions::exponential(Duration::from_secs(2))
                            .max_delay(Duration::from_secs(1)),
                    )
                    .build(),
            ),
            "retry.max_delay",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::new().failure_ratio(1.5))
                    .build(),
            ),
            "circuit_breaker.failure_ratio",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::new().failure_ratio(0.0))
                    .build(),
            ),
            "circuit_breaker.failure_ratio",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::new().failure_ratio(f64::NAN))
                    .build(),
            ),
            "circuit_breaker.failure_ratio",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::new().minimum_throughput(1))
                    .build(),
            ),
            "circuit_breaker.minimum_throughput",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::new().sampling_duration(Duration::ZERO))
                    .build(),
            ),
            "circuit_breaker.sampling_duration",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::new().break_duration(Duration::ZERO))
                    .build(),
            ),
            "circuit_breaker.break_duration",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::new().count_window(10))
                    .build(),
            ),
            "circuit_breaker.sampling_window",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::new().permitted_calls_in_half_open(0))
                    .build(),
            ),
            "circuit_breaker.permitted_calls_in_half_open",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::new().success_threshold(0))
                    .build(),
            ),
            "circuit_breaker.success_threshold",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(
                        CircuitBreakerOptions::new().slow_call(Duration::from_secs(1), 2.0),
                    )
                    .build(),
            ),
            "circuit_breaker.slow_call.ratio",
        ),
        (
            field_of(
                Pipeline::builder()
                    .circuit_breaker(CircuitBreakerOptions::consecutive(0))
                    .build(),
            ),
            "circuit_breaker.consecutive_failures",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
}

#[test]
fn first_invalid_strategy_is_reported_even_when_later_ones_are_valid() {
    let result = Pipeline::builder()
        .timeout(Duration::from_secs(1))
        .retry(RetryOptions::constant(Duration::ZERO))
        .circuit_breaker(CircuitBreakerOptions::new())
        .build();
    assert_eq!(field_of(result), "retry.delay");
}

#[tokio::test(start_paused = true)]
async fn optional_strategies_compose_a_pipeline_from_configuration() {
    // As a config file would give them: a retry, no breaker, a timeout.
    let retry: Option<RetryOptions> = Some(RetryOptions::constant(Duration::from_millis(1)));
    let breaker: Option<CircuitBreakerOptions> = None;
    let timeout: Option<Duration> = Some(Duration::from_secs(1));
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .strategy(timeout)
        .strategy(retry)
        .strategy(breaker)
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let outcome = p
        .execute(|_| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 2 {
                    Err("flaky")
                } else {
                    Ok(n)
                }
            }
        })
        .await;
    assert_eq!(outcome, Ok(2));
    assert_eq!(
        recorder.count("retry"),
        2,
        "the configured retry ran and reported"
    );
    let slow = p
        .execute(|_| async {
            sleep(Duration::from_secs(5)).await;
            Ok::<_, &str>(0)
        })
        .await;
    assert_eq!(slow, Err(Error::Timeout(Duration::from_secs(1))));
    // An invalid configured strategy still names its field.
    let bad: Option<RetryOptions> = Some(RetryOptions::constant(Duration::ZERO));
    assert_eq!(
        field_of(Pipeline::builder().strategy(bad).build()),
        "retry.delay"
    );
}

fn durations(recorder: &Recorder) -> Vec<Duration> {
    recorder
        .events()
        .iter()
        .filter_map(|e| match e {
            stormwall::telemetry::Event::AttemptCompleted(a) => Some(a.duration),
            stormwall::telemetry::Event::ExecutionCompleted(e) => Some(e.duration),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn pipeline_times_attempts_on_tokios_clock_by_default_and_on_the_fast_clock_when_asked() {
    let slow_op = || async {
        sleep(Duration::from_secs(5)).await;
        Ok::<_, ()>(1)
    };
    let tokio_recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(tokio_recorder.clone())
        .build()
        .unwrap();
    p.execute(|_| slow_op()).await.unwrap();
    // The paused clock advanced 5 s: attempt and execution both took exactly that.
    assert_eq!(
        durations(&tokio_recorder),
        vec![Duration::from_secs(5), Duration::from_secs(5)]
    );

    // The CPU counter (feature `fast-clock`) is not paused: the 5 s passed only on
    // tokio's clock.
    #[cfg(feature = "fast-clock")]
    {
        let fast_recorder = Recorder::new();
        let p = Pipeline::builder()
            .listener(fast_recorder.clone())
            .clock(stormwall::clock::Clock::Fast)
            .build()
            .unwrap();
        p.execute(|_| slow_op()).await.unwrap();
        let fast = durations(&fast_recorder);
        assert_eq!(fast.len(), 2);
        assert!(fast.iter().all(|d| *d < Duration::from_secs(1)), "{fast:?}");
    }
}

#[tokio::test]
async fn a_success_ends_its_execution_with_its_last_attempts_clock_reading() {
    // On the real clock: a success that ended in the poll its attempt ended in reuses the
    // attempt's end reading, so both durations are equal to the nanosecond (two readings,
    // ≈ 20 ns apart, would differ). On tokio's clock the two starts are one shared reading
    // too, so the durations are equal.
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .clock(stormwall::clock::Clock::Tokio)
        .build()
        .unwrap();
    for _ in 0..100 {
        p.execute(|_| async { Ok::<_, ()>(1) }).await.unwrap();
    }
    let all = durations(&recorder);
    assert_eq!(all.len(), 200);
    for pair in all.chunks(2) {
        assert_eq!(pair[0], pair[1], "attempt and execution of one success");
    }
    // On the default clock (the CPU counter here) too: the first attempt starts with its
    // execution's start reading and the success ends with the attempt's end reading.
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .build()
        .unwrap();
    for _ in 0..100 {
        p.execute(|_| async { Ok::<_, ()>(1) }).await.unwrap();
    }
    for pair in durations(&recorder).chunks(2) {
        assert_eq!(pair[0], pair[1], "attempt and execution of one success");
    }
}

// On the CPU counter (feature `fast-clock`); tokio's clock shares one reading per poll.
#[cfg(feature = "fast-clock")]
#[tokio::test]
async fn only_the_first_attempt_shares_its_executions_start() {
    // Hedging in fallback mode starts its second attempt in the same poll as the first
    // failed in: that one reads the clock afresh, so it does not count the first's 20 ms.
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .clock(stormwall::clock::Clock::Fast)
        .hedging(stormwall::hedging::HedgingOptions::fallback())
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    p.execute(|_| {
        let first = calls.fetch_add(1, Ordering::Relaxed) == 0;
        async move {
            if first {
                // Busy for 20 ms without yielding, then fail.
                let until = std::time::Instant::now() + Duration::from_millis(20);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
                return Err(());
            }
            Ok::<_, ()>(1)
        }
    })
    .await
    .unwrap();
    let all = durations(&recorder);
    assert_eq!(all.len(), 3, "{all:?}");
    let (first, second, execution) = (all[0], all[1], all[2]);
    assert!(first >= Duration::from_millis(20), "{all:?}");
    assert!(second < Duration::from_millis(20), "{all:?}");
    assert!(execution >= first + second, "{all:?}");
}

#[tokio::test(start_paused = true)]
async fn execution_duration_covers_what_runs_after_the_last_attempt() {
    // A handled `Ok` answered by a fallback that takes 2 s: the execution ends after it.
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .fallback(
            FallbackOptions::with(|_: Result<u16, Error<()>>| async {
                sleep(Duration::from_secs(2)).await;
                Ok(200)
            })
            .handle(|r: &Result<u16, Error<()>>| matches!(r, Ok(s) if *s >= 500)),
        )
        .build()
        .unwrap();
    let outcome = p
        .execute(|_| async {
            sleep(Duration::from_secs(1)).await;
            Ok::<_, ()>(503)
        })
        .await;
    assert_eq!(outcome, Ok(200));
    assert_eq!(
        durations(&recorder),
        vec![Duration::from_secs(1), Duration::from_secs(3)]
    );

    // A success judged a failure, retried after 1 s: the execution ends with the second
    // attempt, not the first.
    let recorder = Recorder::new();
    let p = Pipeline::builder()
        .listener(recorder.clone())
        .retry(
            RetryOptions::constant(Duration::from_secs(1))
                .max_retries(1)
                .handle(|r: &Result<u16, Error<()>>| matches!(r, Ok(s) if *s >= 500)),
        )
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let outcome = p
        .execute(|_| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, ()>(if n == 0 { 503 } else { 200 }) }
        })
        .await;
    assert_eq!(outcome, Ok(200));
    assert_eq!(
        durations(&recorder),
        vec![Duration::ZERO, Duration::ZERO, Duration::from_secs(1)]
    );
}
