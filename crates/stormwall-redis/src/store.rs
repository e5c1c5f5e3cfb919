//! `RedisStateStore`: the replica side of a shared breaker.
//!
//! The caller's path never waits for Redis. It reads a cached state (atomics) that a
//! background task keeps current from pub/sub messages and script replies; successes are
//! counted locally (per time bucket) and travel with the next failure report, so a
//! success-only stream issues no command at all; failures, probe outcomes and commands go
//! to the task at once, which runs the script and raises any transition it caused — exactly
//! once in the cluster, on the replica whose script made it. While Redis cannot be reached
//! (50 ms per command), the store works as a local breaker and says so once.

use crate::scripts;
use crate::RedisStoreError;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{
    store::{Acquired, CallOutcome, Command, InMemoryStore, Rejection, StateStore, Ticket},
    BreakDurationArgs, CircuitBreakerOptions, CircuitState, CircuitTransition, SamplingWindow,
    TransitionReason, TransitionSink,
};
use tokio::sync::{mpsc, Notify};

/// Options of the Redis store (the breaker's own thresholds come from its options).
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// Prefix of every key and channel. Default `stormwall`.
    pub key_prefix: String,
    /// Idle breakers expire after this long. Default 1 day.
    pub ttl: Duration,
    /// The longest wait for a connection or a command before falling back to the local
    /// breaker. Default 50 ms.
    pub command_timeout: Duration,
    /// A probe lease expires after this long if its holder never reports (crashed).
    /// Default 30 s.
    pub probe_lease: Duration,
    /// Re-reads the state this often, as a backstop to pub/sub (which is also healed by a
    /// re-read on every reconnect and on a gap in versions). Default 30 s.
    pub resync_interval: Duration,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            key_prefix: "stormwall".into(),
            ttl: Duration::from_secs(24 * 3600),
            command_timeout: Duration::from_millis(50),
            probe_lease: Duration::from_secs(30),
            resync_interval: Duration::from_secs(30),
        }
    }
}

/// The breaker's thresholds, as the scripts read them.
#[derive(Debug, Clone)]
struct Thresholds {
    consecutive: u32,
    failure_ratio: f64,
    slow_ratio: f64,
    minimum_throughput: u32,
    bucket_ms: u64,
    ring: u32,
    /// Break durations (ms) for the 1st..8th consecutive open.
    breaks: String,
    permitted: u32,
    success_threshold: u32,
}

const BUCKETS: u64 = 10;
/// Marks probe tickets issued from Redis leases (the local fallback's are small numbers).
const REDIS_PROBE: u64 = 1 << 63;

enum Job {
    Failure {
        failure: bool,
        slow: bool,
    },
    Probe {
        lease: u32,
        generation: u64,
        result: u8,
    },
    Command(&'static str),
}

/// The scripts, hashed once.
struct Scripts {
    read: Script,
    record: Script,
    acquire: Script,
    probe: Script,
    command: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            read: Script::new(scripts::READ),
            record: Script::new(scripts::RECORD),
            acquire: Script::new(scripts::ACQUIRE),
            probe: Script::new(scripts::PROBE),
            command: Script::new(scripts::COMMAND),
        }
    }

    fn all(&self) -> [&Script; 5] {
        [
            &self.read,
            &self.record,
            &self.acquire,
            &self.probe,
            &self.command,
        ]
    }
}

struct Inner {
    name: String,
    scripts: Scripts,
    keys: Vec<String>,
    channel: String,
    thresholds: Thresholds,
    options: RedisStoreOptions,
    started: Instant,
    // The cached shared state.
    state: AtomicU8,
    version: AtomicU64,
    /// Milliseconds since `started` at which the break ends.
    open_until_ms: AtomicU64,
    /// True while Redis answers; false: the local breaker decides.
    connected: AtomicBool,
    local: InMemoryStore,
    /// Successes not yet reported, per local time bucket: (bucket epoch << 40) | count.
    successes: [AtomicU64; BUCKETS as usize],
    success_since_report: AtomicBool,
    /// Probe leases this replica holds for the current half-open period.
    probes: Mutex<VecDeque<(u32, u64)>>,
    want_probe: AtomicBool,
    jobs: mpsc::Sender<Job>,
    wake: Notify,
    sink: OnceLock<TransitionSink>,
    /// Outages seen (one warning each).
    outages: AtomicU32,
}

/// A circuit breaker's state shared by every replica that names the same breaker, through
/// Redis. Plug it into a breaker with `CircuitBreaker::with_store`.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use stormwall::circuit_breaker::{CircuitBreaker, CircuitBreakerOptions};
/// use stormwall_redis::{RedisStateStore, RedisStoreOptions};
/// let options = CircuitBreakerOptions::new().consecutive_failures(5);
/// let store = RedisStateStore::connect("redis://127.0.0.1:6379", "payments", &options,
///     RedisStoreOptions::default()).await?;
/// let breaker = CircuitBreaker::with_store(options, store)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStateStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStateStore")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .field("connected", &self.is_connected())
            .finish()
    }
}

#[cfg(feature = "cluster")]
type ClusterClient = redis::cluster::ClusterClient;
/// Stands in for the cluster client when the `cluster` feature is off.
#[cfg(not(feature = "cluster"))]
type ClusterClient = std::convert::Infallible;

fn open(url: &str) -> Result<Client, RedisStoreError> {
    Client::open(url).map_err(|e| RedisStoreError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

fn state_from(name: &str) -> Option<CircuitState> {
    Some(match name {
        "closed" => CircuitState::Closed,
        "open" => CircuitState::Open,
        "half_open" => CircuitState::HalfOpen,
        "isolated" => CircuitState::Isolated,
        "disabled" => CircuitState::Disabled,
        _ => return None,
    })
}

fn state_u8(state: CircuitState) -> u8 {
    state as u8
}

fn reason_from(name: &str) -> TransitionReason {
    match name {
        "consecutive_failures" => TransitionReason::ConsecutiveFailures,
        "failure_ratio" => TransitionReason::FailureRatio,
        "slow_call_ratio" => TransitionReason::SlowCallRatio,
        "break_elapsed" => TransitionReason::BreakElapsed,
        "probe_failed" => TransitionReason::ProbeFailed,
        "probes_succeeded" => TransitionReason::ProbesSucceeded,
        _ => TransitionReason::Manual,
    }
}

/// A script's answer.
#[derive(Debug)]
struct Reply {
    state: CircuitState,
    version: u64,
    remaining_ms: u64,
    transitioned: bool,
    reason: String,
    from: CircuitState,
    corrupt: bool,
    generation: u64,
    lease: u32,
}

fn parse_reply(values: Vec<String>) -> Option<Reply> {
    let n = |i: usize| values.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Reply {
        state: state_from(values.first()?)?,
        version: n(1)?,
        remaining_ms: n(2)?,
        transitioned: n(3)? == 1,
        reason: values.get(4)?.clone(),
        from: state_from(values.get(5)?)?,
        corrupt: n(6)? == 1,
        generation: n(7)?,
        lease: n(8)? as u32,
    })
}

impl RedisStateStore {
    /// Connects to Redis at `url` and shares the breaker `name` (the same name on every
    /// replica) with the thresholds of `breaker` (the same options on every replica). An
    /// invalid URL is an error; an unreachable Redis is not: the store starts on its local
    /// breaker and joins when Redis answers.
    pub async fn connect<P>(
        url: &str,
        name: &str,
        breaker: &CircuitBreakerOptions<P>,
        options: RedisStoreOptions,
    ) -> Result<Self, RedisStoreError> {
        let client = open(url)?;
        Self::start(client, None, name, breaker, options).await
    }

    /// Like [`connect`](Self::connect) without waiting for the first connection: the store
    /// starts on its local breaker and joins when Redis answers. For code that cannot
    /// await (a configuration reload); needs a tokio runtime.
    pub fn spawn<P>(
        url: &str,
        name: &str,
        breaker: &CircuitBreakerOptions<P>,
        options: RedisStoreOptions,
    ) -> Result<Self, RedisStoreError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedisStoreError::NoRuntime)?;
        let (store, mut task) = Self::prepare(open(url)?, None, name, breaker, options)?;
        runtime.spawn(async move {
            let connection = task.connect().await;
            task.run(connection).await;
        });
        Ok(store)
    }

    /// Like [`connect`](Self::connect), on a Redis Cluster given by some of its `nodes`:
    /// scripts go through the cluster client (a breaker's keys share one hash slot), the
    /// subscription to one node (Redis Cluster forwards every `PUBLISH` to all nodes).
    #[cfg(feature = "cluster")]
    pub async fn connect_cluster<P>(
        nodes: &[&str],
        name: &str,
        breaker: &CircuitBreakerOptions<P>,
        options: RedisStoreOptions,
    ) -> Result<Self, RedisStoreError> {
        let first = nodes.first().ok_or_else(|| RedisStoreError::InvalidUrl {
            url: String::new(),
            reason: "no cluster node given".into(),
        })?;
        let client = open(first)?;
        let cluster = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(options.command_timeout)
            .response_timeout(options.command_timeout)
            .build()
            .map_err(|e| RedisStoreError::InvalidUrl {
                url: nodes.join(","),
                reason: e.to_string(),
            })?;
        Self::start(client, Some(cluster), name, breaker, options).await
    }

    async fn start<P>(
        client: Client,
        cluster: Option<ClusterClient>,
        name: &str,
        breaker: &CircuitBreakerOptions<P>,
        options: RedisStoreOptions,
    ) -> Result<Self, RedisStoreError> {
        let (store, mut task) = Self::prepare(client, cluster, name, breaker, options)?;
        // The first connection is awaited (bounded), so a store made while Redis is up
        // starts shared.
        let connection = task.connect().await;
        tokio::spawn(task.run(connection));
        Ok(store)
    }

    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    fn prepare<P>(
        client: Client,
        cluster: Option<ClusterClient>,
        name: &str,
        breaker: &CircuitBreakerOptions<P>,
        options: RedisStoreOptions,
    ) -> Result<(Self, Task), RedisStoreError> {
        breaker
            .validate()
            .map_err(|e| RedisStoreError::Config(e.within("circuit_breaker")))?;
        let tag = format!("{}:{{{}}}", options.key_prefix, name);
        let mut keys = vec![
            format!("{tag}:state"),
            format!("{tag}:window"),
            format!("{tag}:ring"),
        ];
        for i in 1..=breaker.permitted_calls_in_half_open {
            keys.push(format!("{tag}:lease:{i}"));
        }
        let breaks: Vec<String> = (1..=8)
            .map(|opens| {
                let d = match &breaker.break_duration_generator {
                    Some(g) => g.generate(BreakDurationArgs {
                        consecutive_opens: opens,
                    }),
                    None => breaker.break_duration,
                };
                d.as_millis().max(1).to_string()
            })
            .collect();
        let (bucket_ms, ring) = match breaker.sampling_window {
            SamplingWindow::Time => (
                (breaker.sampling_duration.as_millis() as u64 / BUCKETS).max(1),
                0,
            ),
            SamplingWindow::Count(n) => (0, n),
        };
        let thresholds = Thresholds {
            consecutive: breaker.consecutive_failures.unwrap_or(0),
            failure_ratio: breaker.failure_ratio.unwrap_or(-1.0),
            slow_ratio: breaker.slow_call.map_or(-1.0, |s| s.ratio),
            minimum_throughput: breaker.minimum_throughput,
            bucket_ms,
            ring,
            breaks: breaks.join(","),
            permitted: breaker.permitted_calls_in_half_open,
            success_threshold: breaker.success_threshold,
        };
        let (jobs, receiver) = mpsc::channel(4096);
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            scripts: Scripts::new(),
            channel: format!("{tag}:events"),
            keys,
            thresholds,
            options,
            started: Instant::now(),
            state: AtomicU8::new(state_u8(CircuitState::Closed)),
            version: AtomicU64::new(0),
            open_until_ms: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            local: InMemoryStore::new(breaker),
            successes: Default::default(),
            success_since_report: AtomicBool::new(false),
            probes: Mutex::new(VecDeque::new()),
            want_probe: AtomicBool::new(false),
            jobs,
            wake: Notify::new(),
            sink: OnceLock::new(),
            outages: AtomicU32::new(0),
        });
        let task = Task {
            inner: Arc::downgrade(&inner),
            client,
            #[cfg(feature = "cluster")]
            cluster,
            receiver,
        };
        Ok((RedisStateStore { inner }, task))
    }

    /// True while Redis answers (the state is shared); false while the local breaker
    /// decides.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The version of the shared state this replica has seen (bumped by every transition).
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// Outages seen so far (each logged once).
    pub fn outages(&self) -> u32 {
        self.inner.outages.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn cached(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Adopts a reply (or message) if it is not older than what we have.
    fn adopt(&self, state: CircuitState, version: u64, remaining_ms: u64) {
        if version < self.version.load(Ordering::Acquire) {
            return;
        }
        self.open_until_ms
            .store(self.now_ms() + remaining_ms, Ordering::Release);
        let before = self.cached();
        self.state.store(state_u8(state), Ordering::Release);
        self.version.store(version, Ordering::Release);
        if before != state {
            // Leases belong to the half-open period that just ended (or has not started).
            self.probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    fn apply(&self, reply: &Reply) {
        if reply.corrupt {
            tracing::warn!(breaker = %self.name, "stormwall-redis: corrupt or foreign data under the breaker's keys; treated as absent");
        }
        self.adopt(reply.state, reply.version, reply.remaining_ms);
        if reply.transitioned {
            let transition = CircuitTransition {
                from: reply.from,
                to: reply.state,
                reason: reason_from(&reply.reason),
                break_duration: (reply.state == CircuitState::Open)
                    .then(|| Duration::from_millis(reply.remaining_ms)),
                sequence: reply.version,
            };
            if let Some(sink) = self.sink.get() {
                sink(transition);
            }
        }
    }

    fn record_success(&self) {
        if !self.success_since_report.load(Ordering::Relaxed) {
            self.success_since_report.store(true, Ordering::Relaxed);
        }
        if self.thresholds.bucket_ms == 0 && self.thresholds.ring == 0 {
            // Consecutive failures only: a success matters only as "since the last failure".
            return;
        }
        let width = self.thresholds.bucket_ms.max(100);
        let epoch = self.now_ms() / width;
        let slot = &self.successes[(epoch % BUCKETS) as usize];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current >> 40 == epoch {
                current + 1
            } else {
                (epoch << 40) | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The successes counted since the last report, as `age_ms:count` pairs; resets them.
    fn take_successes(&self) -> String {
        let width = self.thresholds.bucket_ms.max(100);
        let now = self.now_ms();
        let epoch = now / width;
        let mut pairs = Vec::new();
        for slot in &self.successes {
            let taken = slot.swap(0, Ordering::AcqRel);
            let (at, count) = (taken >> 40, taken & ((1 << 40) - 1));
            if count > 0 && epoch.saturating_sub(at) < BUCKETS {
                let age = now.saturating_sub(at * width + width / 2);
                pairs.push(format!("{age}:{count}"));
            }
        }
        pairs.join(",")
    }
}

impl StateStore for RedisStateStore {
    fn try_acquire(&self) -> Acquired {
        let inner = &*self.inner;
        if !inner.connected.load(Ordering::Acquire) {
            return inner.local.try_acquire();
        }
        let admitted = || Acquired {
            result: Ok(Ticket::Normal),
            transition: None,
        };
        let rejected = |state, retry_after| Acquired {
            result: Err(Rejection { state, retry_after }),
            transition: None,
        };
        match inner.cached() {
            CircuitState::Closed | CircuitState::Disabled => admitted(),
            CircuitState::Isolated => rejected(CircuitState::Isolated, None),
            state => {
                if let Some((lease, generation)) = inner
                    .probes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front()
                {
                    return Acquired {
                        result: Ok(Ticket::Probe {
                            generation: REDIS_PROBE | (generation << 8) | u64::from(lease),
                        }),
                        transition: None,
                    };
                }
                let remaining = inner
                    .open_until_ms
                    .load(Ordering::Acquire)
                    .saturating_sub(inner.now_ms());
                if state == CircuitState::Open && remaining > 0 {
                    return rejected(CircuitState::Open, Some(Duration::from_millis(remaining)));
                }
                // The break is over: ask for a lease; a later call may probe with it.
                inner.want_probe.store(true, Ordering::Release);
                inner.wake.notify_one();
                rejected(CircuitState::HalfOpen, None)
            }
        }
    }

    fn record(&self, ticket: Ticket, outcome: CallOutcome) -> Option<CircuitTransition> {
        let inner = &*self.inner;
        match ticket {
            Ticket::Probe { generation } if generation & REDIS_PROBE != 0 => {
                let job = Job::Probe {
                    lease: (generation & 0xff) as u32,
                    generation: (generation & !REDIS_PROBE) >> 8,
                    result: u8::from(outcome.failure || outcome.slow),
                };
                let _ = inner.jobs.try_send(job);
                None
            }
            _ if !inner.connected.load(Ordering::Acquire) => inner.local.record(ticket, outcome),
            Ticket::Probe { .. } => None,
            Ticket::Normal => {
                if inner.cached() != CircuitState::Closed {
                    return None;
                }
                if !outcome.failure && !outcome.slow {
                    inner.record_success();
                    return None;
                }
                if inner
                    .jobs
                    .try_send(Job::Failure {
                        failure: outcome.failure,
                        slow: outcome.slow,
                    })
                    .is_err()
                {
                    tracing::debug!(breaker = %inner.name, "stormwall-redis: report queue full; outcome counted locally");
                    return inner.local.record(ticket, outcome);
                }
                None
            }
        }
    }

    fn release(&self, ticket: Ticket) {
        match ticket {
            Ticket::Probe { generation } if generation & REDIS_PROBE != 0 => {
                let _ = self.inner.jobs.try_send(Job::Probe {
                    lease: (generation & 0xff) as u32,
                    generation: (generation & !REDIS_PROBE) >> 8,
                    result: 2,
                });
            }
            _ => self.inner.local.release(ticket),
        }
    }

    fn command(&self, command: Command) -> Option<CircuitTransition> {
        let inner = &*self.inner;
        let (target, state) = match command {
            Command::Isolate => ("isolated", CircuitState::Isolated),
            Command::Close => ("closed", CircuitState::Closed),
            Command::Disable => ("disabled", CircuitState::Disabled),
        };
        let local = inner.local.command(command);
        if !inner.connected.load(Ordering::Acquire) {
            return local;
        }
        // Takes effect here at once; the script makes it cluster-wide and raises the
        // transition.
        inner.state.store(state_u8(state), Ordering::Release);
        let _ = inner.jobs.try_send(Job::Command(target));
        None
    }

    fn state(&self) -> CircuitState {
        if self.inner.connected.load(Ordering::Acquire) {
            self.inner.cached()
        } else {
            self.inner.local.state()
        }
    }

    fn set_transition_sink(&self, sink: TransitionSink) {
        let _ = self.inner.sink.set(sink);
    }
}

/// The background task: one per store, ending when the store is dropped.
struct Task {
    inner: std::sync::Weak<Inner>,
    /// Subscriptions (and, without a cluster, commands) go to this server.
    client: Client,
    #[cfg(feature = "cluster")]
    cluster: Option<redis::cluster::ClusterClient>,
    receiver: mpsc::Receiver<Job>,
}

/// Where scripts run: one server, or a Redis Cluster (feature `cluster`).
enum Commands {
    Single(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Commands {
    async fn invoke(
        &mut self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<Vec<String>> {
        match self {
            Commands::Single(c) => invocation.invoke_async(c).await,
            #[cfg(feature = "cluster")]
            Commands::Cluster(c) => invocation.invoke_async(c).await,
        }
    }

    async fn load(&mut self, script: &Script) -> redis::RedisResult<()> {
        match self {
            Commands::Single(c) => script.prepare_invoke().load_async(c).await.map(drop),
            // A cluster loads scripts on the node that first needs them (NOSCRIPT reload).
            #[cfg(feature = "cluster")]
            Commands::Cluster(_) => Ok(()),
        }
    }
}

struct Connection {
    commands: Commands,
    events: redis::aio::PubSubStream,
}

impl Task {
    async fn commands(&self, config: &AsyncConnectionConfig) -> Option<Commands> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            return cluster
                .get_async_connection()
                .await
                .ok()
                .map(Commands::Cluster);
        }
        self.client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .ok()
            .map(Commands::Single)
    }

    /// Connects and subscribes within the command timeout; `None` when Redis does not
    /// answer in time.
    async fn connect(&mut self) -> Option<Connection> {
        let inner = self.inner.upgrade()?;
        let timeout = inner.options.command_timeout;
        let attempt = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            let commands = self.commands(&config).await?;
            let mut pubsub = self.client.get_async_pubsub().await.ok()?;
            pubsub.subscribe(&inner.channel).await.ok()?;
            Some(Connection {
                commands,
                events: pubsub.into_on_message(),
            })
        };
        let mut connection = tokio::time::timeout(timeout * 4, attempt).await.ok()??;
        // Loaded up front, so the first decisions run by SHA without a NOSCRIPT round trip
        // (invoking reloads them anyway after a FLUSH or a restart).
        for script in inner.scripts.all() {
            let load = connection.commands.load(script);
            tokio::time::timeout(timeout, load).await.ok()?.ok()?;
        }
        // Adopt the shared state before deciding anything with it.
        let reply = self
            .run_script(&inner, &mut connection, &inner.scripts.read, &[])
            .await?;
        inner.apply(&reply);
        if inner.connected.swap(true, Ordering::AcqRel) {
            return Some(connection);
        }
        if inner.outages.load(Ordering::Relaxed) > 0 {
            tracing::info!(breaker = %inner.name, "stormwall-redis: Redis is back; breaker state shared again");
        }
        Some(connection)
    }

    fn down(&self, inner: &Inner) {
        if inner.connected.swap(false, Ordering::AcqRel) {
            inner.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(breaker = %inner.name, "stormwall-redis: Redis unreachable; deciding on the local breaker until it returns");
        }
    }

    async fn run_script(
        &self,
        inner: &Inner,
        connection: &mut Connection,
        script: &Script,
        extra: &[String],
    ) -> Option<Reply> {
        let mut invocation = script.prepare_invoke();
        for key in &inner.keys {
            invocation.key(key);
        }
        invocation
            .arg(&inner.channel)
            .arg(inner.options.ttl.as_millis() as u64)
            .arg(&inner.thresholds.breaks);
        for arg in extra {
            invocation.arg(arg);
        }
        let call = connection.commands.invoke(&invocation);
        let values = tokio::time::timeout(inner.options.command_timeout, call)
            .await
            .ok()?
            .ok()?;
        parse_reply(values)
    }

    async fn run(mut self, mut connection: Option<Connection>) {
        let every = self
            .inner
            .upgrade()
            .map_or(Duration::from_secs(30), |i| i.options.resync_interval);
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            let Some(conn) = connection.as_mut() else {
                self.down(&inner);
                drop(inner);
                // Jobs queued before or during the outage are dropped: the local breaker
                // has counted what happened since.
                while self.receiver.try_recv().is_ok() {}
                tokio::time::sleep(Duration::from_millis(100)).await;
                connection = self.connect().await;
                continue;
            };
            let healthy = tokio::select! {
                job = self.receiver.recv() => match job {
                    Some(job) => self.handle(&inner, conn, job).await,
                    None => return,
                },
                message = conn.events.next() => match message {
                    Some(message) => {
                        self.on_message(&inner, conn, &message).await
                    }
                    None => false,
                },
                _ = inner.wake.notified() => {
                    if inner.want_probe.swap(false, Ordering::AcqRel) {
                        self.acquire_probe(&inner, conn).await
                    } else {
                        true
                    }
                }
                _ = resync.tick() => {
                    match self.run_script(&inner, conn, &inner.scripts.read, &[]).await {
                        Some(reply) => { inner.apply(&reply); true }
                        None => false,
                    }
                }
            };
            if !healthy {
                self.down(&inner);
                connection = None;
            }
        }
    }

    async fn on_message(&self, inner: &Inner, conn: &mut Connection, message: &redis::Msg) -> bool {
        let payload: String = message.get_payload().unwrap_or_default();
        let mut parts = payload.split('|');
        let (Some(version), Some(state), Some(remaining)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return true;
        };
        let (Ok(version), Some(state), Ok(remaining)) = (
            version.parse::<u64>(),
            state_from(state),
            remaining.parse::<u64>(),
        ) else {
            tracing::warn!(breaker = %inner.name, %payload, "stormwall-redis: foreign message on the breaker's channel ignored");
            return true;
        };
        let seen = inner.version.load(Ordering::Acquire);
        if version > seen + 1 {
            // A message was missed: read the whole state.
            return match self.run_script(inner, conn, &inner.scripts.read, &[]).await {
                Some(reply) => {
                    inner.apply(&reply);
                    true
                }
                None => false,
            };
        }
        inner.adopt(state, version, remaining);
        true
    }

    async fn acquire_probe(&self, inner: &Inner, conn: &mut Connection) -> bool {
        let args = [
            inner.thresholds.permitted.to_string(),
            inner.options.probe_lease.as_millis().to_string(),
        ];
        match self
            .run_script(inner, conn, &inner.scripts.acquire, &args)
            .await
        {
            Some(reply) => {
                inner.apply(&reply);
                if reply.lease > 0 {
                    inner
                        .probes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back((reply.lease, reply.generation));
                }
                true
            }
            None => false,
        }
    }

    async fn handle(&self, inner: &Inner, conn: &mut Connection, job: Job) -> bool {
        let (script, args) = match job {
            Job::Failure { failure, slow } => {
                let t = &inner.thresholds;
                let since = inner.success_since_report.swap(false, Ordering::AcqRel);
                (
                    &inner.scripts.record,
                    vec![
                        u8::from(failure).to_string(),
                        u8::from(slow).to_string(),
                        inner.take_successes(),
                        t.consecutive.to_string(),
                        t.failure_ratio.to_string(),
                        t.slow_ratio.to_string(),
                        t.minimum_throughput.to_string(),
                        t.bucket_ms.to_string(),
                        t.ring.to_string(),
                        if since { "1" } else { "0" }.to_string(),
                    ],
                )
            }
            Job::Probe {
                lease,
                generation,
                result,
            } => (
                &inner.scripts.probe,
                vec![
                    lease.to_string(),
                    generation.to_string(),
                    result.to_string(),
                    inner.thresholds.success_threshold.to_string(),
                ],
            ),
            Job::Command(target) => (&inner.scripts.command, vec![target.to_string()]),
        };
        match self.run_script(inner, conn, script, &args).await {
            Some(reply) => {
                inner.apply(&reply);
                true
            }
            None => false,
        }
    }
}
