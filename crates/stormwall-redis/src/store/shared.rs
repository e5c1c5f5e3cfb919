//! What a replica knows of the shared state, and the rules by which it adopts what Redis
//! says: the part of the store both the caller's path and the background task touch.

use super::options::RedisStoreOptions;
use super::protocol::{reason_from, Reply, Snapshot};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::{
    controller::Controller, CircuitState, CircuitTransition, Command, InMemoryStore, ProbeLease,
    TransitionOrigin, TransitionReason, TransitionSink,
};
use tokio::sync::{mpsc, Notify};

/// Epochs this replica has left behind, remembered so that a late message from one of them
/// is not mistaken for a newer state.
const RETIRED_EPOCHS: usize = 8;

/// Work for the background task that cannot wait for the next tick.
#[derive(Debug)]
pub(crate) enum Job {
    /// A failure or slow call while closed: reported at once, with the successes counted
    /// since the last report.
    Failure { failure: bool, slow: bool },
    /// A probe ended (or its lease is given back).
    Probe {
        lease: ProbeLease,
        generation: u64,
        result: super::protocol::ProbeResult,
    },
}

/// A probe lease this replica holds and no call has claimed yet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeldLease {
    pub lease: ProbeLease,
    pub generation: u64,
    /// Since when it waits for a call; given back after `lease_claim`.
    pub idle_since: Instant,
    /// When Redis lets it expire, at the latest (measured from before it was asked for):
    /// an expired lease is never used.
    pub expires: Instant,
}

impl HeldLease {
    /// Still usable for a call starting now: of the current half-open period, and not
    /// within a tenth of its lifetime (at most 50 ms) of expiring.
    pub fn usable(&self, generation: u64, lifetime: Duration) -> bool {
        let margin = (lifetime / 10).min(Duration::from_millis(50));
        self.generation == generation && Instant::now() + margin < self.expires
    }
}

/// The adopted state's identity: changed only by the task, under the lock.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// Empty until the first adoption.
    pub epoch: String,
    pub version: u64,
    pub generation: u64,
    retired: VecDeque<String>,
}

/// What [`Shared::adopt`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adoption {
    /// Adopted (or already current).
    Adopted,
    /// Older than what this replica has, from a message: ignored.
    Stale,
    /// A script answer behind what this replica has seen (same epoch, lower version; or
    /// an epoch it left): Redis may have gone back in time. The task reads again, and
    /// starts a new epoch if Redis is still behind.
    Behind,
    /// A message of another epoch: not adopted (anyone can publish); the task reads.
    Confirm,
}

/// Where a snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A script's answer: Redis's state when the script ran.
    Reply,
    /// A pub/sub message, possibly delayed.
    Message,
}

pub(crate) struct Shared {
    pub name: String,
    /// This replica's id, sent with every script so messages say who decided.
    pub replica: String,
    pub options: RedisStoreOptions,
    pub controller: Controller,
    started: Instant,
    /// The effective shared state (atomics: read on every call).
    state: AtomicU8,
    /// Milliseconds since `started` at which the break ends.
    open_until_ms: AtomicU64,
    /// True while Redis answers; false: the local breaker decides.
    pub connected: AtomicBool,
    /// Fed every outcome all along, so it is warm when it must decide.
    pub local: InMemoryStore,
    /// Successes since the last report.
    pub successes: AtomicU64,
    pub view: Mutex<View>,
    /// Leases this replica took for the current half-open period, not yet claimed.
    pub leases: Mutex<VecDeque<HeldLease>>,
    /// Leases claimed by calls still running (a cancelled one comes back to `leases`).
    claimed: Mutex<Vec<HeldLease>>,
    pub want_probe: AtomicBool,
    /// A manual command not yet acknowledged by Redis (the latest wins), with when it was
    /// given (ms since the Unix epoch).
    pub pending_command: Mutex<Option<(Command, u64)>>,
    pub jobs: mpsc::Sender<Job>,
    pub wake: Notify,
    sink: OnceLock<TransitionSink>,
    /// The state listeners last heard of, and the last sequence number given out.
    reported: Mutex<(CircuitState, u64)>,
    pub outages: AtomicU32,
    /// Times this replica found Redis behind and started a new epoch.
    pub rebases: AtomicU32,
}

impl Shared {
    pub fn new(
        name: &str,
        options: RedisStoreOptions,
        controller: Controller,
        local: InMemoryStore,
        jobs: mpsc::Sender<Job>,
    ) -> Self {
        Shared {
            name: name.to_owned(),
            replica: format!("{:016x}", super::protocol::random_id()),
            options,
            controller,
            started: Instant::now(),
            state: AtomicU8::new(CircuitState::Closed as u8),
            open_until_ms: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            local,
            successes: AtomicU64::new(0),
            view: Mutex::new(View::default()),
            leases: Mutex::new(VecDeque::new()),
            claimed: Mutex::new(Vec::new()),
            want_probe: AtomicBool::new(false),
            pending_command: Mutex::new(None),
            jobs,
            wake: Notify::new(),
            sink: OnceLock::new(),
            reported: Mutex::new((CircuitState::Closed, 0)),
            outages: AtomicU32::new(0),
            rebases: AtomicU32::new(0),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The cached shared state.
    #[inline]
    pub fn cached(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Milliseconds left of the cached break.
    pub fn remaining_ms(&self) -> u64 {
        self.open_until_ms
            .load(Ordering::Acquire)
            .saturating_sub(self.now_ms())
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_sink(&self, sink: TransitionSink) {
        let _ = self.sink.set(sink);
    }

    pub fn leases(&self) -> MutexGuard<'_, VecDeque<HeldLease>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn claimed(&self) -> MutexGuard<'_, Vec<HeldLease>> {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a claimed lease back from its call; `None` if it is not (or no longer) ours.
    pub fn unclaim(&self, lease: ProbeLease) -> Option<HeldLease> {
        let mut claimed = self.claimed();
        let at = claimed.iter().position(|h| h.lease == lease)?;
        Some(claimed.swap_remove(at))
    }

    pub fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state a manual command asks for.
    pub fn commanded(command: Command) -> CircuitState {
        match command {
            Command::Isolate => CircuitState::Isolated,
            Command::Close => CircuitState::Closed,
            Command::Disable => CircuitState::Disabled,
        }
    }

    /// Sets the effective shared state (the caller's path reads it).
    pub fn set_cached(&self, state: CircuitState, remaining_ms: u64) {
        self.open_until_ms.store(
            self.now_ms().saturating_add(remaining_ms),
            Ordering::Release,
        );
        self.state.store(state as u8, Ordering::Release);
    }

    /// Applies a script's answer or a message, by the epoch rules: another epoch than the
    /// current one is adopted whatever its version (unless this replica left it before);
    /// within an epoch only a version at least as new. Raises a transition when the state
    /// listeners know changes.
    pub fn adopt(&self, snapshot: &Snapshot, source: Source, decided_here: bool) -> Adoption {
        let mut view = self.view();
        if !view.epoch.is_empty() {
            let same = snapshot.epoch == view.epoch;
            let behind = if same {
                snapshot.version < view.version
            } else {
                view.retired.contains(&snapshot.epoch)
            };
            if behind {
                return match source {
                    Source::Reply => Adoption::Behind,
                    Source::Message => Adoption::Stale,
                };
            }
            if !same && source == Source::Message {
                return Adoption::Confirm;
            }
            if !same {
                let left = std::mem::take(&mut view.epoch);
                view.retired.push_back(left);
                if view.retired.len() > RETIRED_EPOCHS {
                    view.retired.pop_front();
                }
            }
        }
        view.epoch.clone_from(&snapshot.epoch);
        view.version = snapshot.version;
        drop(view);
        let pending = *self
            .pending_command
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((command, _)) = pending {
            // Until Redis acknowledges the command, it is what this replica does.
            self.set_cached(Self::commanded(command), 0);
            return Adoption::Adopted;
        }
        let before = self.cached();
        self.set_cached(snapshot.state, snapshot.remaining_ms);
        if before != snapshot.state {
            // Leases belong to the half-open period that just ended (or has not started).
            self.leases().clear();
            self.claimed().clear();
            let remaining = Duration::from_millis(snapshot.remaining_ms);
            self.local.follow(snapshot.state, Some(remaining));
        }
        let origin = if decided_here {
            TransitionOrigin::Local
        } else {
            TransitionOrigin::Remote
        };
        self.raise(
            snapshot.state,
            reason_from(&snapshot.reason),
            origin,
            (snapshot.state == CircuitState::Open)
                .then(|| Duration::from_millis(snapshot.remaining_ms)),
        );
        Adoption::Adopted
    }

    /// Records the generation of the half-open period a reply saw.
    pub fn set_generation(&self, reply: &Reply) {
        let mut view = self.view();
        if view.epoch == reply.snapshot.epoch {
            view.generation = reply.generation;
        }
    }

    /// Tells listeners the state is now `to`, if that is news to them: numbered from this
    /// replica's own sequence, so they see one gap-free series whoever decided.
    pub fn raise(
        &self,
        to: CircuitState,
        reason: TransitionReason,
        origin: TransitionOrigin,
        break_duration: Option<Duration>,
    ) {
        if let Some(transition) = self.renumber(to, reason, origin, break_duration) {
            if let Some(sink) = self.sink.get() {
                sink(transition);
            }
        }
    }

    /// The transition to `to` for listeners (numbered), or `None` when they already know.
    pub fn renumber(
        &self,
        to: CircuitState,
        reason: TransitionReason,
        origin: TransitionOrigin,
        break_duration: Option<Duration>,
    ) -> Option<CircuitTransition> {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let (from, sequence) = *reported;
        if from == to {
            return None;
        }
        *reported = (to, sequence + 1);
        Some(CircuitTransition {
            from,
            to,
            reason,
            break_duration,
            sequence: sequence + 1,
            origin,
        })
    }

    /// A transition the local breaker raised (while Redis is unreachable), renumbered.
    pub fn local_transition(&self, t: Option<CircuitTransition>) -> Option<CircuitTransition> {
        let t = t?;
        self.renumber(t.to, t.reason, TransitionOrigin::Local, t.break_duration)
    }

    /// Redis just became unreachable: the local breaker decides from here, continuing
    /// from the shared state when that was not closed (an open circuit stays open for the
    /// rest of its break), else from its own warm window.
    pub fn lost_link(&self) {
        let shared = self.cached();
        if shared != CircuitState::Closed {
            let remaining = Duration::from_millis(self.remaining_ms());
            self.local.follow(shared, Some(remaining));
        }
        use stormwall::circuit_breaker::StateStore;
        let local = self.local.state();
        self.raise(
            local,
            TransitionReason::Resynchronised,
            TransitionOrigin::Local,
            None,
        );
    }
}
