//! Fault injection for the Redis-shared breaker, from the outside.
//!
//! Ten replicas — separate OS processes (this test binary run again as `replica_process`),
//! each with a `RedisStateStore` breaker (5 consecutive failures, 1 s break), one call at a
//! time with 50 ms between calls; a failing call takes 100 ms — call a
//! dependency that this test serves on loopback and that counts every call it receives.
//! They reach a real `redis-server` through a `stormwall chaos` proxy (the `stormwall`
//! binary, driven over its Toxiproxy HTTP API), so the test can partition, blackhole, delay
//! and re-point the link. For each fault, after a breaker history of trip → probe → close
//! (the state at version 3):
//! - while the fault lasts (the dependency healthy), no call is rejected or fails;
//! - every replica converges to Redis's state (epoch, version, state) within 1 s after
//!   the fault heals (measured, printed);
//! - the dependency then fails: at most threshold + replicas = 15 calls reach it, counted
//!   by the dependency, before every replica is open;
//! - the dependency recovers: no replica stays open after the break.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stormwall_testkit::{free_port, RedisServer};

const REPLICAS: usize = 10;
const THRESHOLD: u32 = 5;
const BREAKER: &str = "faults";
const STATE_KEY: &str = "stormwall:{faults}:state";
/// Each replica makes one call at a time, and pauses this long between calls (200 calls/s
/// across the fleet). A trip must reach every replica within a pause for the bound to
/// hold: a replica that has not heard of it calls once more.
const PAUSE: Duration = Duration::from_millis(50);

/// One scenario at a time: they load the machine with a dozen processes each.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------- the replica process

/// Run as a child process by the scenarios (does nothing when run by the harness itself):
/// calls the dependency through the shared breaker, one call at a time, and answers
/// `status` on stdin with a line on stdout. Ends when stdin closes.
#[test]
fn replica_process() {
    let Ok(url) = std::env::var("STORMWALL_FAULT_REDIS") else {
        return;
    };
    let dependency = std::env::var("STORMWALL_FAULT_DEPENDENCY").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(replica(url, dependency));
}

#[derive(Default)]
struct Counts {
    ok: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    rejected: std::sync::atomic::AtomicU64,
}

async fn replica(url: String, dependency: String) {
    use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
    use stormwall_redis::{RedisStateStore, RedisStoreOptions};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut options = CircuitBreakerOptions::new()
        .consecutive_failures(THRESHOLD)
        .break_duration(Duration::from_secs(1));
    options.failure_ratio = None;
    let store = RedisStateStore::connect(&url, BREAKER, &options, RedisStoreOptions::default())
        .await
        .unwrap();
    let breaker = CircuitBreaker::with_store(options, store).unwrap();
    let counts = Arc::new(Counts::default());
    let caller = {
        let (breaker, counts) = (breaker.clone(), counts.clone());
        tokio::spawn(async move {
            loop {
                match breaker.try_acquire() {
                    Ok(permit) => {
                        if call(&dependency).await {
                            permit.record_success();
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            permit.record_failure();
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        counts.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
        })
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() != "status" {
            continue;
        }
        let store = breaker.store();
        let epoch = store.epoch();
        let status = format!(
            "STATUS {} {} {} {} {} {} {}\n",
            breaker.state(),
            if epoch.is_empty() { "-" } else { &epoch },
            store.version(),
            store.is_connected(),
            counts.ok.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
            counts.rejected.load(Ordering::Relaxed),
        );
        stdout.write_all(status.as_bytes()).await.unwrap();
        stdout.flush().await.unwrap();
    }
    caller.abort();
}

/// One call: `true` when the dependency answered success.
async fn call(dependency: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(dependency).await.ok()?;
        stream.write_all(b"x").await.ok()?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await.ok()?;
        Some(answer[0] == b'S')
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

// ---------------------------------------------------------------- the test's side

/// The dependency: answers `S` at once while healthy; while failing, answers `F` after
/// 100 ms (about what a call that times out costs) and counts the call.
struct Dependency {
    addr: String,
    failing: Arc<AtomicBool>,
    reached_while_failing: Arc<AtomicU32>,
}

impl Dependency {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let failing = Arc::new(AtomicBool::new(false));
        let reached = Arc::new(AtomicU32::new(0));
        let (f, r) = (failing.clone(), reached.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (f, r) = (f.clone(), r.clone());
                std::thread::spawn(move || {
                    let mut byte = [0u8; 1];
                    if stream.read_exact(&mut byte).is_err() {
                        return;
                    }
                    if f.load(Ordering::SeqCst) {
                        r.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        let _ = stream.write_all(b"F");
                    } else {
                        let _ = stream.write_all(b"S");
                    }
                });
            }
        });
        Dependency {
            addr,
            failing,
            reached_while_failing: reached,
        }
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn reached(&self) -> u32 {
        self.reached_while_failing.load(Ordering::SeqCst)
    }
}

/// `stormwall chaos`, driven over its Toxiproxy HTTP API.
struct Chaos {
    child: Child,
    api: String,
}

impl Chaos {
    fn start() -> Self {
        let api = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_stormwall"))
            .args(["chaos", "--listen", &api])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let chaos = Chaos { child, api };
        let started = Instant::now();
        while chaos.try_request("GET", "/version", None).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "chaos did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        chaos
    }

    fn try_request(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(&self.api).ok()?;
        let body = body.unwrap_or("");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }

    /// A request that must succeed (2xx).
    fn request(&self, method: &str, path: &str, body: &str) {
        let (status, answer) = self
            .try_request(method, path, Some(body))
            .unwrap_or_else(|| panic!("chaos API did not answer {method} {path}"));
        assert!(
            (200..300).contains(&status),
            "{method} {path} {body}: {status} {answer}"
        );
    }

    /// A proxy `name` on a free loopback port to `upstream`; its port.
    fn proxy(&self, name: &str, upstream: u16) -> u16 {
        let port = free_port();
        self.request(
            "POST",
            "/proxies",
            &format!(r#"{{"name":"{name}","listen":"127.0.0.1:{port}","upstream":"127.0.0.1:{upstream}"}}"#),
        );
        port
    }

    fn enable(&self, name: &str, enabled: bool) {
        self.request(
            "POST",
            &format!("/proxies/{name}"),
            &format!(r#"{{"enabled":{enabled}}}"#),
        );
    }

    fn upstream(&self, name: &str, upstream: u16) {
        // Disabled around the change: Toxiproxy closes the listener before it re-binds.
        self.enable(name, false);
        self.request(
            "POST",
            &format!("/proxies/{name}"),
            &format!(r#"{{"upstream":"127.0.0.1:{upstream}"}}"#),
        );
        self.enable(name, true);
    }

    fn toxic(&self, proxy: &str, name: &str, kind: &str, stream: &str, attributes: &str) {
        self.request(
            "POST",
            &format!("/proxies/{proxy}/toxics"),
            &format!(r#"{{"name":"{name}","type":"{kind}","stream":"{stream}","toxicity":1.0,"attributes":{attributes}}}"#),
        );
    }

    fn remove_toxic(&self, proxy: &str, name: &str) {
        self.request("DELETE", &format!("/proxies/{proxy}/toxics/{name}"), "");
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    state: String,
    epoch: String,
    version: u64,
    connected: bool,
    ok: u64,
    failed: u64,
    rejected: u64,
}

struct Replica {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Replica {
    fn start(redis_port: u16, dependency: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "replica_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "STORMWALL_FAULT_REDIS",
                format!("redis://127.0.0.1:{redis_port}"),
            )
            .env("STORMWALL_FAULT_DEPENDENCY", dependency)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Replica {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    fn status(&mut self) -> Status {
        writeln!(self.stdin, "status").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "replica ended"
            );
            // The harness may print its own words before ours on the first line.
            if let Some(rest) = line.trim().split("STATUS ").nth(1) {
                let f: Vec<&str> = rest.split(' ').collect();
                return Status {
                    state: f[0].to_owned(),
                    epoch: f[1].to_owned(),
                    version: f[2].parse().unwrap(),
                    connected: f[3] == "true",
                    ok: f[4].parse().unwrap(),
                    failed: f[5].parse().unwrap(),
                    rejected: f[6].parse().unwrap(),
                };
            }
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis's own view of the breaker: `(epoch, version, state)`, if the state exists.
fn redis_state(redis: &RedisServer) -> Option<(String, u64, String)> {
    let out = redis.cli(&["HMGET", STATE_KEY, "e", "v", "s"]);
    let f: Vec<&str> = out.lines().collect();
    if f.len() < 3 || f[0].is_empty() {
        return None;
    }
    Some((f[0].to_owned(), f[1].parse().ok()?, f[2].to_owned()))
}

struct Fleet {
    replicas: Vec<Replica>,
}

impl Fleet {
    fn statuses(&mut self) -> Vec<Status> {
        self.replicas.iter_mut().map(Replica::status).collect()
    }

    /// Waits (up to `within`) until every replica's status passes `done`; how long it took.
    fn wait(&mut self, what: &str, within: Duration, done: impl Fn(&Status) -> bool) -> Duration {
        let started = Instant::now();
        loop {
            let statuses = self.statuses();
            if statuses.iter().all(&done) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "not every replica {what} within {within:?}: {statuses:#?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every replica is connected again and holds Redis's state; how long it
    /// took.
    fn converge(&mut self, redis: &RedisServer, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let statuses = self.statuses();
            if let Some((epoch, version, state)) = redis_state(redis) {
                if statuses.iter().all(|s| {
                    s.connected && s.epoch == epoch && s.version == version && s.state == state
                }) {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < within,
                "replicas did not converge to Redis's state {:?} within {within:?}: {statuses:#?}",
                redis_state(redis)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn totals(&mut self) -> (u64, u64, u64) {
        self.statuses().iter().fold((0, 0, 0), |t, s| {
            (t.0 + s.ok, t.1 + s.failed, t.2 + s.rejected)
        })
    }
}

/// What one scenario measured (printed).
#[derive(Debug)]
#[allow(dead_code)]
struct Outcome {
    converged: Duration,
    reached: u32,
}

/// The world of one scenario: a Redis, a chaos proxy `redis` in front of it, the
/// dependency, ten replicas — with the history trip → probe → close behind them.
struct World {
    redis: RedisServer,
    chaos: Chaos,
    link: u16,
    dependency: Dependency,
    fleet: Fleet,
}

impl World {
    fn start() -> Self {
        let redis = RedisServer::start();
        let chaos = Chaos::start();
        let link = chaos.proxy("redis", redis.port);
        let dependency = Dependency::start();
        let replicas = (0..REPLICAS)
            .map(|_| Replica::start(link, &dependency.addr))
            .collect();
        let mut world = World {
            redis,
            chaos,
            link,
            dependency,
            fleet: Fleet { replicas },
        };
        world
            .fleet
            .wait("connected and closed", Duration::from_secs(20), |s| {
                s.connected && s.state == "closed"
            });
        world
    }

    /// Trip → probe → close, seen by every replica.
    fn history(&mut self) {
        self.dependency.fail(true);
        self.fleet
            .wait("open", Duration::from_secs(10), |s| s.state == "open");
        self.dependency.fail(false);
        self.fleet
            .wait("closed again", Duration::from_secs(10), |s| {
                s.state == "closed"
            });
    }

    /// Heals the fault's effects (already done by the caller), then checks every promise.
    fn after(&mut self, name: &str, healed: Instant, calm: (u64, u64)) -> Outcome {
        self.fleet.converge(&self.redis, Duration::from_secs(10));
        let converged_after_heal = healed.elapsed();
        let (_, failed, rejected) = self.fleet.totals();
        assert_eq!(
            (failed, rejected),
            calm,
            "{name}: calls failed or were rejected while Redis was faulty and the dependency healthy"
        );
        // The dependency fails: count what reaches it until every replica is open.
        let before = self.dependency.reached();
        self.dependency.fail(true);
        self.fleet
            .wait("open", Duration::from_secs(10), |s| s.state == "open");
        let reached = self.dependency.reached() - before;
        // It recovers: nobody stays open after the break.
        self.dependency.fail(false);
        self.fleet
            .wait("closed after recovery", Duration::from_secs(5), |s| {
                s.state == "closed"
            });
        println!(
            "{name}: converged {converged_after_heal:?} after the fault healed; {reached} calls reached the failing dependency (bound {})",
            THRESHOLD as usize + REPLICAS
        );
        assert!(
            converged_after_heal <= Duration::from_secs(1),
            "{name}: converged only after {converged_after_heal:?}"
        );
        assert!(
            reached as usize <= THRESHOLD as usize + REPLICAS,
            "{name}: {reached} calls reached the failing dependency"
        );
        Outcome {
            converged: converged_after_heal,
            reached,
        }
    }

    /// Failed and rejected calls so far (they must not grow while Redis is faulty).
    fn calm(&mut self) -> (u64, u64) {
        let (_, failed, rejected) = self.fleet.totals();
        (failed, rejected)
    }
}

/// Runs `fault` (which injects and heals, returning when it healed) in a fresh world.
fn scenario(name: &str, fault: impl FnOnce(&mut World) -> Instant) -> Outcome {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut world = World::start();
    world.history();
    let (_, version, _) = redis_state(&world.redis).expect("a state after the history");
    assert_eq!(version, 3, "trip, probe, close");
    let calm = world.calm();
    let healed = fault(&mut world);
    world.after(name, healed, calm)
}

/// Keeps the replicas calling for a while (the fault holds), proving calls go on.
fn hold(world: &mut World, duration: Duration) {
    let (ok, _, _) = world.fleet.totals();
    std::thread::sleep(duration);
    let (later, _, _) = world.fleet.totals();
    assert!(later > ok, "calls went on");
}

#[test]
fn redis_killed_and_restarted_empty() {
    scenario("killed, restarted empty", |w| {
        w.redis.stop();
        w.fleet
            .wait("on the local breaker", Duration::from_secs(5), |s| {
                !s.connected
            });
        hold(w, Duration::from_millis(500));
        w.redis.restart();
        Instant::now()
    });
}

#[test]
fn flushall() {
    scenario("FLUSHALL", |w| {
        w.redis.cli(&["FLUSHALL"]);
        Instant::now()
    });
}

#[test]
fn keys_deleted() {
    scenario("keys deleted", |w| {
        w.redis
            .cli(&["DEL", STATE_KEY, "stormwall:{faults}:window"]);
        Instant::now()
    });
}

#[test]
fn keys_expired() {
    scenario("keys expired", |w| {
        w.redis.cli(&["PEXPIRE", STATE_KEY, "1"]);
        Instant::now()
    });
}

#[test]
fn link_partitioned_for_5s() {
    scenario("partitioned 5 s", |w| {
        w.chaos.enable("redis", false);
        w.fleet
            .wait("on the local breaker", Duration::from_secs(5), |s| {
                !s.connected
            });
        hold(w, Duration::from_secs(5));
        w.chaos.enable("redis", true);
        Instant::now()
    });
}

#[test]
fn link_with_200ms_latency() {
    scenario("200 ms latency", |w| {
        w.chaos.toxic(
            "redis",
            "slow-down",
            "latency",
            "downstream",
            r#"{"latency":200}"#,
        );
        w.chaos.toxic(
            "redis",
            "slow-up",
            "latency",
            "upstream",
            r#"{"latency":200}"#,
        );
        hold(w, Duration::from_secs(2));
        // A slow link is still a link: the state stays shared.
        let statuses = w.fleet.statuses();
        assert!(statuses.iter().all(|s| s.connected), "{statuses:#?}");
        w.chaos.remove_toxic("redis", "slow-down");
        w.chaos.remove_toxic("redis", "slow-up");
        // What was sent during the fault still arrives 200 ms late (a chunk keeps the delay
        // it got, as in Toxiproxy): the link has healed once that has drained.
        std::thread::sleep(Duration::from_millis(250));
        Instant::now()
    });
}

#[test]
fn failover_to_a_lagging_replica_promoted_with_replicaof_no_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut world = World::start();
    // A second server replicating the first through its own chaos proxy, so the test can
    // cut replication and make it lag.
    let standby = RedisServer::start();
    let replication = world.chaos.proxy("replication", world.redis.port);
    standby.cli(&["REPLICAOF", "127.0.0.1", &replication.to_string()]);
    let started = Instant::now();
    while !standby
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replication did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Trip (replicated), then replication cut, then probe → close on the primary only.
    world.dependency.fail(true);
    world
        .fleet
        .wait("open", Duration::from_secs(10), |s| s.state == "open");
    let started = Instant::now();
    while redis_state(&standby).map(|s| s.1) != Some(1) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the trip did not replicate"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    world.chaos.enable("replication", false);
    world.dependency.fail(false);
    world
        .fleet
        .wait("closed again", Duration::from_secs(10), |s| {
            s.state == "closed"
        });
    assert_eq!(redis_state(&world.redis).unwrap().1, 3);
    assert_eq!(redis_state(&standby).unwrap().1, 1, "the standby lags");
    let calm = world.calm();
    // Failover: the primary dies, the standby is promoted, the link points at it.
    world.redis.stop();
    standby.cli(&["REPLICAOF", "NO", "ONE"]);
    world.chaos.upstream("redis", standby.port);
    let healed = Instant::now();
    // From here the standby is the Redis every check reads.
    let World {
        redis,
        chaos: _chaos,
        dependency,
        fleet,
        link,
    } = world;
    drop(redis);
    let mut world = World {
        redis: standby,
        chaos: _chaos,
        link,
        dependency,
        fleet,
    };
    let outcome = world.after("failover to a lagging replica", healed, calm);
    let (_, version, state) = redis_state(&world.redis).unwrap();
    println!("after the failover: Redis at version {version}, {state}; {outcome:?}");
}

#[test]
fn link_blackholed_for_3s() {
    scenario("blackholed 3 s", |w| {
        // Data stops in both directions; connections stay open (a dead switch, not a reset).
        w.chaos.toxic(
            "redis",
            "hole-down",
            "timeout",
            "downstream",
            r#"{"timeout":0}"#,
        );
        w.chaos.toxic(
            "redis",
            "hole-up",
            "timeout",
            "upstream",
            r#"{"timeout":0}"#,
        );
        // Noticed by the resync (500 ms) timing out (1 s): the local breaker takes over.
        w.fleet
            .wait("on the local breaker", Duration::from_secs(5), |s| {
                !s.connected
            });
        hold(w, Duration::from_secs(3));
        w.chaos.remove_toxic("redis", "hole-down");
        w.chaos.remove_toxic("redis", "hole-up");
        Instant::now()
    });
}
