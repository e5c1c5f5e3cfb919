//! The shared breaker against a real redis-server: replicas that share state, exact counts,
//! propagation, one probe cluster-wide, Redis killed and back, manual control, bad data.

mod common;

use common::{eventually, replicas, RedisServer};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{
    CircuitBreaker, CircuitBreakerOptions, CircuitState, TransitionOrigin,
};
use stormwall::telemetry::{Event, EventListener, EventSource};
use stormwall::{Error, Pipeline};
use stormwall_redis::{RedisStateStore, RedisStoreError, RedisStoreOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reports_from_ten_replicas_are_counted_exactly() {
    let redis = RedisServer::start();
    let options = CircuitBreakerOptions::new()
        .failure_ratio(1.0)
        .minimum_throughput(30_000)
        .sampling_duration(Duration::from_secs(60));
    let breakers = replicas(&redis, "counts", &options, 10).await;
    let tasks = breakers.iter().map(|b| async move {
        for i in 0..1000 {
            let permit = b.try_acquire().unwrap();
            // Successes first: they travel with the failure reports that follow.
            if i < 500 {
                permit.record_success();
            } else {
                permit.record_failure();
            }
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    eventually(|| common::window_sum(&redis, "counts", 'f') == 5000).await;
    assert_eq!(common::window_sum(&redis, "counts", 'f'), 5000, "failures");
    assert_eq!(common::window_sum(&redis, "counts", 't'), 10_000, "calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_break_ends_exactly_one_probe_runs_cluster_wide() {
    let redis = RedisServer::start();
    let options = CircuitBreakerOptions::new()
        .consecutive_failures(2)
        .break_duration(Duration::from_millis(200));
    let breakers = replicas(&redis, "half-open", &options, 10).await;
    for _ in 0..2 {
        breakers[0].try_acquire().unwrap().record_failure();
    }
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Open)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Every replica calls every millisecond for 300 ms; an admitted probe takes 500 ms.
    let probes = AtomicU32::new(0);
    let permits = Mutex::new(Vec::new());
    let until = Instant::now() + Duration::from_millis(300);
    let tasks = breakers.iter().map(|b| {
        let (probes, permits) = (&probes, &permits);
        async move {
            while Instant::now() < until {
                if let Ok(permit) = b.try_acquire() {
                    probes.fetch_add(1, Ordering::SeqCst);
                    permits.lock().unwrap().push(permit);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    assert_eq!(probes.load(Ordering::SeqCst), 1);
    // The probe succeeds: the circuit closes everywhere.
    let permit = permits.lock().unwrap().pop().unwrap();
    permit.record_success();
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Closed)).await;
}

#[derive(Default)]
struct Transitions(Mutex<Vec<(CircuitState, CircuitState, TransitionOrigin)>>);

impl Transitions {
    fn of(&self, origin: TransitionOrigin) -> Vec<(CircuitState, CircuitState)> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|t| t.2 == origin)
            .map(|t| (t.0, t.1))
            .collect()
    }
}

impl EventListener for Transitions {
    fn on_event(&self, _: &EventSource<'_>, event: &Event) {
        if let Event::CircuitTransition(t) = event {
            self.0.lock().unwrap().push((t.from, t.to, t.origin));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transition_is_decided_once_in_the_cluster_seen_by_every_replica_and_manual_control_acts_everywhere(
) {
    let redis = RedisServer::start();
    let options = CircuitBreakerOptions::new().consecutive_failures(3);
    let breakers = replicas(&redis, "events", &options, 5).await;
    let seen = Arc::new(Transitions::default());
    let pipelines: Vec<_> = breakers
        .iter()
        .map(|b| {
            Pipeline::builder()
                .listener(seen.clone())
                .circuit_breaker(b.clone())
                .build()
                .unwrap()
        })
        .collect();
    for p in pipelines.iter().cycle().take(3) {
        let _ = p.execute(|_| async { Err::<(), _>("down") }).await;
    }
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Open)).await;
    // Decided once (by the replica whose report tripped it), adopted by the four others,
    // which raise it too, as remote: switches and health checks bound to any replica's
    // breaker see the trip.
    eventually(|| seen.of(TransitionOrigin::Remote).len() == 4).await;
    assert_eq!(
        seen.of(TransitionOrigin::Local),
        vec![(CircuitState::Closed, CircuitState::Open)]
    );
    assert_eq!(
        seen.of(TransitionOrigin::Remote),
        vec![(CircuitState::Closed, CircuitState::Open); 4]
    );
    breakers[4].close();
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Closed)).await;
    breakers[2].isolate();
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Isolated)).await;
    assert!(matches!(
        pipelines[0].execute(|_| async { Ok::<_, ()>(1) }).await,
        Err(Error::CircuitOpen { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_calls_go_on_locally_then_state_is_shared_again() {
    let mut redis = RedisServer::start();
    let options = CircuitBreakerOptions::new().consecutive_failures(3);
    let breakers = replicas(&redis, "outage", &options, 3).await;
    redis.stop();
    // Healthy calls keep working, with no error from the breaker.
    for _ in 0..50 {
        for b in &breakers {
            b.try_acquire()
                .expect("admitted while Redis is down")
                .record_success();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Redis is gone (the subscription ended, or the next report fails): replicas fall back
    // to their local breakers.
    breakers[0].try_acquire().unwrap().record_failure();
    eventually(|| !breakers[0].store().is_connected()).await;
    for _ in 0..3 {
        if let Ok(permit) = breakers[0].try_acquire() {
            permit.record_failure();
        }
    }
    assert_eq!(
        breakers[0].state(),
        CircuitState::Open,
        "the local breaker works"
    );
    assert_eq!(breakers[0].store().outages(), 1);

    redis.restart();
    eventually(|| breakers.iter().all(|b| b.store().is_connected())).await;
    // Shared again: a trip on one replica reaches the others.
    assert!(breakers.iter().all(|b| b.state() == CircuitState::Closed));
    for _ in 0..3 {
        breakers[1].try_acquire().unwrap().record_failure();
    }
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Open)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_data_under_our_keys_is_treated_as_absent() {
    let redis = RedisServer::start();
    redis.cli(&["HSET", "stormwall:{corrupt}:state", "s", "banana", "v", "x"]);
    let options = CircuitBreakerOptions::new().consecutive_failures(2);
    let breakers = replicas(&redis, "corrupt", &options, 2).await;
    assert_eq!(breakers[0].state(), CircuitState::Closed);
    for _ in 0..2 {
        breakers[0].try_acquire().unwrap().record_failure();
    }
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Open)).await;
    assert_eq!(
        redis.cli(&["HGET", "stormwall:{corrupt}:state", "s"]),
        "open"
    );
}

#[tokio::test]
async fn an_invalid_url_is_a_typed_error() {
    let options = CircuitBreakerOptions::new();
    let e = RedisStateStore::connect("http://nope", "x", &options, RedisStoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RedisStoreError::InvalidUrl { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_starts_on_the_local_breaker() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = CircuitBreakerOptions::new().consecutive_failures(2);
    let started = Instant::now();
    let store = RedisStateStore::connect(
        &format!("redis://127.0.0.1:{port}"),
        "nobody-home",
        &options,
        RedisStoreOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "bounded wait"
    );
    assert!(!store.is_connected());
    let breaker = CircuitBreaker::with_store(options, store).unwrap();
    for _ in 0..2 {
        breaker.try_acquire().unwrap().record_failure();
    }
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_issue_no_command_per_call_only_a_flush_per_interval() {
    let redis = RedisServer::start();
    let options = CircuitBreakerOptions::new()
        .failure_ratio(0.5)
        .minimum_throughput(10)
        .sampling_duration(Duration::from_secs(10));
    let breakers = replicas(&redis, "quiet", &options, 2).await;
    let processed = || -> u64 {
        redis
            .cli(&["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let before = processed();
    let started = Instant::now();
    for _ in 0..100_000 {
        for b in &breakers {
            b.try_acquire().unwrap().record_success();
        }
    }
    let elapsed = started.elapsed();
    // Every success reaches the shared window, in flushes (every 100 ms per replica).
    eventually(|| common::window_sum(&redis, "quiet", 't') == 200_000).await;
    let commands = processed() - before;
    // Per replica: a flush or a resync per 100 ms tick, each one script of at most 16
    // commands inside it (EVALSHA itself counts too), plus this test's own INFO/HGETALL
    // polls. Independent of the 200,000 calls.
    let ticks = (started.elapsed().as_millis() as u64 / 100 + 2) * 2;
    println!("200,000 successes in {elapsed:?}: {commands} Redis commands ({ticks} ticks)");
    assert!(
        commands <= ticks * 17 + 200,
        "{commands} commands for {ticks} ticks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_spawned_without_waiting_joins_and_shares_state() {
    let redis = RedisServer::start();
    let options = CircuitBreakerOptions::new()
        .consecutive_failures(3)
        .break_duration(Duration::from_secs(30));
    let spawned = |name: &str| {
        CircuitBreaker::with_store(
            options.clone(),
            RedisStateStore::spawn(&redis.url(), name, &options, RedisStoreOptions::default())
                .unwrap(),
        )
        .unwrap()
    };
    let (a, b) = (spawned("spawned"), spawned("spawned"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        a.try_acquire().unwrap().record_failure();
    }
    eventually(|| a.state() == CircuitState::Open).await;
    eventually(|| b.state() == CircuitState::Open).await;
}
