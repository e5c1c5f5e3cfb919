//! The timing-sensitive claims, in their own test binary and one at a time (a lock), so
//! that other tests' load on a 2-core machine does not decide them: replicas against a dead
//! dependency (in one process and in three), and how fast a trip reaches every replica.

mod common;

use common::{replicas, RedisServer};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions, CircuitState};
use stormwall_redis::{RedisStateStore, RedisStoreOptions};

/// One timing test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Ten replicas, each calling a dead dependency (a call takes 100 ms, then fails) 20 times,
/// 50 ms apart; how many calls reached it. (A trip must reach a replica within its pause
/// for the bound below: 50 ms leaves room for a loaded machine.)
async fn calls_reaching_a_dead_dependency(breakers: &[impl BreakerLike]) -> u32 {
    let reached = AtomicU32::new(0);
    let tasks = breakers.iter().map(|b| {
        let reached = &reached;
        async move {
            for _ in 0..20 {
                if b.call_dead(reached).await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    reached.load(Ordering::SeqCst)
}

trait BreakerLike {
    /// One call: `true` when it was admitted (and failed after 100 ms, about what a call that
    /// times out costs).
    async fn call_dead(&self, reached: &AtomicU32) -> bool;
}

impl<S: stormwall::circuit_breaker::StateStore> BreakerLike
    for CircuitBreaker<stormwall::pipeline::OnError, S>
{
    async fn call_dead(&self, reached: &AtomicU32) -> bool {
        match self.try_acquire() {
            Ok(permit) => {
                reached.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                permit.record_failure();
                true
            }
            Err(_) => false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_replicas_let_5_plus_in_flight_calls_reach_a_dead_dependency_not_50() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let options = CircuitBreakerOptions::new()
        .consecutive_failures(5)
        .break_duration(Duration::from_secs(60));
    let shared = replicas(&redis, "dead-dependency", &options, 10).await;
    let reached_shared = calls_reaching_a_dead_dependency(&shared).await;
    let local: Vec<_> = (0..10)
        .map(|_| CircuitBreaker::new(options.clone()).unwrap())
        .collect();
    let reached_local = calls_reaching_a_dead_dependency(&local).await;
    println!("calls reaching the dead dependency: shared {reached_shared}, local {reached_local}");
    assert_eq!(reached_local, 50);
    // 5 to trip, plus at most the one call each replica has in flight when it trips (a
    // call takes 100 ms; a trip reaches every replica within milliseconds).
    assert!(reached_shared <= 5 + 10, "{reached_shared}");
    for b in &shared {
        assert_eq!(b.state(), CircuitState::Open);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_reaches_every_replica_within_10ms() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let options = CircuitBreakerOptions::new()
        .consecutive_failures(5)
        .break_duration(Duration::from_secs(60));
    let breakers = replicas(&redis, "propagation", &options, 10).await;
    // Each replica watches for the trip on its own task, from before it happens.
    let watchers: Vec<_> = breakers
        .iter()
        .map(|b| {
            let b = b.clone();
            tokio::spawn(async move {
                while b.state() != CircuitState::Open {
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
                Instant::now()
            })
        })
        .collect();
    for _ in 0..5 {
        breakers[0].try_acquire().unwrap().record_failure();
    }
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await.unwrap());
    }
    // The trip is when the replica whose script tripped it saw it.
    let tripped = seen[0];
    let mut delays: Vec<Duration> = seen[1..]
        .iter()
        .map(|at| at.saturating_duration_since(tripped))
        .collect();
    delays.sort();
    println!(
        "propagation to 9 replicas: p50 {:?}, p99 {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    assert!(
        delays[delays.len() - 1] <= Duration::from_millis(10),
        "{delays:?}"
    );
    for b in &breakers {
        assert!(matches!(b.try_acquire(), Err(r) if r.state == CircuitState::Open));
    }
}

/// Run as a child process by the test below (does nothing when run by the harness itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_process() {
    let Ok(url) = std::env::var("STORMWALL_REPLICA_REDIS") else {
        return;
    };
    let options = CircuitBreakerOptions::new()
        .consecutive_failures(5)
        .break_duration(Duration::from_secs(60));
    let store = RedisStateStore::connect(&url, "processes", &options, RedisStoreOptions::default())
        .await
        .unwrap();
    let breaker = CircuitBreaker::with_store(options, store).unwrap();
    // Start together: wait for the agreed instant.
    let start: u64 = std::env::var("STORMWALL_REPLICA_START")
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(start.saturating_sub(now))).await;
    let reached = AtomicU32::new(0);
    for _ in 0..20 {
        if breaker.call_dead(&reached).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("REACHED={}", reached.load(Ordering::SeqCst));
}

#[test]
fn three_os_processes_share_one_breaker() {
    let _serial = SERIAL.blocking_lock();
    let redis = RedisServer::start();
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "replica_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("STORMWALL_REPLICA_REDIS", redis.url())
                .env("STORMWALL_REPLICA_START", start.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let reached: u32 = text
            .lines()
            .find_map(|l| l.split("REACHED=").nth(1))
            .unwrap_or_else(|| panic!("no count from the child: {text}"))
            .trim()
            .parse()
            .unwrap();
        total += reached;
    }
    println!("3 processes: {total} calls reached the dead dependency (local breakers: 15)");
    assert!(total <= 5 + 3, "{total}");
    assert!(total >= 5);
}
