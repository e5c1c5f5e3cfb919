//! The shared breaker's promises under faults that need no separate process (the
//! process-level suite is crates/stormwall-cli/tests/redis_faults.rs): bad data at the keys,
//! lost scripts, a blackholed Redis, one sick replica among healthy ones, probe leases under
//! expiry (a property test against a real Redis), and a durable Worker draining through a
//! shared breaker.

mod common;

use common::{eventually, replicas, RedisServer};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{
    store::{StateStore, Ticket},
    CallOutcome, CircuitBreaker, CircuitBreakerOptions, CircuitState,
};
use stormwall_redis::{RedisStateStore, RedisStoreOptions};

fn consecutive(n: u32) -> CircuitBreakerOptions {
    let mut options = CircuitBreakerOptions::new()
        .consecutive_failures(n)
        .break_duration(Duration::from_millis(200));
    options.failure_ratio = None;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_written_by_an_older_version_keeps_its_state_and_gets_an_epoch() {
    let redis = RedisServer::start();
    // What the version before epochs wrote: no `e` field.
    redis.cli(&[
        "HSET",
        "stormwall:{legacy}:state",
        "s",
        "isolated",
        "v",
        "7",
        "u",
        "0",
        "o",
        "0",
        "c",
        "0",
        "g",
        "7",
        "p",
        "0",
    ]);
    let breakers = replicas(&redis, "legacy", &consecutive(3), 2).await;
    for b in &breakers {
        assert_eq!(b.state(), CircuitState::Isolated);
        assert_eq!(b.store().version(), 7);
        assert!(!b.store().epoch().is_empty());
    }
    assert_eq!(breakers[0].store().epoch(), breakers[1].store().epoch());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_at_the_keys_is_replaced_by_a_new_epoch() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "stormwall:{typed}:state", "not a hash"]);
    redis.cli(&["SET", "stormwall:{typed}:window", "nor this"]);
    let breakers = replicas(&redis, "typed", &consecutive(2), 2).await;
    for _ in 0..2 {
        breakers[0].try_acquire().unwrap().record_failure();
    }
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Open)).await;
    assert_eq!(redis.cli(&["TYPE", "stormwall:{typed}:state"]), "hash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_lost_to_script_flush_are_reloaded() {
    let redis = RedisServer::start();
    let breakers = replicas(&redis, "noscript", &consecutive(2), 2).await;
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    for _ in 0..2 {
        breakers[0].try_acquire().unwrap().record_failure();
    }
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Open)).await;
    assert!(breakers.iter().all(|b| b.store().is_connected()));
    assert_eq!(
        breakers[0].store().outages(),
        0,
        "NOSCRIPT is not an outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_never_holds_up_a_caller_and_the_local_breaker_decides() {
    // Accepts connections and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", blackhole.local_addr().unwrap());
    let options = consecutive(2);
    let store_options = RedisStoreOptions {
        command_timeout: Duration::from_millis(100),
        ..RedisStoreOptions::default()
    };
    let started = Instant::now();
    let store = RedisStateStore::connect(&url, "blackhole", &options, store_options)
        .await
        .unwrap();
    // The connect waits for at most four command timeouts (connect, subscribe, load, read).
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert!(!store.is_connected());
    let breaker = CircuitBreaker::with_store(options, store).unwrap();
    let calls = Instant::now();
    for _ in 0..1000 {
        breaker.try_acquire().unwrap().record_success();
    }
    for _ in 0..2 {
        breaker.try_acquire().unwrap().record_failure();
    }
    assert!(
        calls.elapsed() < Duration::from_millis(100),
        "{:?}",
        calls.elapsed()
    );
    assert_eq!(breaker.state(), CircuitState::Open);
    drop(blackhole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sick_replica_among_ten_healthy_ones_does_not_open_the_shared_breaker() {
    let redis = RedisServer::start();
    let options = CircuitBreakerOptions::new()
        .failure_ratio(0.5)
        .minimum_throughput(20)
        .sampling_duration(Duration::from_secs(10));
    let breakers = replicas(&redis, "one-sick", &options, 11).await;
    // For 1 s: the sick replica fails every call, the ten others succeed, each every 5 ms.
    let until = Instant::now() + Duration::from_secs(1);
    let tasks = breakers.iter().enumerate().map(|(i, b)| async move {
        let mut calls = 0u32;
        while Instant::now() < until {
            if let Ok(mut permit) = b.try_acquire() {
                permit.record(i == 0);
                calls += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        calls
    });
    let calls = futures_util::future::join_all(tasks).await;
    let total: u32 = calls.iter().sum();
    let started = Instant::now();
    while common::window_sum(&redis, "one-sick", 't') != u64::from(total) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "window {} calls {total}",
            common::window_sum(&redis, "one-sick", 't')
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "one sick replica: {} failures of {} calls in the shared window",
        common::window_sum(&redis, "one-sick", 'f'),
        common::window_sum(&redis, "one-sick", 't')
    );
    assert_eq!(
        common::window_sum(&redis, "one-sick", 'f'),
        u64::from(calls[0])
    );
    for b in &breakers {
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "the fleet's ratio is about 1/11"
        );
    }
    // The same sick replica alone (no healthy traffic in the window) does open it.
    // (The ratio decides once the window has run a flush interval, 100 ms, so that every
    // replica's successes are in it.)
    let alone = replicas(&redis, "alone", &options, 2).await;
    let started = Instant::now();
    while alone[0].state() == CircuitState::Closed {
        if let Ok(permit) = alone[0].try_acquire() {
            permit.record_failure();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never opened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually(|| alone.iter().all(|b| b.state() == CircuitState::Open)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_drains_through_a_shared_breaker_one_probe_when_the_break_ends() {
    use stormwall_durable::{DurableQueue, QueueOptions, Worker, WorkerOptions};
    let redis = RedisServer::start();
    let options = consecutive(2);
    let breakers = replicas(&redis, "worker", &options, 2).await;
    // The target is down: another replica trips the shared breaker.
    for _ in 0..2 {
        breakers[1].try_acquire().unwrap().record_failure();
    }
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Open)).await;
    let dir = std::env::temp_dir().join(format!("stormwall-redis-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("queue.db");
    let _ = std::fs::remove_file(&path);
    let queue = DurableQueue::open(&path, QueueOptions::default()).unwrap();
    for i in 0..20 {
        queue
            .enqueue("charges", format!("{i}").into_bytes(), None)
            .await
            .unwrap();
    }
    // The target is back; the worker must send one probe when the break ends, close the
    // circuit, and drain (before the fix, a dropped probe permit gave the lease back and
    // the worker asked again forever).
    let worker = Worker::new(
        queue.clone(),
        "charges",
        WorkerOptions {
            idle: Duration::from_millis(20),
            ..WorkerOptions::default()
        },
        Some(breakers[0].clone()),
    );
    let ran = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = ran.clone();
    let drain = worker.run_until(
        move |_job| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        },
        async {
            while ran.load(std::sync::atomic::Ordering::SeqCst) < 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    );
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("the worker drains within 10 s")
        .unwrap();
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Closed)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// One replica's view of a probe it was admitted for.
struct Holding {
    slot: u32,
    token: u64,
    generation: u64,
    /// Until when Redis keeps the lease (its PTTL when the probe was admitted).
    alive_until: Instant,
    admitted: Instant,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Replicas race for probe leases whose holders keep them past their expiry; a probe is
    /// admitted only with a lease Redis holds for it, never more than permitted at once,
    /// and a stale holder giving its lease back never frees another's.
    #[test]
    fn concurrent_lease_acquisitions_after_expiry_never_admit_more_probes_than_permitted(
        permitted in 1u32..=3,
        replica_count in 2usize..=4,
        holds in proptest::collection::vec(0u64..500, 24),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let redis = RedisServer::start();
            let name = "leases";
            let options = consecutive(1)
                .break_duration(Duration::from_millis(1))
                .permitted_calls_in_half_open(permitted);
            let store_options = RedisStoreOptions {
                probe_lease: Duration::from_millis(200),
                lease_claim: Duration::from_millis(10),
                ..RedisStoreOptions::default()
            };
            let mut stores = Vec::new();
            for _ in 0..replica_count {
                let store = RedisStateStore::connect(&redis.url(), name, &options, store_options.clone())
                    .await
                    .unwrap();
                stores.push(store);
            }
            // Trip it: half-open after 1 ms.
            let ticket = stores[0].try_acquire().result.unwrap();
            stores[0].record(ticket, CallOutcome { failure: true, slow: false });
            eventually(|| stores.iter().all(|s| s.state() != CircuitState::Closed)).await;
            // Read in-process (a redis-cli per read would take longer than a lease).
            let mut direct = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
            let mut leases = |permitted: u32| -> HashMap<u32, String> {
                (1..=permitted)
                    .filter_map(|slot| {
                        let key = format!("stormwall:{{{name}}}:lease:{slot}");
                        let value: Option<String> = redis::cmd("GET").arg(&key).query(&mut direct).unwrap();
                        value.map(|v| (slot, v))
                    })
                    .collect()
            };
            let mut ttls = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
            let mut holding: Vec<(usize, Holding)> = Vec::new();
            let (mut admitted, mut checked) = (0, 0);
            let mut next_hold = holds.iter().cycle();
            let until = Instant::now() + Duration::from_millis(600);
            while Instant::now() < until {
                for (i, store) in stores.iter().enumerate() {
                    let before = Instant::now();
                    if let Ok(Ticket::Probe { generation, lease: Some(lease) }) = store.try_acquire().result {
                        admitted += 1;
                        // Admitted only with a lease Redis holds for it.
                        let asked = Instant::now();
                        let key = format!("stormwall:{{{name}}}:lease:{}", lease.slot);
                        let value = leases(permitted).remove(&lease.slot).unwrap_or_default();
                        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut ttls).unwrap();
                        // A lease is used only while it has a tenth of its life (here 20 ms)
                        // left by the replica's own conservative clock, so Redis holds it at
                        // least that long after admission: a read answered within 20 ms of
                        // `before` must find it. Later, on a loaded machine (this thread
                        // descheduled between admission and the read), it may have expired
                        // and the slot gone to another replica by right: not checked.
                        if before.elapsed() < store_options.probe_lease / 10 {
                            checked += 1;
                            assert_eq!(value, format!("{generation}:{}", lease.token), "admitted without its lease");
                        }
                        let ttl = ttl.max(0) as u64;
                        holding.push((i, Holding {
                            slot: lease.slot,
                            token: lease.token,
                            generation,
                            alive_until: asked + Duration::from_millis(ttl),
                            admitted: Instant::now(),
                        }));
                    }
                }
                // Probes whose hold is over are cancelled (the lease goes back to Redis by
                // compare-and-delete, late for those held past expiry).
                let now = Instant::now();
                let mut k = 0;
                while k < holding.len() {
                    let hold = Duration::from_millis(*next_hold.next().unwrap());
                    if now.duration_since(holding[k].1.admitted) >= hold {
                        let (i, h) = holding.swap_remove(k);
                        stores[i].release(Ticket::Probe { generation: h.generation, lease: Some(stormwall::circuit_breaker::ProbeLease { slot: h.slot, token: h.token }) });
                    } else {
                        k += 1;
                    }
                }
                // Never more unexpired leases than permitted, and every unexpired holder
                // still owns its slot.
                let held = leases(permitted);
                // Probes admitted and still within their lease's life: at most `permitted`.
                let live = holding.iter().filter(|(_, h)| Instant::now() < h.alive_until).count();
                assert!(live <= permitted as usize, "{live} live probes for {permitted} leases");
                let checked = Instant::now();
                for (_, h) in &holding {
                    if checked + Duration::from_millis(2) < h.alive_until {
                        // Redis keeps its lease until then: nobody may have taken or freed it.
                        assert_eq!(held.get(&h.slot), Some(&format!("{}:{}", h.generation, h.token)), "a live lease was taken or freed by another");
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert!(admitted > 0, "some probes ran");
            assert!(checked > 0, "some admissions were checked against Redis within 20 ms");
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_calling_every_300ms_still_gets_its_probe_and_closes() {
    let redis = RedisServer::start();
    let options = consecutive(2);
    let breakers = replicas(&redis, "slow-caller", &options, 1).await;
    let b = &breakers[0];
    for _ in 0..2 {
        b.try_acquire().unwrap().record_failure();
    }
    eventually(|| b.state() == CircuitState::Open).await;
    // Calls 300 ms apart (longer than lease_claim, 200 ms): the lease the first call after
    // the break asked for waits for the next call, since nobody else wants it.
    let started = Instant::now();
    loop {
        if let Ok(permit) = b.try_acquire() {
            permit.record_success();
        }
        if b.state() == CircuitState::Closed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never probed: {:?}",
            b.state()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_command_that_waited_out_an_outage_loses_to_a_later_one() {
    // Both replicas start before Redis does: their commands wait, pending.
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let options = consecutive(3);
    let store = |name: &str| {
        RedisStateStore::spawn(&url, name, &options, RedisStoreOptions::default()).unwrap()
    };
    let a = CircuitBreaker::with_store(options.clone(), store("operators")).unwrap();
    let b = CircuitBreaker::with_store(options.clone(), store("operators")).unwrap();
    a.isolate();
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.isolate();
    b.close(); // the latest decision, given after a's
    let mut redis = RedisServer::start();
    // Re-start the server on the replicas' port.
    redis.stop();
    redis.port = port;
    redis.restart();
    eventually(|| a.store().is_connected() && b.store().is_connected()).await;
    eventually(|| {
        !redis
            .cli(&["HGET", "stormwall:{operators}:state", "mt"])
            .is_empty()
    })
    .await;
    eventually(|| a.state() == CircuitState::Closed && b.state() == CircuitState::Closed).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // a resync later, still closed
    assert_eq!(
        redis.cli(&["HGET", "stormwall:{operators}:state", "s"]),
        "closed"
    );
    assert_eq!(a.state(), CircuitState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_too_large_for_a_replica_are_corrupt_and_replaced() {
    let redis = RedisServer::start();
    redis.cli(&[
        "HSET",
        "stormwall:{huge}:state",
        "s",
        "open",
        "v",
        "99999999999999999999",
        "u",
        "1e300",
        "g",
        "1e14",
        "e",
        "hand",
    ]);
    let breakers = replicas(&redis, "huge", &consecutive(2), 2).await;
    for b in &breakers {
        assert!(b.store().is_connected());
        assert_eq!(b.state(), CircuitState::Closed);
        assert_ne!(b.store().epoch(), "hand");
    }
    assert_eq!(breakers[0].store().outages(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_overflowing_messages_neither_open_the_fleet_nor_stop_a_replica() {
    let redis = RedisServer::start();
    let breakers = replicas(&redis, "forged", &consecutive(2), 2).await;
    let channel = "stormwall:{forged}:events:0";
    let epoch = breakers[0].store().epoch();
    // Another epoch: only a reason to read Redis, which says closed.
    redis.cli(&[
        "PUBLISH",
        channel,
        "forged|0|open|60000|consecutive_failures|closed|x",
    ]);
    // The current epoch, a break too long for any clock.
    redis.cli(&[
        "PUBLISH",
        channel,
        &format!("{epoch}|0|closed|18446744073709551615|x|closed|x"),
    ]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for b in &breakers {
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.store().epoch(), epoch);
    }
    // Both replicas' tasks still run: a trip reaches the other.
    for _ in 0..2 {
        breakers[0].try_acquire().unwrap().record_failure();
    }
    eventually(|| breakers.iter().all(|b| b.state() == CircuitState::Open)).await;
    assert_eq!(redis.cli(&["HGET", "stormwall:{forged}:state", "e"]), epoch);
}
