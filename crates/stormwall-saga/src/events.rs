//! An event store: append-only streams with expected-version optimistic locking,
//! aggregates rebuilt from a snapshot plus the events after it, and projections that
//! keep a read model up to date (CQRS) and can rebuild it from scratch.

use crate::store::{NewEvent, RecordedEvent, Store};
use crate::{ExpectedVersion, SagaError};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// State folded from a stream's events.
pub trait Aggregate: Default + Clone + Serialize + DeserializeOwned + Send + Sync {
    /// The events that change it.
    type Event: Serialize + DeserializeOwned + Send + Sync;
    /// Applies one event.
    fn apply(&mut self, event: &Self::Event);
}

/// A read model kept up to date from every stream's events, in order.
pub trait Projection: Send {
    /// Its name: the key of its checkpoint.
    fn name(&self) -> &str;
    /// Applies one event.
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), String>;
    /// Forgets everything (before a rebuild).
    fn reset(&mut self);
}

/// The event store over a [`Store`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), stormwall_saga::SagaError> {
/// use serde::{Deserialize, Serialize};
/// use stormwall_saga::{Aggregate, EventStore, ExpectedVersion, SqliteStore};
///
/// #[derive(Default, Clone, Serialize, Deserialize)]
/// struct Account { balance: i64 }
/// #[derive(Serialize, Deserialize)]
/// enum Event { Deposited(i64), Withdrew(i64) }
/// impl Aggregate for Account {
///     type Event = Event;
///     fn apply(&mut self, e: &Event) {
///         match e { Event::Deposited(n) => self.balance += n, Event::Withdrew(n) => self.balance -= n }
///     }
/// }
///
/// let dir = std::env::temp_dir().join(format!("stormwall-doc-events-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let events = EventStore::new(SqliteStore::open(dir.join("events.db"))?).snapshot_every(100);
/// let (account, version) = events.load::<Account>("account-1").await?;
/// let (account, version) = events.commit("account-1", (account, version), vec![Event::Deposited(50)]).await?;
/// assert_eq!(account.balance, 50);
/// // A writer that loaded version 0 lost the race: a typed conflict, nothing appended.
/// let stale = events.append("account-1", ExpectedVersion::NoStream, &[Event::Withdrew(10)]).await;
/// assert!(matches!(stale, Err(stormwall_saga::SagaError::Conflict { actual: 1, .. })));
/// # std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EventStore<S> {
    store: S,
    snapshot_every: i64,
}

/// The event's type as stored: the variant name of an externally tagged enum
/// (`{"Deposited": 50}` or `"Closed"`), else `event`.
fn kind_of(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) if map.len() == 1 => map.keys().next().cloned(),
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    }
    .unwrap_or_else(|| "event".to_owned())
}

fn corrupt(what: &'static str, id: String, e: impl std::fmt::Display) -> SagaError {
    SagaError::Corrupt {
        what,
        id,
        reason: e.to_string(),
    }
}

impl<S: Store> EventStore<S> {
    /// An event store without snapshots.
    pub fn new(store: S) -> Self {
        EventStore {
            store,
            snapshot_every: 0,
        }
    }

    /// Keeps a snapshot of an aggregate every `n` events ([`commit`](Self::commit));
    /// 0: never.
    pub fn snapshot_every(mut self, n: u32) -> Self {
        self.snapshot_every = i64::from(n);
        self
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Appends `events` if `stream` is at `expected`; the new version.
    pub async fn append<E: Serialize>(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[E],
    ) -> Result<i64, SagaError> {
        let mut new = Vec::with_capacity(events.len());
        for e in events {
            let value = serde_json::to_value(e)
                .map_err(|e| SagaError::Config(format!("event does not serialise: {e}")))?;
            new.push(NewEvent {
                kind: kind_of(&value),
                data: value.to_string(),
            });
        }
        self.store.append(stream, expected, new).await
    }

    /// A stream's events after version `after`, decoded: (version, event).
    pub async fn read<E: DeserializeOwned>(
        &self,
        stream: &str,
        after: i64,
    ) -> Result<Vec<(i64, E)>, SagaError> {
        self.store
            .read_stream(stream, after)
            .await?
            .into_iter()
            .map(|r| {
                serde_json::from_str(&r.data)
                    .map(|e| (r.version, e))
                    .map_err(|e| corrupt("event", format!("{}@{}", r.stream, r.version), e))
            })
            .collect()
    }

    /// The aggregate from every event of the stream (no snapshot): (state, version).
    pub async fn replay<A: Aggregate>(&self, stream: &str) -> Result<(A, i64), SagaError> {
        self.fold(stream, A::default(), 0).await
    }

    async fn fold<A: Aggregate>(
        &self,
        stream: &str,
        mut state: A,
        mut version: i64,
    ) -> Result<(A, i64), SagaError> {
        for (v, event) in self.read::<A::Event>(stream, version).await? {
            state.apply(&event);
            version = v;
        }
        Ok((state, version))
    }

    /// The aggregate from its latest snapshot plus the events after it: (state, version).
    pub async fn load<A: Aggregate>(&self, stream: &str) -> Result<(A, i64), SagaError> {
        match self.store.snapshot_load(stream).await? {
            Some((version, state)) => {
                let state: A = serde_json::from_str(&state)
                    .map_err(|e| corrupt("snapshot", stream.to_owned(), e))?;
                self.fold(stream, state, version).await
            }
            None => self.replay(stream).await,
        }
    }

    /// Appends `events` to the aggregate `loaded` at its version (a conflict if another
    /// writer got there first), snapshots when a multiple of `snapshot_every` is crossed;
    /// the new (state, version).
    pub async fn commit<A: Aggregate>(
        &self,
        stream: &str,
        loaded: (A, i64),
        events: Vec<A::Event>,
    ) -> Result<(A, i64), SagaError> {
        let (mut state, version) = loaded;
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        let new_version = self.append(stream, expected, &events).await?;
        for e in &events {
            state.apply(e);
        }
        let n = self.snapshot_every;
        if n > 0 && new_version / n > version / n {
            let json = serde_json::to_string(&state)
                .map_err(|e| SagaError::Config(format!("aggregate does not serialise: {e}")))?;
            self.store.snapshot_save(stream, new_version, json).await?;
        }
        Ok((state, new_version))
    }

    /// Brings `projection` up to date: applies every event after its checkpoint, in
    /// order, batch by batch; how many. A crash between applying and saving the
    /// checkpoint re-applies that batch (at least once).
    pub async fn catch_up<P: Projection>(&self, projection: &mut P) -> Result<usize, SagaError> {
        let name = projection.name().to_owned();
        let mut position = self.store.checkpoint_load(&name).await?;
        let mut applied = 0;
        loop {
            let batch = self.store.read_all(position, 500).await?;
            let Some(last) = batch.last().map(|e| e.position) else {
                return Ok(applied);
            };
            for event in &batch {
                projection
                    .apply(event)
                    .map_err(|reason| SagaError::Corrupt {
                        what: "event",
                        id: format!("{}@{}", event.stream, event.version),
                        reason,
                    })?;
            }
            applied += batch.len();
            position = last;
            self.store.checkpoint_save(&name, position).await?;
        }
    }

    /// Rebuilds `projection` from scratch: resets it and its checkpoint, then catches up.
    pub async fn rebuild<P: Projection>(&self, projection: &mut P) -> Result<usize, SagaError> {
        projection.reset();
        self.store.checkpoint_save(projection.name(), 0).await?;
        self.catch_up(projection).await
    }
}
