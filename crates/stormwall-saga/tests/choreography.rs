//! Choreography on real servers: the outbox relay and consumer groups killed for real
//! (SIGKILL) in child processes (this test binary run again, `choreography_child`), a
//! Redis killed and restarted, two consumers of one group racing, poison events.
//!
//! Children are configured through `STORMWALL_CHOREO_*` variables; every wait polls a
//! condition (a file, a row count) with a generous deadline.

use rusqlite::Connection;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stormwall::retry::RetryOptions;
use stormwall::Pipeline;
use stormwall_saga::choreography::{
    Consumer, ConsumerOptions, Message, OutboxSource, PostgresOutbox, PostgresOutboxSource,
    PostgresSubscription, Publisher, RedisStreams, Relay, RetentionOptions, SagaStatus,
    SagaTracker, SqliteInbox, SqliteOutbox, SqliteOutboxSource, Subscription,
};
use stormwall_testkit::{free_port, PostgresServer, RedisServer};

const DEADLINE: Duration = Duration::from_secs(60);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stormwall-choreo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    // One write: processes appending at once never interleave within a line.
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls `done` until it holds (panics after `DEADLINE`, naming `what`).
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A redis-server that persists every write before answering (`appendfsync always`):
/// what a deployment that keeps its events and checkpoints across restarts runs.
struct PersistentRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PersistentRedis {
    fn start(dir: &Path) -> Self {
        let mut redis = PersistentRedis {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let pong = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "PING"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
                .unwrap_or(false);
            if pong {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no final save.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for PersistentRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A connection to the database at `url`, its outbox installed.
async fn outbox_client(url: &str) -> tokio_postgres::Client {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    PostgresOutbox::install(&mut client).await.unwrap();
    client
}

/// Appends `events` in one transaction.
async fn append_all(client: &mut tokio_postgres::Client, events: &[Message]) {
    let tx = client.transaction().await.unwrap();
    for m in events {
        PostgresOutbox::append(&tx, m).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// The environment of a consumer child of group `inventory`.
fn consumer_env(
    url: &str,
    name: &str,
    effects: &Path,
    calls: &Path,
    expect: usize,
) -> Vec<(&'static str, String)> {
    vec![
        ("STORMWALL_CHOREO_URL", url.to_owned()),
        ("STORMWALL_CHOREO_GROUP", "inventory".to_string()),
        ("STORMWALL_CHOREO_CONSUMER", name.to_string()),
        ("STORMWALL_CHOREO_EFFECTS", effects.display().to_string()),
        ("STORMWALL_CHOREO_CALLS", calls.display().to_string()),
        ("STORMWALL_CHOREO_EXPECT", expect.to_string()),
    ]
}

fn child(mode: &str, env: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "choreography_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STORMWALL_CHOREO_CHILD", mode)
        .stdout(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn env(name: &str) -> String {
    std::env::var(format!("STORMWALL_CHOREO_{name}")).unwrap()
}

/// The service's database: an `orders` table and the outbox.
fn service_db(path: &Path) -> Connection {
    let db = Connection::open(path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)")
        .unwrap();
    SqliteOutbox::install(&db).unwrap();
    db
}

/// Commits `n` orders, each with its `order.created` event; and one that rolls back.
fn commit_orders(db: &mut Connection, from: usize, n: usize) {
    for i in from..from + n {
        let tx = db.transaction().unwrap();
        let id = format!("order-{i}");
        tx.execute("INSERT INTO orders VALUES (?1)", [&id]).unwrap();
        SqliteOutbox::append(&tx, &Message::new("order.created", &id, &i).unwrap()).unwrap();
        tx.commit().unwrap();
    }
    let tx = db.transaction().unwrap();
    tx.execute("INSERT INTO orders VALUES ('rolled-back')", [])
        .unwrap();
    SqliteOutbox::append(&tx, &Message::new("order.rolled_back", "x", &()).unwrap()).unwrap();
    drop(tx); // rolls back
}

/// Commits `n` orders in PostgreSQL, each with its `order.created` event; and one that
/// rolls back.
async fn commit_orders_postgres(client: &mut tokio_postgres::Client, from: usize, n: usize) {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)")
        .await
        .unwrap();
    for i in from..from + n {
        let tx = client.transaction().await.unwrap();
        let id = format!("order-{i}");
        tx.execute("INSERT INTO orders VALUES ($1)", &[&id])
            .await
            .unwrap();
        PostgresOutbox::append(&tx, &Message::new("order.created", &id, &i).unwrap())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES ('rolled-back')", &[])
        .await
        .unwrap();
    PostgresOutbox::append(&tx, &Message::new("order.rolled_back", "x", &()).unwrap())
        .await
        .unwrap();
    drop(tx); // rolls back
}

/// A publisher that, in the child about to be killed, stops before or after publishing
/// (writing `marker` first).
struct Stalling {
    inner: RedisStreams,
    marker: PathBuf,
    after_publishing: bool,
}

impl Publisher for Stalling {
    async fn publish(&self, batch: &[Message]) -> Result<(), String> {
        if self.after_publishing {
            self.inner.publish(batch).await?;
        }
        append_line(&self.marker, "stalled");
        std::future::pending::<()>().await;
        unreachable!()
    }
}

/// The effects database of a consumer service: what it did, and its inbox.
fn effects_db(path: &Path) -> Connection {
    let db = Connection::open(path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS effects (event_id TEXT, kind TEXT, consumer TEXT)",
    )
    .unwrap();
    SqliteInbox::install(&db).unwrap();
    db
}

fn count(path: &Path, sql: &str) -> i64 {
    effects_db(path).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The consumer handler of the crash tests: applies its effect once (inbox) in its own
/// transaction, logs the call, and — in the child to be killed — hangs after committing
/// the effect of an event of kind `hang_kind` (killed before it acknowledges).
fn handler(
    effects: PathBuf,
    group: String,
    consumer: String,
    hang_kind: Option<String>,
    calls: PathBuf,
) -> impl Fn(Message) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Sync {
    let db = Arc::new(Mutex::new(effects_db(&effects)));
    move |m: Message| {
        let (db, group, consumer, hang_kind, calls) = (
            db.clone(),
            group.clone(),
            consumer.clone(),
            hang_kind.clone(),
            calls.clone(),
        );
        Box::pin(async move {
            append_line(&calls, &format!("start {} {consumer}", m.id));
            {
                let mut db = db.lock().unwrap();
                let tx = db.transaction().map_err(|e| e.to_string())?;
                if SqliteInbox::first_time(&tx, &group, &m).map_err(|e| e.to_string())? {
                    tx.execute(
                        "INSERT INTO effects VALUES (?1, ?2, ?3)",
                        [&m.id, &m.kind, &consumer],
                    )
                    .map_err(|e| e.to_string())?;
                }
                tx.commit().map_err(|e| e.to_string())?;
            }
            if m.kind == "slow" {
                // Longer than the claim's idle time: the consumer must keep it alive.
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            if hang_kind.as_deref() == Some(m.kind.as_str()) {
                append_line(&calls, &format!("hung {}", m.id));
                std::future::pending::<()>().await;
            }
            append_line(&calls, &format!("end {} {consumer}", m.id));
            Ok(())
        })
    }
}

/// Runs a consumer of the child's backend until the effects database holds `expect`
/// effects.
async fn consume_until_done<S: Subscription>(subscription: S) {
    let effects = PathBuf::from(env("EFFECTS"));
    let expect: i64 = env("EXPECT").parse().unwrap();
    let handle = handler(
        effects.clone(),
        env("GROUP"),
        env("CONSUMER"),
        std::env::var("STORMWALL_CHOREO_HANG").ok(),
        PathBuf::from(env("CALLS")),
    );
    let mut consumer = Consumer::new(
        subscription,
        Pipeline::builder().build().unwrap(),
        ConsumerOptions::default(),
    );
    let done = async {
        wait_until("every effect is applied", || {
            count(&effects, "SELECT COUNT(*) FROM effects") >= expect
        })
        .await
    };
    consumer.run(handle, done).await;
}

/// The child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choreography_child() {
    let Ok(mode) = std::env::var("STORMWALL_CHOREO_CHILD") else {
        return; // run by the harness: nothing to do
    };
    match mode.as_str() {
        "relay" => {
            let dir = PathBuf::from(env("DIR"));
            let mut db = service_db(&dir.join("service.db"));
            let from: usize = env("FROM").parse().unwrap();
            commit_orders(&mut db, from, 5);
            let publisher = Stalling {
                inner: RedisStreams::new(&env("REDIS"), "orders").unwrap(),
                marker: dir.join("stalled"),
                after_publishing: env("AFTER") == "1",
            };
            let relay = Relay::new(
                SqliteOutboxSource::open(dir.join("service.db")).unwrap(),
                publisher,
                Pipeline::builder().build().unwrap(),
            )
            .batch(3);
            relay.publish_pending().await.unwrap();
            unreachable!("the publisher stalls until the process is killed");
        }
        "relay-postgres" => {
            let dir = PathBuf::from(env("DIR"));
            let url = env("URL");
            let mut client = outbox_client(&url).await;
            let from: usize = env("FROM").parse().unwrap();
            commit_orders_postgres(&mut client, from, 5).await;
            let publisher = Stalling {
                inner: RedisStreams::new(&env("REDIS"), "orders").unwrap(),
                marker: dir.join("stalled"),
                after_publishing: env("AFTER") == "1",
            };
            let relay = Relay::new(
                PostgresOutboxSource::new(&url),
                publisher,
                Pipeline::builder().build().unwrap(),
            )
            .batch(3);
            // Until the server has seen the killed relay's connection close (its advisory
            // lock goes with it), this one is not the active relay and publishes nothing.
            loop {
                relay.publish_pending().await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        "consumer-redis" => {
            let streams = RedisStreams::new(&env("URL"), "orders").unwrap();
            let subscription = streams
                .subscribe(env("GROUP"), env("CONSUMER"))
                .claim_idle(Duration::from_secs(1));
            consume_until_done(subscription).await;
        }
        "consumer-postgres" => {
            let subscription = PostgresSubscription::connect(&env("URL"), env("GROUP"))
                .await
                .unwrap();
            consume_until_done(subscription).await;
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// The relay crash scenario against an outbox: `mode`'s child commits five orders (and
/// one that rolls back) and is killed before publishing; the next commits five more,
/// publishes its first batch (three events) and is killed before marking them. Then a
/// relay from `source` publishes all ten, each once. `env` says where the outbox is;
/// `unpublished` counts its unpublished events.
async fn a_relay_killed_twice_publishes_each_event_once<S: OutboxSource>(
    mode: &str,
    dir: &Path,
    env: &[(&'static str, String)],
    source: S,
    unpublished: impl AsyncFn() -> usize,
) {
    let redis = RedisServer::start();
    let stream = RedisStreams::new(&redis.url(), "orders").unwrap();
    let run = |from: usize, after: bool| {
        let _ = std::fs::remove_file(dir.join("stalled"));
        let mut env = env.to_vec();
        env.extend([
            ("STORMWALL_CHOREO_DIR", dir.display().to_string()),
            ("STORMWALL_CHOREO_REDIS", redis.url()),
            ("STORMWALL_CHOREO_FROM", from.to_string()),
            ("STORMWALL_CHOREO_AFTER", u8::from(after).to_string()),
        ]);
        child(mode, &env)
    };
    // 1. Five orders committed; the relay is killed before it publishes anything.
    let relay = run(0, false);
    wait_until("the relay stalls", || dir.join("stalled").exists()).await;
    kill(relay);
    assert_eq!(stream.len().await.unwrap(), 0);
    // 2. Five more committed; the next relay (once the killed one's lock, if any, is gone)
    //    publishes its first batch (three events) and is killed before marking them.
    let relay = run(5, true);
    wait_until("the relay stalls", || dir.join("stalled").exists()).await;
    kill(relay);
    assert_eq!(stream.len().await.unwrap(), 3);
    assert_eq!(unpublished().await, 10);

    // A new relay publishes all ten, the three already in the stream not again.
    let relay = Relay::new(
        source,
        stream.clone(),
        Pipeline::builder()
            .retry(RetryOptions::exponential(Duration::from_millis(10)).max_retries(3))
            .build()
            .unwrap(),
    );
    let started = Instant::now();
    let mut published = 0;
    while published < 10 {
        assert!(started.elapsed() < DEADLINE, "the new relay took over");
        published += relay.publish_pending().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(published, 10);
    assert_eq!(relay.publish_pending().await.unwrap(), 0);
    assert_eq!(unpublished().await, 0);
    let published = stream.entries().await.unwrap();
    let keys: Vec<&str> = published.iter().map(|m| m.stream_key.as_str()).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("order-{i}")).collect();
    assert_eq!(keys, expected, "each committed event once, in commit order");
    assert!(
        published.iter().all(|m| m.kind == "order.created"),
        "nothing rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_before_publishing_or_before_marking_publishes_each_event_once() {
    let dir = temp_dir("relay");
    let source = SqliteOutboxSource::open(dir.join("service.db")).unwrap();
    let unpublished = async || source.unpublished().await.unwrap().len();
    a_relay_killed_twice_publishes_each_event_once("relay", &dir, &[], source.clone(), unpublished)
        .await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_relay_killed_before_publishing_or_before_marking_publishes_each_event_once() {
    let server = PostgresServer::start();
    let url = server.database("relay_kill");
    let dir = temp_dir("relay-postgres");
    let client = outbox_client(&url).await;
    let unpublished = async || -> usize {
        let n: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM stormwall_outbox WHERE published_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n as usize
    };
    let env = [("STORMWALL_CHOREO_URL", url.clone())];
    let source = PostgresOutboxSource::new(&url);
    a_relay_killed_twice_publishes_each_event_once(
        "relay-postgres",
        &dir,
        &env,
        source,
        unpublished,
    )
    .await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs the kill-mid-handler scenario against a backend: `publish` puts six events out;
/// `mode` is the child's consumer.
async fn killed_mid_handler(
    dir: &Path,
    mode: &str,
    url: String,
    publish: impl Future<Output = Vec<Message>>,
) {
    let events = publish.await;
    let (effects, calls) = (dir.join("effects.db"), dir.join("calls.log"));
    effects_db(&effects);
    let consumer = |name: &str, hang: bool| {
        let mut env = consumer_env(&url, name, &effects, &calls, events.len());
        if hang {
            env.push(("STORMWALL_CHOREO_HANG", "payment.completed".to_string()));
        }
        child(mode, &env)
    };
    let first = consumer("consumer-1", true);
    wait_until("the consumer hangs after its effect", || {
        lines(&calls).iter().any(|l| l.starts_with("hung"))
    })
    .await;
    kill(first);
    let hung = lines(&calls)
        .iter()
        .find_map(|l| l.strip_prefix("hung ").map(str::to_owned))
        .unwrap();
    let status = consumer("consumer-2", false).wait().unwrap();
    assert!(
        status.success(),
        "the second consumer finished the group's events"
    );

    let db = effects_db(&effects);
    let mut s = db
        .prepare("SELECT event_id FROM effects ORDER BY rowid")
        .unwrap();
    let applied: Vec<String> = s
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut expected: Vec<String> = events.iter().map(|m| m.id.clone()).collect();
    let mut sorted = applied.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "every effect once");
    let starts = lines(&calls)
        .iter()
        .filter(|l| l.starts_with(&format!("start {hung}")))
        .count();
    assert_eq!(starts, 2, "the event was delivered again after the kill");
}

fn six_events() -> Vec<Message> {
    let created = Message::new("order.created", "order-1", &1).unwrap();
    let mut events = vec![created.clone()];
    for (kind, key) in [
        ("payment.completed", "order-1"),
        ("order.created", "order-2"),
        ("inventory.reserved", "order-1"),
        ("order.created", "order-3"),
        ("shipping.scheduled", "order-1"),
    ] {
        events.push(Message::reacting_to(&created, kind, key, &()).unwrap());
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_consumer_killed_mid_handler_gets_the_event_again_and_its_effect_happens_once() {
    let redis = RedisServer::start();
    let dir = temp_dir("kill-redis");
    let url = redis.url();
    let publish = async {
        let mut events = six_events();
        for (i, m) in events.iter_mut().enumerate() {
            m.position = i as i64 + 1;
        }
        RedisStreams::new(&url, "orders")
            .unwrap()
            .publish(&events)
            .await
            .unwrap();
        events
    };
    killed_mid_handler(&dir, "consumer-redis", redis.url(), publish).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_consumer_killed_mid_handler_gets_the_event_again_and_its_effect_happens_once() {
    let server = PostgresServer::start();
    let url = server.database("kill");
    let dir = temp_dir("kill-postgres");
    let publish = async {
        let mut client = outbox_client(&url).await;
        let events = six_events();
        append_all(&mut client, &events).await;
        events
    };
    killed_mid_handler(&dir, "consumer-postgres", url.clone(), publish).await;
    std::fs::remove_dir_all(&dir).ok();
}

fn numbered(
    kind: &str,
    key: impl Fn(usize) -> String,
    range: std::ops::Range<usize>,
) -> Vec<Message> {
    range
        .map(|i| {
            let mut m = Message::new(kind, key(i), &i).unwrap();
            m.position = i as i64 + 1;
            m
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_resume_from_their_checkpoints_after_redis_is_killed_and_restarted() {
    let dir = temp_dir("redis-restart");
    let mut redis = PersistentRedis::start(&dir);
    let stream = RedisStreams::new(&redis.url(), "orders").unwrap();
    let events = numbered("order.created", |i| format!("order-{i}"), 0..400);
    stream.publish(&events[..200]).await.unwrap();

    let effects = dir.join("effects.db");
    let calls = dir.join("calls.log");
    let handle = handler(
        effects.clone(),
        "billing".into(),
        "c1".into(),
        None,
        calls.clone(),
    );
    let mut consumer = Consumer::new(
        stream.subscribe("billing", "c1"),
        Pipeline::builder().build().unwrap(),
        ConsumerOptions {
            error_backoff: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let running = tokio::spawn(async move {
        consumer.run(handle, stopped.notified()).await;
        consumer
    });
    let applied = || count(&effects, "SELECT COUNT(*) FROM effects");
    wait_until("the consumer is half way", || applied() >= 100).await;
    redis.kill();
    let before_restart = applied();
    redis.restart();
    // The relay's retries ride out the restart; the second half goes out.
    let publish = Pipeline::builder()
        .retry(RetryOptions::exponential(Duration::from_millis(50)).max_retries(20))
        .build()
        .unwrap();
    publish
        .execute(|_| stream.publish(&events[200..]))
        .await
        .unwrap();
    wait_until("every event is applied", || applied() == 400).await;
    stop.notify_one();
    let mut consumer = running.await.unwrap();

    let starts = lines(&calls)
        .iter()
        .filter(|l| l.starts_with("start"))
        .count();
    // Acknowledged events (persisted before Redis answered) are not delivered again: at
    // most the round in flight at the kill is.
    assert!(
        starts <= 400 + ConsumerOptions::default().batch,
        "{starts} handler calls for 400 events ({before_restart} applied before the kill)"
    );
    assert_eq!(applied(), 400, "each effect once");
    assert!(consumer
        .subscription()
        .dead_letters()
        .await
        .unwrap()
        .is_empty());
    let pending = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "XPENDING",
            "orders",
            "billing",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pending.stdout).starts_with('0'),
        "nothing left pending: {}",
        String::from_utf8_lossy(&pending.stdout)
    );
    drop(redis);
    std::fs::remove_dir_all(&dir).ok();
}

/// Checks the calls log of racing consumers: every event started once, and never while
/// another start of it had not ended.
fn assert_no_overlap(calls: &[String], events: &[Message]) {
    let mut running: std::collections::HashMap<&str, u32> = Default::default();
    let mut started: std::collections::HashMap<&str, u32> = Default::default();
    for line in calls {
        let mut words = line.split(' ');
        let (what, id) = (words.next().unwrap(), words.next().unwrap());
        match what {
            "start" => {
                let n = running.entry(id).or_default();
                *n += 1;
                assert_eq!(*n, 1, "event {id} handled by two consumers at once");
                *started.entry(id).or_default() += 1;
            }
            "end" => *running.entry(id).or_default() -= 1,
            _ => {}
        }
    }
    for m in events {
        let about: Vec<&String> = calls.iter().filter(|l| l.contains(&m.id)).collect();
        assert_eq!(
            started.get(m.id.as_str()),
            Some(&1),
            "event {} ({}) started once: {about:?}",
            m.id,
            m.position
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_consumer_processes_of_one_group_never_handle_one_event_at_once() {
    let redis = RedisServer::start();
    let dir = temp_dir("race-redis");
    let mut events = numbered("order.created", |i| format!("order-{i}"), 0..60);
    // Slower than the claim's idle time (1 s): another consumer would take it over,
    // were it not kept alive.
    events[3].kind = "slow".into();
    events[40].kind = "slow".into();
    RedisStreams::new(&redis.url(), "orders")
        .unwrap()
        .publish(&events)
        .await
        .unwrap();
    let (effects, calls) = (dir.join("effects.db"), dir.join("calls.log"));
    effects_db(&effects);
    let consumer = |name: &str| {
        let env = consumer_env(&redis.url(), name, &effects, &calls, events.len());
        child("consumer-redis", &env)
    };
    let (a, b) = (consumer("c1"), consumer("c2"));
    for mut c in [a, b] {
        assert!(c.wait().unwrap().success());
    }
    assert_no_overlap(&lines(&calls), &events);
    let by: i64 = count(&effects, "SELECT COUNT(DISTINCT consumer) FROM effects");
    assert_eq!(by, 2, "both consumers took part");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_consumers_of_one_group_never_handle_one_event_at_once_and_keep_order_per_key()
{
    let server = PostgresServer::start();
    let url = server.database("race");
    let mut client = outbox_client(&url).await;
    // 8 keys × 25 events, appended in 20 transactions, interleaved.
    let events = numbered("tick", |i| format!("key-{}", i % 8), 0..200);
    for chunk in events.chunks(10) {
        append_all(&mut client, chunk).await;
    }
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(
        std::collections::HashMap::<String, Vec<usize>>::new(),
    ));
    let done = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for name in ["c1", "c2"] {
        let (log, seen, done) = (log.clone(), seen.clone(), done.clone());
        let subscription = PostgresSubscription::connect(&url, "ledger").await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(
                subscription,
                Pipeline::builder().build().unwrap(),
                ConsumerOptions {
                    batch: 5,
                    ..Default::default()
                },
            );
            let handle = |m: Message| {
                let (log, seen, done) = (log.clone(), seen.clone(), done.clone());
                async move {
                    log.lock().unwrap().push(format!("start {} {name}", m.id));
                    tokio::task::yield_now().await;
                    let n: usize = m.payload().map_err(|e| e.to_string())?;
                    seen.lock()
                        .unwrap()
                        .entry(m.stream_key.clone())
                        .or_default()
                        .push(n);
                    log.lock().unwrap().push(format!("end {} {name}", m.id));
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            };
            let all_done = async {
                while done.load(Ordering::SeqCst) < 200 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            consumer.run(handle, all_done).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_no_overlap(&log.lock().unwrap(), &events);
    for (key, order) in seen.lock().unwrap().iter() {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, &sorted, "events of {key} handled in order");
    }
    let by: std::collections::HashSet<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(by.len(), 2, "both consumers took part");
}

/// A poison event (its handler fails while `broken`) goes to the dead letters after
/// `max_attempts`, the other events proceed; requeued once fixed, it is handled.
async fn poison_is_dead_lettered_and_requeued<S: Subscription>(
    mut subscription: S,
    events: Vec<Message>,
) {
    let broken = Arc::new(AtomicBool::new(true));
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let tries = Arc::new(AtomicU32::new(0));
    let handle = {
        let (broken, handled, tries) = (broken.clone(), handled.clone(), tries.clone());
        move |m: Message| {
            let (broken, handled, tries) = (broken.clone(), handled.clone(), tries.clone());
            async move {
                if m.kind == "poison" && broken.load(Ordering::SeqCst) {
                    tries.fetch_add(1, Ordering::SeqCst);
                    return Err(format!("cannot parse {}", m.payload));
                }
                handled.lock().unwrap().push(m.id.clone());
                Ok(())
            }
        }
    };
    let ids = |ms: &[Message]| ms.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
    let _ = subscription.dead_letters().await.unwrap();
    let mut consumer = Consumer::new(
        subscription,
        Pipeline::builder()
            .retry(RetryOptions::exponential(Duration::from_millis(1)).max_retries(1))
            .build()
            .unwrap(),
        ConsumerOptions {
            max_attempts: 3,
            ..Default::default()
        },
    );
    let good: Vec<Message> = events
        .iter()
        .filter(|m| m.kind != "poison")
        .cloned()
        .collect();
    let started = Instant::now();
    while handled.lock().unwrap().len() < good.len() {
        assert!(started.elapsed() < DEADLINE);
        consumer.poll_once(&handle).await.unwrap();
    }
    let mut got = handled.lock().unwrap().clone();
    let at = |id: &str| got.iter().position(|h| h == id).unwrap();
    assert!(
        at(&events[0].id) < at(&events[4].id),
        "order-0's events in order"
    );
    got.sort();
    let mut want = ids(&good);
    want.sort();
    assert_eq!(got, want, "the others, each once");
    assert_eq!(
        tries.load(Ordering::SeqCst),
        6,
        "3 attempts of 2 tries each (one retry)"
    );
    let dead = consumer.subscription().dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.kind, "poison");
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].reason.contains("cannot parse"),
        "{}",
        dead[0].reason
    );
    assert!(matches!(
        consumer.subscription().requeue("12345").await,
        Err(stormwall_saga::SagaError::UnknownDeadLetter { .. })
    ));

    broken.store(false, Ordering::SeqCst);
    consumer.subscription().requeue(&dead[0].id).await.unwrap();
    let started = Instant::now();
    while handled.lock().unwrap().len() < events.len() {
        assert!(started.elapsed() < DEADLINE);
        consumer.poll_once(&handle).await.unwrap();
    }
    assert_eq!(handled.lock().unwrap().last(), Some(&dead[0].message.id));
    assert!(consumer
        .subscription()
        .dead_letters()
        .await
        .unwrap()
        .is_empty());
}

/// An event whose handler never finishes — the consumer is stopped inside it, as by a
/// crash, three times — is dead-lettered without running a fourth time. `subscription`
/// has one event.
async fn a_handler_that_never_finishes_is_dead_lettered<S: Subscription>(subscription: S) {
    let hangs = Arc::new(AtomicU32::new(0));
    let hanging = |_: Message| {
        let hangs = hangs.clone();
        async move {
            hangs.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<(), String>>().await
        }
    };
    let mut consumer = Consumer::new(
        subscription,
        Pipeline::builder().build().unwrap(),
        ConsumerOptions {
            max_attempts: 3,
            ..Default::default()
        },
    );
    while hangs.load(Ordering::SeqCst) < 3 {
        let before = hangs.load(Ordering::SeqCst);
        // Stopped once the handler is in (the future dropped, as a kill would).
        tokio::select! {
            r = consumer.poll_once(&hanging) => assert_eq!(r.unwrap(), 0),
            () = wait_until("the handler is entered", || hangs.load(Ordering::SeqCst) > before) => {}
        }
    }
    let settled = consumer.poll_once(&hanging).await.unwrap();
    assert_eq!(settled, 1);
    assert_eq!(hangs.load(Ordering::SeqCst), 3, "not run a fourth time");
    let dead = consumer.subscription().dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("none finished"),
        "{}",
        dead[0].reason
    );
}

fn poison_events() -> Vec<Message> {
    let mut events = numbered("order.created", |i| format!("order-{i}"), 0..6);
    events[2].kind = "poison".into();
    events[2].stream_key = "order-0".into(); // held back behind it: order-0's next event
    events[4].stream_key = "order-0".into();
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_poison_events_are_dead_lettered_inspected_and_requeued() {
    let redis = RedisServer::start();
    let streams = RedisStreams::new(&redis.url(), "orders").unwrap();
    let events = poison_events();
    streams.publish(&events).await.unwrap();
    poison_is_dead_lettered_and_requeued(streams.subscribe("billing", "c1"), events).await;

    let crashy = RedisStreams::new(&redis.url(), "crashy").unwrap();
    crashy
        .publish(&numbered("boom", |_| "k".into(), 0..1))
        .await
        .unwrap();
    a_handler_that_never_finishes_is_dead_lettered(crashy.subscribe("billing", "c1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_poison_events_are_dead_lettered_inspected_and_requeued() {
    let server = PostgresServer::start();
    for (db, events) in [
        ("poison", poison_events()),
        ("crashy", numbered("boom", |_| "k".into(), 0..1)),
    ] {
        let url = server.database(db);
        let mut client = outbox_client(&url).await;
        append_all(&mut client, &events).await;
        let subscription = PostgresSubscription::connect(&url, "billing")
            .await
            .unwrap();
        if db == "poison" {
            poison_is_dead_lettered_and_requeued(subscription, events).await;
        } else {
            a_handler_that_never_finishes_is_dead_lettered(subscription).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outbox_is_relayed_to_redis_by_one_relay_at_a_time() {
    let server = PostgresServer::start();
    let redis = RedisServer::start();
    let url = server.database("relay");
    let mut client = outbox_client(&url).await;
    let append = async |client: &mut tokio_postgres::Client, range: std::ops::Range<usize>| {
        for i in range {
            let tx = client.transaction().await.unwrap();
            let m = Message::new("order.created", format!("order-{i}"), &i).unwrap();
            PostgresOutbox::append(&tx, &m).await.unwrap();
            if i == 3 {
                continue; // dropped: rolled back
            }
            tx.commit().await.unwrap();
        }
    };
    append(&mut client, 0..20).await;
    let stream = RedisStreams::new(&redis.url(), "orders").unwrap();
    let relay = || {
        Relay::new(
            stormwall_saga::choreography::PostgresOutboxSource::new(&url),
            stream.clone(),
            Pipeline::builder().build().unwrap(),
        )
        .batch(7)
    };
    let (first, second) = (relay(), relay());
    assert_eq!(first.publish_pending().await.unwrap(), 19);
    assert_eq!(
        second.publish_pending().await.unwrap(),
        0,
        "the first one is the active relay"
    );
    append(&mut client, 20..25).await;
    drop(first); // its connection, and its lock, go
    let started = Instant::now();
    let mut published = 0;
    while published < 5 {
        assert!(started.elapsed() < DEADLINE, "the second relay took over");
        published += second.publish_pending().await.unwrap();
    }
    let keys: Vec<String> = stream
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.stream_key)
        .collect();
    let expected: Vec<String> = (0..25)
        .filter(|i| *i != 3)
        .map(|i| format!("order-{i}"))
        .collect();
    assert_eq!(keys, expected, "each committed event once, in commit order");
}

/// The tracker's suite, on either backend: `tracker` stalls sagas after a minute;
/// `backdate(correlation_id)` moves a saga's events ten minutes into the past.
async fn tracker_suite(tracker: SagaTracker, backdate: impl AsyncFn(&str)) {
    let saga = |kinds: &[&str]| {
        let first = Message::new(kinds[0], "order-1", &()).unwrap();
        let mut events = vec![first.clone()];
        for kind in &kinds[1..] {
            events.push(Message::reacting_to(&first, *kind, "order-1", &()).unwrap());
        }
        events
    };
    let done = saga(&["order.created", "payment.completed", "order.completed"]);
    let stuck = saga(&["order.created", "payment.completed"]);
    let going = saga(&["order.created"]);
    for event in done.iter().chain(&stuck).chain(&going) {
        assert!(tracker.record(event).await.unwrap(), "new: recorded");
    }
    assert!(
        !tracker.record(&stuck[1]).await.unwrap(),
        "delivered again: tracked once"
    );
    // A finished saga's late event (its consumer was slow): the latest of all.
    let late = Message::reacting_to(&done[0], "invoice.sent", "order-1", &()).unwrap();
    assert!(tracker.record(&late).await.unwrap());
    backdate(&stuck[0].correlation_id).await;
    let id = |events: &[Message]| events[0].correlation_id.clone();
    let ids = |sagas: Vec<stormwall_saga::choreography::SagaProgress>| {
        sagas
            .into_iter()
            .map(|p| (p.correlation_id, p.status))
            .collect::<Vec<_>>()
    };

    let finished = tracker.progress(&id(&done)).await.unwrap().unwrap();
    assert_eq!(finished.status, SagaStatus::Finished);
    assert_eq!(
        finished.kinds(),
        [
            "order.created",
            "payment.completed",
            "order.completed",
            "invoice.sent"
        ]
    );
    assert_eq!(finished.outcome(), Some("order.completed"));
    assert!(tracker.progress("unknown").await.unwrap().is_none());
    let stalled = tracker.stalled().await.unwrap();
    assert_eq!(ids(stalled.clone()), [(id(&stuck), SagaStatus::Stalled)]);
    assert_eq!(
        stalled[0].last_kind(),
        "payment.completed",
        "where it stopped"
    );
    assert_eq!(stalled[0].outcome(), None);
    assert_eq!(
        ids(tracker.in_progress().await.unwrap()),
        [
            (id(&stuck), SagaStatus::Stalled),
            (id(&going), SagaStatus::Running)
        ]
    );
    assert_eq!(
        ids(tracker.all().await.unwrap()),
        [
            (id(&done), SagaStatus::Finished),
            (id(&stuck), SagaStatus::Stalled),
            (id(&going), SagaStatus::Running)
        ]
    );
    // The two with the latest events, in the order they started.
    assert_eq!(
        ids(tracker.recent(2).await.unwrap()),
        [
            (id(&done), SagaStatus::Finished),
            (id(&going), SagaStatus::Running)
        ]
    );
    // What a dashboard shows: the unfinished first, however old.
    assert_eq!(
        ids(tracker.overview(2).await.unwrap()),
        [
            (id(&stuck), SagaStatus::Stalled),
            (id(&going), SagaStatus::Running)
        ]
    );
    assert_eq!(tracker.overview(3).await.unwrap().len(), 3);
    // As the dashboard reads it.
    let json = serde_json::to_value(&stalled[0]).unwrap();
    assert_eq!(json["status"], "stalled");
    assert_eq!(json["events"][1]["kind"], "payment.completed");
    // With no patience every unfinished saga is stalled.
    let impatient = tracker.clone().stalled_after(Duration::ZERO);
    assert_eq!(impatient.stalled().await.unwrap().len(), 2);

    // Finished sagas are forgotten after a while; unfinished ones, however old, are kept.
    assert_eq!(tracker.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(tracker.purge(Duration::ZERO).await.unwrap(), 4);
    assert!(tracker.progress(&id(&done)).await.unwrap().is_none());
    assert_eq!(
        ids(tracker.all().await.unwrap()),
        [
            (id(&stuck), SagaStatus::Stalled),
            (id(&going), SagaStatus::Running)
        ]
    );
}

const TEN_MINUTES_MS: i64 = 600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_suite_passes_on_sqlite_and_postgres() {
    let dir = temp_dir("tracker");
    let path = dir.join("tracker.db");
    let terminal = ["order.completed", "order.cancelled"];
    let tracker = SagaTracker::open(&path, terminal)
        .unwrap()
        .stalled_after(Duration::from_secs(60));
    tracker_suite(tracker, async |correlation: &str| {
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE stormwall_saga_tracking SET seen_at = seen_at - ?2 WHERE correlation_id = ?1",
                rusqlite::params![correlation, TEN_MINUTES_MS],
            )
            .unwrap();
    })
    .await;

    let server = PostgresServer::start();
    let url = server.database("tracker");
    let tracker = SagaTracker::connect(&url, terminal)
        .await
        .unwrap()
        .stalled_after(Duration::from_secs(60));
    let client = outbox_client(&url).await;
    tracker_suite(tracker, async |correlation: &str| {
        client
            .execute(
                "UPDATE stormwall_saga_tracking SET seen_at = seen_at - $2 WHERE correlation_id = $1",
                &[&correlation, &TEN_MINUTES_MS],
            )
            .await
            .unwrap();
    })
    .await;
    std::fs::remove_dir_all(&dir).ok();
}

/// A publisher that keeps what it is given.
#[derive(Default)]
struct Collect(Mutex<Vec<Message>>);

impl Publisher for Collect {
    async fn publish(&self, batch: &[Message]) -> Result<(), String> {
        self.0.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }
}

const EIGHT_DAYS_MS: i64 = 8 * 24 * 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_outbox_events_and_old_inbox_records_are_purged_on_sqlite() {
    let dir = temp_dir("purge-sqlite");
    let path = dir.join("service.db");
    let mut db = service_db(&path);
    commit_orders(&mut db, 0, 4);
    let relay = Relay::new(
        SqliteOutboxSource::open(&path).unwrap(),
        Collect::default(),
        Pipeline::builder().build().unwrap(),
    )
    .retention(RetentionOptions::default())
    .unwrap();
    assert_eq!(relay.publish_pending().await.unwrap(), 4);
    commit_orders(&mut db, 4, 1); // committed, not published
                                  // Two published eight days ago, the unpublished one committed eight days ago.
    db.execute(
        "UPDATE stormwall_outbox SET published_at = published_at - ?1 WHERE position <= 2",
        [EIGHT_DAYS_MS],
    )
    .unwrap();
    db.execute(
        "UPDATE stormwall_outbox SET created_at = created_at - ?1 WHERE published_at IS NULL",
        [EIGHT_DAYS_MS],
    )
    .unwrap();
    // The relay purges when it starts (then hourly).
    let outbox = |db: &Connection| -> Vec<String> {
        let mut s = db
            .prepare("SELECT stream_key FROM stormwall_outbox ORDER BY position")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    relay
        .run(wait_until("the relay purged", || outbox(&db).len() == 3))
        .await;
    assert_eq!(
        outbox(&db),
        ["order-2", "order-3", "order-4"],
        "published within the retention, or not published: kept"
    );
    assert_eq!(
        SqliteOutbox::purge(&db, &RetentionOptions::default()).unwrap(),
        0
    );

    // The inbox: two ids processed eight days ago go; the recent one still deduplicates.
    let events = numbered("order.created", |i| format!("order-{i}"), 0..3);
    let tx = db.transaction().unwrap();
    SqliteInbox::install(&tx).unwrap();
    for m in &events {
        assert!(SqliteInbox::first_time(&tx, "billing", m).unwrap());
    }
    tx.execute(
        "UPDATE stormwall_inbox SET processed_at = processed_at - ?1 WHERE event_id <> ?2",
        rusqlite::params![EIGHT_DAYS_MS, events[2].id],
    )
    .unwrap();
    tx.commit().unwrap();
    let week = RetentionOptions {
        inbox: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    };
    assert_eq!(SqliteInbox::purge(&db, &week).unwrap(), 2);
    let tx = db.transaction().unwrap();
    assert!(
        !SqliteInbox::first_time(&tx, "billing", &events[2]).unwrap(),
        "within the retention: still deduplicated"
    );
    assert!(
        SqliteInbox::first_time(&tx, "billing", &events[0]).unwrap(),
        "past the retention: processed again"
    );
    drop(tx);
    let invalid = RetentionOptions {
        outbox: Duration::ZERO,
        ..Default::default()
    };
    assert!(matches!(
        SqliteOutbox::purge(&db, &invalid),
        Err(stormwall_saga::SagaError::Config(m)) if m.contains("RetentionOptions::outbox")
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_events_go_once_every_group_passed_them_and_old_inbox_records_go() {
    let server = PostgresServer::start();
    let url = server.database("purge");
    let mut client = outbox_client(&url).await;
    let retention = RetentionOptions::default();
    let keys = async |client: &tokio_postgres::Client| -> Vec<String> {
        client
            .query(
                "SELECT stream_key FROM stormwall_outbox ORDER BY position",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let age = async |client: &tokio_postgres::Client| {
        client
            .execute(
                "UPDATE stormwall_outbox SET created_at = created_at - $1,
                        published_at = published_at - $1",
                &[&EIGHT_DAYS_MS],
            )
            .await
            .unwrap();
    };
    // One stream key: one partition, consumed in order.
    let mut events = numbered("order.created", |_| "order-1".into(), 0..4);
    events[2].kind = "poison".into();
    append_all(&mut client, &events).await;
    age(&client).await;
    assert_eq!(
        PostgresOutbox::purge(&client, &retention).await.unwrap(),
        0,
        "no group and no relay yet: nothing consumed them"
    );

    let mut consumer = Consumer::new(
        PostgresSubscription::connect(&url, "billing")
            .await
            .unwrap(),
        Pipeline::builder().build().unwrap(),
        ConsumerOptions {
            batch: 2,
            max_attempts: 1,
            ..Default::default()
        },
    );
    let handle = |m: Message| async move {
        if m.kind == "poison" {
            Err("cannot parse".to_string())
        } else {
            Ok(())
        }
    };
    assert_eq!(consumer.poll_once(&handle).await.unwrap(), 2);
    assert_eq!(PostgresOutbox::purge(&client, &retention).await.unwrap(), 2);
    assert_eq!(consumer.poll_once(&handle).await.unwrap(), 2); // the poison dead-lettered
    assert_eq!(PostgresOutbox::purge(&client, &retention).await.unwrap(), 1);
    assert_eq!(keys(&client).await.len(), 1, "the dead letter is kept");
    assert_eq!(
        consumer.subscription().dead_letters().await.unwrap().len(),
        1
    );

    // A relay publishes from this outbox now: the group's checkpoint must pass an event
    // too, and an event no relay published stays.
    append_all(
        &mut client,
        &numbered("order.created", |_| "order-1".into(), 4..6),
    )
    .await;
    let relay = Relay::new(
        PostgresOutboxSource::new(&url),
        Collect::default(),
        Pipeline::builder().build().unwrap(),
    );
    assert_eq!(relay.publish_pending().await.unwrap(), 3);
    age(&client).await;
    assert_eq!(
        PostgresOutbox::purge(&client, &retention).await.unwrap(),
        0,
        "published, but the group has not passed them"
    );
    assert_eq!(consumer.poll_once(&handle).await.unwrap(), 2);
    assert_eq!(PostgresOutbox::purge(&client, &retention).await.unwrap(), 2);
    append_all(
        &mut client,
        &numbered("order.created", |_| "order-1".into(), 6..7),
    )
    .await;
    assert_eq!(consumer.poll_once(&handle).await.unwrap(), 1);
    age(&client).await;
    assert_eq!(
        PostgresOutbox::purge(&client, &retention).await.unwrap(),
        0,
        "consumed but not yet published by the relay"
    );
    assert_eq!(relay.publish_pending().await.unwrap(), 1);
    assert_eq!(
        relay
            .source()
            .purge(&RetentionOptions {
                outbox: Duration::from_secs(1),
                ..Default::default()
            })
            .await
            .unwrap(),
        0,
        "published just now"
    );

    // The inbox.
    let processed = numbered("order.created", |i| format!("order-{i}"), 0..3);
    let tx = client.transaction().await.unwrap();
    for m in &processed {
        assert!(PostgresOutbox::first_time(&tx, "billing", m).await.unwrap());
    }
    tx.execute(
        "UPDATE stormwall_inbox SET processed_at = processed_at - $1 WHERE event_id <> $2",
        &[&EIGHT_DAYS_MS, &processed[2].id],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        PostgresOutbox::purge_inbox(&client, &retention)
            .await
            .unwrap(),
        2
    );
    let tx = client.transaction().await.unwrap();
    assert!(!PostgresOutbox::first_time(&tx, "billing", &processed[2])
        .await
        .unwrap());
    assert!(PostgresOutbox::first_time(&tx, "billing", &processed[0])
        .await
        .unwrap());
}
