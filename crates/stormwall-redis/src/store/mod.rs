//! `RedisStateStore`: the replica side of a shared breaker.
//!
//! The caller's path never waits for Redis. It reads a cached state (atomics) that a
//! background task keeps current from pub/sub messages and script answers. Successes are
//! counted locally and flushed every `flush_interval` while there are any (and with every
//! failure report), so the shared window holds the fleet's ratio while a successful call
//! issues no command; failures, probe outcomes and commands go to the task at once.
//!
//! - [`options`]: how the replica talks to Redis.
//! - `shared`: the replica's view and the rules by which it adopts Redis's state (epochs).
//! - `task`: the background task (connection, scripts, flushes, resync, leases).
//! - `protocol`: script answers and messages.
//!
//! **Semantics.** The state lives in Redis under an epoch (a random id made when the state
//! is created). A replica adopts any state of another epoch whatever its version, and
//! orders by version within one; so Redis losing its keys (a restart without persistence,
//! `FLUSHALL`, deletion, expiry, a failover to a lagging replica) re-creates a closed state
//! that every replica adopts within `resync_interval`, instead of freezing the fleet on a
//! version it has already passed. The first call after a break is rejected (HalfOpen) and
//! asks for a probe lease; the next call on the replica that got it is the probe. At most
//! `permitted_calls_in_half_open` leases exist cluster-wide; each is a unique token,
//! released by compare-and-delete, living `probe_lease` at most; one not claimed within
//! `lease_claim` is given back. While Redis answers, the local breaker is fed every outcome
//! as a shadow; when Redis becomes unreachable (a broken connection, or no answer within
//! `command_timeout`) the replica decides on it — from the shared state if that was not
//! closed, else from its own warm window — logs one warning, and on reconnect re-reads the
//! shared state and adopts it, dropping what it counted meanwhile (its local breaker acted
//! on it already), with one info line. Manual commands apply locally at once, are retried
//! until Redis acknowledges them, and are then what every replica adopts; automatic
//! decisions never leave Isolated or Disabled.

mod options;
mod protocol;
mod shared;
mod task;

pub use options::RedisStoreOptions;

use crate::RedisStoreError;
use protocol::ProbeResult;
use shared::{Job, Shared};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{
    controller::Controller,
    store::{Acquired, CallOutcome, Command, InMemoryStore, StateStore, Ticket},
    CircuitBreakerOptions, CircuitState, CircuitTransition, TransitionSink,
};
use task::{Keys, Task};
use tokio::sync::mpsc;

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
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStateStore")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// A cluster client, and the receiver of its connections' pushes.
#[cfg(feature = "cluster")]
pub(crate) type ClusterClient = (
    redis::cluster::ClusterClient,
    tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
);
/// Stands in for the cluster client when the `cluster` feature is off.
#[cfg(not(feature = "cluster"))]
pub(crate) type ClusterClient = std::convert::Infallible;

fn open(url: &str) -> Result<redis::Client, RedisStoreError> {
    redis::Client::open(url).map_err(|e| RedisStoreError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

impl RedisStateStore {
    /// Connects to Redis at `url` and shares the breaker `name` (the same name on every
    /// replica) with the thresholds of `breaker` (the same options on every replica). An
    /// invalid URL or invalid options are an error; an unreachable Redis is not: the store
    /// starts on its local breaker and joins when Redis answers (the wait is bounded by
    /// four times `command_timeout`: connect, subscribe, load the scripts, read).
    pub async fn connect<P>(
        url: &str,
        name: &str,
        breaker: &CircuitBreakerOptions<P>,
        options: RedisStoreOptions,
    ) -> Result<Self, RedisStoreError> {
        let (store, mut task) = Self::prepare(vec![open(url)?], None, name, breaker, options)?;
        // The first connection is awaited (bounded), so a store made while Redis is up
        // starts shared.
        let connection = task.connect().await;
        tokio::spawn(task.run(connection));
        Ok(store)
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
        let (store, mut task) = Self::prepare(vec![open(url)?], None, name, breaker, options)?;
        runtime.spawn(async move {
            let connection = task.connect().await;
            task.run(connection).await;
        });
        Ok(store)
    }

    /// Like [`connect`](Self::connect), on a Redis Cluster given by some of its `nodes`:
    /// scripts go through the cluster client (a breaker's keys share one hash slot), the
    /// subscription to one node (Redis Cluster forwards every `PUBLISH` to all nodes;
    /// another node is tried when it fails).
    #[cfg(feature = "cluster")]
    pub async fn connect_cluster<P>(
        nodes: &[&str],
        name: &str,
        breaker: &CircuitBreakerOptions<P>,
        options: RedisStoreOptions,
    ) -> Result<Self, RedisStoreError> {
        if nodes.is_empty() {
            return Err(RedisStoreError::InvalidUrl {
                url: String::new(),
                reason: "no cluster node given".into(),
            });
        }
        let clients = nodes
            .iter()
            .map(|n| open(n))
            .collect::<Result<Vec<_>, _>>()?;
        // Sharded pub/sub (SSUBSCRIBE) needs RESP3; the pushes reach the task.
        let (push_sender, pushes) = tokio::sync::mpsc::unbounded_channel();
        let cluster = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(options.command_timeout)
            .response_timeout(options.command_timeout)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push_sender)
            .build()
            .map_err(|e| RedisStoreError::InvalidUrl {
                url: nodes.join(","),
                reason: e.to_string(),
            })?;
        let (store, mut task) =
            Self::prepare(clients, Some((cluster, pushes)), name, breaker, options)?;
        let connection = task.connect().await;
        tokio::spawn(task.run(connection));
        Ok(store)
    }

    fn prepare<P>(
        clients: Vec<redis::Client>,
        cluster: Option<ClusterClient>,
        name: &str,
        breaker: &CircuitBreakerOptions<P>,
        options: RedisStoreOptions,
    ) -> Result<(Self, Task), RedisStoreError> {
        breaker
            .validate()
            .map_err(|e| RedisStoreError::Config(e.within("circuit_breaker")))?;
        options
            .validate()
            .map_err(|e| RedisStoreError::Config(e.within("redis")))?;
        let controller = Controller::new(breaker);
        let database = clients
            .first()
            .map_or(0, |c| c.get_connection_info().redis.db);
        let keys = Keys::new(
            &options.key_prefix,
            name,
            database,
            &controller,
            cluster.is_some(),
        );
        let (jobs, receiver) = mpsc::channel(4096);
        let shared = Arc::new(Shared::new(
            name,
            options,
            controller,
            InMemoryStore::new(breaker),
            jobs,
        ));
        #[cfg(feature = "cluster")]
        let (cluster, pushes) = match cluster {
            Some((client, pushes)) => (Some(client), Some(pushes)),
            None => (None, None),
        };
        #[cfg(not(feature = "cluster"))]
        let pushes = None;
        let task = Task::new(
            Arc::downgrade(&shared),
            clients,
            cluster,
            keys,
            receiver,
            pushes,
        );
        Ok((RedisStateStore { shared }, task))
    }

    /// True while Redis answers (the state is shared); false while the local breaker
    /// decides.
    pub fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The version of the shared state this replica has adopted (bumped by every
    /// transition; restarts from 0 in a new epoch).
    pub fn version(&self) -> u64 {
        self.shared.view().version
    }

    /// The epoch of the shared state this replica has adopted (empty before the first
    /// answer from Redis).
    pub fn epoch(&self) -> String {
        self.shared.view().epoch.clone()
    }

    /// Outages seen so far (each logged once).
    pub fn outages(&self) -> u32 {
        self.shared.outages.load(Ordering::Relaxed)
    }

    /// Times this replica found Redis behind what it had seen and started a new epoch.
    pub fn rebases(&self) -> u32 {
        self.shared.rebases.load(Ordering::Relaxed)
    }

    /// This replica's id, as the messages it causes name it.
    pub fn replica_id(&self) -> &str {
        &self.shared.replica
    }
}

impl StateStore for RedisStateStore {
    #[inline]
    fn try_acquire(&self) -> Acquired {
        let shared = &*self.shared;
        if !shared.is_connected() {
            let mut acquired = shared.local.try_acquire();
            acquired.transition = shared.local_transition(acquired.transition);
            return acquired;
        }
        match shared.cached() {
            CircuitState::Closed | CircuitState::Disabled => Acquired::admitted(),
            CircuitState::Isolated => Acquired::rejected(CircuitState::Isolated, None),
            state => self.acquire_probe(state),
        }
    }

    #[inline]
    fn record(&self, ticket: Ticket, outcome: CallOutcome) -> Option<CircuitTransition> {
        let shared = &*self.shared;
        match ticket {
            Ticket::Probe {
                generation,
                lease: Some(lease),
            } => {
                shared.unclaim(lease);
                let result = if shared.controller.probe_failed(outcome) {
                    ProbeResult::Failed
                } else {
                    ProbeResult::Succeeded
                };
                // Full queue: the lease expires on its own; the outcome is lost to Redis.
                let _ = shared.jobs.try_send(Job::Probe {
                    lease,
                    generation,
                    result,
                });
                None
            }
            _ if !shared.is_connected() => {
                shared.local_transition(shared.local.record(ticket, outcome))
            }
            // A local probe from before the link came back: the shadow learns from it.
            Ticket::Probe { lease: None, .. } => {
                shared.local.record(ticket, outcome);
                None
            }
            Ticket::Normal => {
                // The shadow: the local breaker learns every outcome, decides nothing.
                shared.local.record(ticket, outcome);
                if shared.cached() != CircuitState::Closed {
                    return None;
                }
                if !outcome.failure && !outcome.slow {
                    shared.successes.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                let job = Job::Failure {
                    failure: outcome.failure,
                    slow: outcome.slow,
                };
                if shared.jobs.try_send(job).is_err() {
                    tracing::debug!(breaker = %shared.name, "stormwall-redis: report queue full; outcome counted by the local shadow only");
                }
                None
            }
        }
    }

    fn release(&self, ticket: Ticket) {
        match ticket {
            Ticket::Probe {
                generation,
                lease: Some(lease),
            } => {
                // Kept for the replica's next call (a worker that asks before it leases a
                // job); given back by the task if no call claims it within `lease_claim`.
                let shared = &*self.shared;
                if let Some(mut held) = shared.unclaim(lease) {
                    held.idle_since = Instant::now();
                    debug_assert_eq!(held.generation, generation);
                    shared.leases().push_front(held);
                }
            }
            _ => self.shared.local.release(ticket),
        }
    }

    fn command(&self, command: Command) -> Option<CircuitTransition> {
        let shared = &*self.shared;
        let local = shared.local.command(command);
        let issued_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        *shared
            .pending_command
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((command, issued_at));
        shared.wake.notify_one();
        if !shared.is_connected() {
            return shared.local_transition(local);
        }
        // Takes effect here at once; Redis makes it cluster-wide (retried until it answers).
        shared.set_cached(Shared::commanded(command), 0);
        shared.leases().clear();
        shared.renumber(
            Shared::commanded(command),
            stormwall::circuit_breaker::TransitionReason::Manual,
            stormwall::circuit_breaker::TransitionOrigin::Local,
            None,
        )
    }

    fn state(&self) -> CircuitState {
        if self.shared.is_connected() {
            self.shared.cached()
        } else {
            self.shared.local.state()
        }
    }

    fn set_transition_sink(&self, sink: TransitionSink) {
        self.shared.set_sink(sink);
    }
}

impl RedisStateStore {
    /// Open or half-open: a held lease makes this call the probe; otherwise the break
    /// decides, and once it is over the task is asked for a lease.
    #[cold]
    fn acquire_probe(&self, state: CircuitState) -> Acquired {
        let shared = &*self.shared;
        let current = shared.view().generation;
        let held = {
            let mut leases = shared.leases();
            leases.retain(|l| l.usable(current, shared.options.probe_lease));
            leases.pop_front()
        };
        if let Some(held) = held {
            shared.claimed().push(held);
            return Acquired {
                result: Ok(Ticket::Probe {
                    generation: held.generation,
                    lease: Some(held.lease),
                }),
                transition: None,
            };
        }
        let remaining = shared.remaining_ms();
        if state == CircuitState::Open && remaining > 0 {
            return Acquired::rejected(CircuitState::Open, Some(Duration::from_millis(remaining)));
        }
        shared.want_probe.store(true, Ordering::Release);
        shared.wake.notify_one();
        Acquired::rejected(CircuitState::HalfOpen, None)
    }
}
