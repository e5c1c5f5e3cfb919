//! The background task of a Redis store: one per store, ending when the store is dropped.
//! It owns the connections, runs every script, and feeds the answers to the shared view.

use super::protocol::{parse_message, parse_reply, random_id, ProbeResult, Reply};
use super::shared::{Adoption, HeldLease, Job, Shared, Source};
/// The cluster client commands go through (feature `cluster`).
#[cfg(feature = "cluster")]
type Cluster = redis::cluster::ClusterClient;
#[cfg(not(feature = "cluster"))]
type Cluster = std::convert::Infallible;
/// What a cluster connection pushes (nothing without the feature).
#[cfg(feature = "cluster")]
pub(crate) type Push = redis::PushInfo;
#[cfg(not(feature = "cluster"))]
pub(crate) type Push = ();
use crate::scripts;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{controller::Controller, Command, ProbeLease, SamplingWindow};
use tokio::sync::mpsc;

/// Time buckets of a shared time window (as the core's window).
const BUCKETS: u64 = 10;

/// A breaker's keys and the arguments every script gets.
pub(crate) struct Keys {
    /// State, time window, count window, "lease wanted", then one per probe lease.
    keys: Vec<String>,
    channel: String,
    /// `PUBLISH <channel>` or, on a cluster, `SPUBLISH <channel>` (see the scripts).
    publish: String,
    /// Break durations (ms) for the 1st..8th consecutive open.
    breaks: String,
    /// The `RECORD` thresholds, as the script reads them (`ARGV[9..=14]`).
    thresholds: [String; 6],
}

impl Keys {
    /// The keys of breaker `name`; its channel names the database too (pub/sub ignores
    /// databases: two deployments on one server must not hear each other).
    pub fn new(
        prefix: &str,
        name: &str,
        database: i64,
        controller: &Controller,
        sharded: bool,
    ) -> Self {
        let tag = format!("{prefix}:{{{name}}}");
        let mut keys = vec![
            format!("{tag}:state"),
            format!("{tag}:window"),
            format!("{tag}:ring"),
            format!("{tag}:wanted"),
        ];
        for i in 1..=controller.permitted_calls_in_half_open() {
            keys.push(format!("{tag}:lease:{i}"));
        }
        let breaks: Vec<String> = (1..=8)
            .map(|opens| {
                controller
                    .break_duration(opens)
                    .as_millis()
                    .max(1)
                    .to_string()
            })
            .collect();
        let (bucket_ms, ring) = match controller.sampling_window() {
            _ if !controller.needs_window() => (0, 0),
            SamplingWindow::Time => (
                (controller.sampling_duration().as_millis() as u64 / BUCKETS).max(1),
                0,
            ),
            SamplingWindow::Count(n) => (0, n),
        };
        let channel = format!("{tag}:events:{database}");
        Keys {
            keys,
            publish: format!("{} {channel}", if sharded { "SPUBLISH" } else { "PUBLISH" }),
            channel,
            breaks: breaks.join(","),
            thresholds: [
                controller.consecutive_failures().unwrap_or(0).to_string(),
                controller.failure_ratio().unwrap_or(-1.0).to_string(),
                controller.slow_call_ratio().unwrap_or(-1.0).to_string(),
                controller.minimum_throughput().to_string(),
                bucket_ms.to_string(),
                ring.to_string(),
            ],
        }
    }
}

/// The scripts, hashed once.
struct Scripts {
    read: Script,
    record: Script,
    acquire: Script,
    probe: Script,
    command: Script,
    rebase: Script,
    yield_lease: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            read: Script::new(scripts::READ),
            record: Script::new(scripts::RECORD),
            acquire: Script::new(scripts::ACQUIRE),
            probe: Script::new(scripts::PROBE),
            command: Script::new(scripts::COMMAND),
            rebase: Script::new(scripts::REBASE),
            yield_lease: Script::new(scripts::YIELD),
        }
    }

    fn all(&self) -> [&Script; 7] {
        [
            &self.yield_lease,
            &self.read,
            &self.record,
            &self.acquire,
            &self.probe,
            &self.command,
            &self.rebase,
        ]
    }
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
        // A script Redis lost (`SCRIPT FLUSH`, a restart) is reloaded by the invocation.
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

/// Where messages arrive: a subscription of its own, or (on a cluster) the cluster
/// connection's pushes, which follow the slot's shard through failovers and slot moves.
enum Events {
    PubSub(redis::aio::PubSubStream),
    #[cfg(feature = "cluster")]
    Sharded,
}

pub(crate) struct Connection {
    commands: Commands,
    events: Events,
    /// When a script last answered (a resync is due after `resync_interval` without one).
    last_answer: Instant,
}

/// The background task; see the module docs.
pub(crate) struct Task {
    shared: Weak<Shared>,
    /// Subscriptions (and, without a cluster, commands) go to one of these servers: the
    /// next one after a failure.
    clients: Vec<Client>,
    next_client: usize,
    #[cfg(feature = "cluster")]
    cluster: Option<Cluster>,
    keys: Keys,
    scripts: Scripts,
    receiver: mpsc::Receiver<Job>,
    /// On a cluster: the pushes of every cluster connection this task makes (sharded
    /// messages), kept across reconnects.
    pushes: Option<mpsc::UnboundedReceiver<Push>>,
}

impl Task {
    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    pub fn new(
        shared: Weak<Shared>,
        clients: Vec<Client>,
        cluster: Option<Cluster>,
        keys: Keys,
        receiver: mpsc::Receiver<Job>,
        pushes: Option<mpsc::UnboundedReceiver<Push>>,
    ) -> Self {
        Task {
            pushes,
            shared,
            clients,
            next_client: 0,
            #[cfg(feature = "cluster")]
            cluster,
            keys,
            scripts: Scripts::new(),
            receiver,
        }
    }

    async fn commands(&self, client: &Client, config: &AsyncConnectionConfig) -> Option<Commands> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            return cluster
                .get_async_connection()
                .await
                .ok()
                .map(Commands::Cluster);
        }
        client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .ok()
            .map(Commands::Single)
    }

    /// Connects, subscribes, sends a pending manual command and reads the state, within
    /// the command timeout (four times over for the whole); `None` when Redis does not
    /// answer in time.
    pub async fn connect(&mut self) -> Option<Connection> {
        let shared = self.shared.upgrade()?;
        let timeout = shared.options.command_timeout;
        let client = self.clients[self.next_client % self.clients.len()].clone();
        self.next_client += 1;
        let attempt = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            let commands = self.commands(&client, &config).await?;
            let events = match commands {
                #[cfg(feature = "cluster")]
                Commands::Cluster(ref c) => {
                    let mut c = c.clone();
                    c.ssubscribe(&self.keys.channel).await.ok()?;
                    Events::Sharded
                }
                Commands::Single(_) => {
                    let mut pubsub = client.get_async_pubsub().await.ok()?;
                    pubsub.subscribe(&self.keys.channel).await.ok()?;
                    Events::PubSub(pubsub.into_on_message())
                }
            };
            let mut connection = Connection {
                commands,
                events,
                last_answer: Instant::now(),
            };
            // Loaded up front, so the first decisions run by SHA.
            for script in self.scripts.all() {
                connection.commands.load(script).await.ok()?;
            }
            Some(connection)
        };
        let mut connection = tokio::time::timeout(timeout * 4, attempt).await.ok()??;
        // What was counted while Redis was unreachable stays with the local breaker, which
        // acted on it: dropped here.
        while self.receiver.try_recv().is_ok() {}
        shared.successes.store(0, Ordering::Relaxed);
        shared.leases().clear();
        if !self.send_command(&shared, &mut connection).await {
            return None;
        }
        let reply = self
            .script(&shared, &mut connection, &self.scripts.read, &[])
            .await?;
        // Adopted before the state counts as shared, so no call decides on a stale cache.
        if !self.apply(&shared, &mut connection, reply).await {
            return None;
        }
        if !shared.connected.swap(true, Ordering::AcqRel)
            && shared.outages.load(Ordering::Relaxed) > 0
        {
            tracing::info!(breaker = %shared.name, epoch = %shared.view().epoch, "stormwall-redis: Redis is back; breaker state shared again");
        }
        Some(connection)
    }

    fn down(&self, shared: &Shared) {
        if shared.connected.swap(false, Ordering::AcqRel) {
            shared.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(breaker = %shared.name, "stormwall-redis: Redis unreachable; deciding on the local breaker until it returns");
            shared.lost_link();
        }
    }

    /// Runs `script` on the breaker's keys with `extra` arguments, bounded by the command
    /// timeout. `None`: no answer (the link counts as down).
    async fn script(
        &self,
        shared: &Shared,
        connection: &mut Connection,
        script: &Script,
        extra: &[&str],
    ) -> Option<Reply> {
        let mut invocation = script.prepare_invoke();
        for key in &self.keys.keys {
            invocation.key(key);
        }
        invocation
            .arg(&self.keys.publish)
            .arg(shared.options.ttl.as_millis() as u64)
            .arg(&self.keys.breaks)
            .arg(format!("{:016x}", random_id()))
            .arg(&shared.replica);
        for arg in extra {
            invocation.arg(*arg);
        }
        let call = connection.commands.invoke(&invocation);
        let answer = tokio::time::timeout(shared.options.command_timeout, call).await;
        let values = match answer {
            Ok(Ok(values)) => values,
            Ok(Err(e)) => {
                tracing::debug!(breaker = %shared.name, error = %e, "stormwall-redis: script failed");
                return None;
            }
            Err(_) => return None,
        };
        connection.last_answer = Instant::now();
        let reply = parse_reply(&values);
        if reply.is_none() {
            tracing::warn!(breaker = %shared.name, ?values, "stormwall-redis: unreadable script answer");
        }
        reply
    }

    /// Adopts a script's answer. If Redis is behind what this replica has seen, reads
    /// again, and if it still is, starts a new epoch from Redis's state (so every replica
    /// adopts one state). `false`: the link is down.
    async fn apply(&self, shared: &Shared, connection: &mut Connection, reply: Reply) -> bool {
        if reply.corrupt {
            tracing::warn!(breaker = %shared.name, "stormwall-redis: corrupt or foreign data under the breaker's keys; replaced by a new epoch");
        }
        match shared.adopt(&reply.snapshot, Source::Reply, reply.transitioned) {
            Adoption::Adopted => {
                shared.set_generation(&reply);
                return true;
            }
            Adoption::Stale | Adoption::Confirm => return true,
            Adoption::Behind => {}
        }
        let Some(again) = self
            .script(shared, connection, &self.scripts.read, &[])
            .await
        else {
            return false;
        };
        if shared.adopt(&again.snapshot, Source::Reply, false) != Adoption::Behind {
            shared.set_generation(&again);
            return true;
        }
        // Redis is behind: a new epoch from the newest state this replica has seen.
        let version = again.snapshot.version.to_string();
        let seen = shared.cached();
        let remaining = shared.remaining_ms().to_string();
        let args = [
            again.snapshot.epoch.as_str(),
            version.as_str(),
            seen.as_str(),
            remaining.as_str(),
        ];
        let Some(rebased) = self
            .script(shared, connection, &self.scripts.rebase, &args)
            .await
        else {
            return false;
        };
        if rebased.transitioned {
            shared.rebases.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(breaker = %shared.name, epoch = %rebased.snapshot.epoch, "stormwall-redis: Redis was behind this replica (a failover to a lagging replica?); started a new epoch from its state");
        }
        shared.adopt(&rebased.snapshot, Source::Reply, false);
        shared.set_generation(&rebased);
        true
    }

    /// Runs `script` and adopts its answer; `false`: the link is down.
    async fn run_and_apply(
        &self,
        shared: &Shared,
        connection: &mut Connection,
        script: &Script,
        extra: &[&str],
    ) -> bool {
        match self.script(shared, connection, script, extra).await {
            Some(reply) => self.apply(shared, connection, reply).await,
            None => false,
        }
    }

    /// Runs the task until the store is dropped.
    pub async fn run(mut self, mut connection: Option<Connection>) {
        let every = match self.shared.upgrade() {
            Some(shared) => shared.options.flush_interval,
            None => return,
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let Some(conn) = connection.as_mut() else {
                self.down(&shared);
                drop(shared);
                tokio::time::sleep(Duration::from_millis(100)).await;
                connection = self.connect().await;
                continue;
            };
            let healthy = tokio::select! {
                job = self.receiver.recv() => match job {
                    Some(job) => self.handle(&shared, conn, job).await,
                    None => return,
                },
                message = next_message(&mut conn.events, self.pushes.as_mut()) => match message {
                    Some(payload) => self.on_message(&shared, conn, &payload).await,
                    None => false,
                },
                _ = shared.wake.notified() => self.on_wake(&shared, conn).await,
                _ = tick.tick() => self.on_tick(&shared, conn).await,
            };
            if !healthy {
                self.down(&shared);
                connection = None;
            }
        }
    }

    /// A message: adopted if it continues this replica's epoch; one of another epoch is
    /// only a reason to read the state (a message proves nothing: anyone may publish).
    async fn on_message(&self, shared: &Shared, conn: &mut Connection, payload: &str) -> bool {
        match parse_message(payload) {
            Some(m) => {
                let decided_here = m.replica == shared.replica;
                if shared.adopt(&m.snapshot, Source::Message, decided_here) == Adoption::Confirm {
                    return self
                        .run_and_apply(shared, conn, &self.scripts.read, &[])
                        .await;
                }
            }
            None => {
                tracing::debug!(breaker = %shared.name, %payload, "stormwall-redis: foreign message on the breaker's channel ignored");
            }
        }
        true
    }

    /// A manual command or a wish for a probe lease.
    async fn on_wake(&self, shared: &Shared, conn: &mut Connection) -> bool {
        if !self.send_command(shared, conn).await {
            return false;
        }
        if shared.want_probe.swap(false, Ordering::AcqRel) {
            return self.acquire_lease(shared, conn).await;
        }
        true
    }

    /// Every `flush_interval`: flush successes, give back unclaimed leases, resync when
    /// nothing answered for `resync_interval`.
    async fn on_tick(&self, shared: &Shared, conn: &mut Connection) -> bool {
        if shared.successes.load(Ordering::Relaxed) > 0 && !self.report(shared, conn, [0; 3]).await
        {
            return false;
        }
        // Unclaimed leases: expired ones are forgotten; the others are given back if
        // another replica wants one, else kept for this replica's next call.
        let claim = shared.options.lease_claim;
        let idle: Vec<HeldLease> = {
            let mut leases = shared.leases();
            let now = Instant::now();
            leases.retain(|l| l.expires > now);
            leases
                .iter()
                .filter(|l| l.idle_since.elapsed() >= claim)
                .copied()
                .collect()
        };
        for held in idle {
            let (slot, token, generation) = (
                held.lease.slot.to_string(),
                held.lease.token.to_string(),
                held.generation.to_string(),
            );
            let args = [slot.as_str(), token.as_str(), generation.as_str()];
            let Some(reply) = self
                .script(shared, conn, &self.scripts.yield_lease, &args)
                .await
            else {
                return false;
            };
            if reply.lease.is_some() {
                shared.leases().retain(|l| l.lease != held.lease);
            }
            if !self.apply(shared, conn, reply).await {
                return false;
            }
        }
        if conn.last_answer.elapsed() >= shared.options.resync_interval {
            return self
                .run_and_apply(shared, conn, &self.scripts.read, &[])
                .await;
        }
        true
    }

    /// A job, with every failure report queued behind it folded into one `RECORD`.
    async fn handle(&mut self, shared: &Shared, conn: &mut Connection, job: Job) -> bool {
        // Calls that failed, were slow, or both.
        let mut counts = [0u32; 3];
        let mut probes = Vec::new();
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Failure { failure, slow } => {
                    counts[usize::from(slow) * (1 + usize::from(failure))] += 1;
                }
                probe @ Job::Probe { .. } => probes.push(probe),
            }
            if counts.iter().sum::<u32>() < 1024 {
                next = self.receiver.try_recv().ok();
            }
        }
        if counts.iter().sum::<u32>() > 0 && !self.report(shared, conn, counts).await {
            return false;
        }
        for probe in probes {
            if let Job::Probe {
                lease,
                generation,
                result,
            } = probe
            {
                if !self
                    .probe_result(shared, conn, lease, generation, result)
                    .await
                {
                    return false;
                }
            }
        }
        true
    }

    /// Runs `RECORD` with the successes counted since the last report and the calls that
    /// failed, were slow, or both (none: a flush).
    async fn report(&self, shared: &Shared, conn: &mut Connection, counts: [u32; 3]) -> bool {
        let successes = shared.successes.swap(0, Ordering::AcqRel);
        let pairs = if successes > 0 {
            format!("0:{successes}")
        } else {
            String::new()
        };
        let [consecutive, failure_ratio, slow_ratio, minimum, bucket_ms, ring] =
            &self.keys.thresholds;
        let [failed, slow, both] = counts.map(|n| n.to_string());
        let flush = shared.options.flush_interval.as_millis().to_string();
        let args = [
            failed.as_str(),
            slow.as_str(),
            pairs.as_str(),
            consecutive,
            failure_ratio,
            slow_ratio,
            minimum,
            bucket_ms,
            ring,
            if successes > 0 { "1" } else { "0" },
            both.as_str(),
            flush.as_str(),
        ];
        self.run_and_apply(shared, conn, &self.scripts.record, &args)
            .await
    }

    async fn probe_result(
        &self,
        shared: &Shared,
        conn: &mut Connection,
        lease: ProbeLease,
        generation: u64,
        result: ProbeResult,
    ) -> bool {
        let (slot, token, generation) = (
            lease.slot.to_string(),
            lease.token.to_string(),
            generation.to_string(),
        );
        let threshold = shared.controller.success_threshold().to_string();
        let args = [
            slot.as_str(),
            token.as_str(),
            generation.as_str(),
            result.as_str(),
            threshold.as_str(),
        ];
        self.run_and_apply(shared, conn, &self.scripts.probe, &args)
            .await
    }

    async fn acquire_lease(&self, shared: &Shared, conn: &mut Connection) -> bool {
        let token = random_id();
        let expires = Instant::now()
            .checked_add(shared.options.probe_lease)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        let (permitted, ttl, token_arg, wanted) = (
            shared.controller.permitted_calls_in_half_open().to_string(),
            shared.options.probe_lease.as_millis().to_string(),
            token.to_string(),
            (shared.options.lease_claim.as_millis() * 2)
                .max(1)
                .to_string(),
        );
        let args = [
            permitted.as_str(),
            ttl.as_str(),
            token_arg.as_str(),
            wanted.as_str(),
        ];
        let Some(reply) = self
            .script(shared, conn, &self.scripts.acquire, &args)
            .await
        else {
            return false;
        };
        let (slot, generation) = (reply.lease, reply.generation);
        if !self.apply(shared, conn, reply).await {
            return false;
        }
        if let Some(slot) = slot {
            shared.leases().push_back(HeldLease {
                lease: ProbeLease { slot, token },
                generation,
                idle_since: Instant::now(),
                expires,
            });
        }
        true
    }

    /// Sends the pending manual command, if any; it stays pending until Redis answers.
    async fn send_command(&self, shared: &Shared, conn: &mut Connection) -> bool {
        let pending = *shared
            .pending_command
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some((command, issued_at)) = pending else {
            return true;
        };
        let issued = issued_at.to_string();
        let target = match command {
            Command::Isolate => "isolated",
            Command::Close => "closed",
            Command::Disable => "disabled",
        };
        let Some(reply) = self
            .script(shared, conn, &self.scripts.command, &[target, &issued])
            .await
        else {
            return false;
        };
        if reply.snapshot.reason == "superseded" {
            tracing::info!(breaker = %shared.name, ?command, "stormwall-redis: manual command dropped: another was given later on another replica");
        }
        {
            let mut slot = shared
                .pending_command
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *slot == Some((command, issued_at)) {
                *slot = None;
            }
        }
        self.apply(shared, conn, reply).await
    }
}

/// The next message's payload; `None` when the subscription ended (the link is down).
#[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
async fn next_message<T: PushPayload>(
    events: &mut Events,
    pushes: Option<&mut mpsc::UnboundedReceiver<T>>,
) -> Option<String> {
    match events {
        Events::PubSub(stream) => {
            let message = stream.next().await?;
            Some(message.get_payload().unwrap_or_default())
        }
        #[cfg(feature = "cluster")]
        Events::Sharded => {
            let pushes = pushes?;
            loop {
                if let Some(payload) = pushes.recv().await?.payload() {
                    return Some(payload);
                }
            }
        }
    }
}

/// A push from a cluster connection; only sharded messages carry a payload.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
trait PushPayload {
    fn payload(&self) -> Option<String>;
}

impl PushPayload for () {
    fn payload(&self) -> Option<String> {
        None
    }
}

#[cfg(feature = "cluster")]
impl PushPayload for redis::PushInfo {
    fn payload(&self) -> Option<String> {
        if self.kind != redis::PushKind::SMessage {
            return None;
        }
        redis::from_redis_value(self.data.get(1)?).ok()
    }
}
