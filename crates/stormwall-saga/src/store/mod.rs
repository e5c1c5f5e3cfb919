//! Storage behind one trait, [`Store`], with two backends: [`SqliteStore`] (a file,
//! nothing to install) and `PostgresStore` (feature `postgres`, for many replicas).
//! Both apply the same versioned schema migrations (shipped with the crate) and refuse a
//! database written by a newer version.

use crate::{ExpectedVersion, SagaError};
use std::future::Future;

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub(crate) use sqlite::run_blocking;
pub use sqlite::SqliteStore;

/// The schema version this build writes (the number of migrations). Version 2 scoped
/// idempotency keys per client and gave claims a lease.
pub const SCHEMA_VERSION: i64 = 2;

/// Checks a stored schema version: the migrations still to apply (`0..` for a new
/// database).
pub(crate) fn pending_migrations(found: Option<String>) -> Result<i64, SagaError> {
    let Some(found) = found else {
        return Ok(0);
    };
    let version = found.parse::<i64>().map_err(|e| SagaError::Corrupt {
        what: "schema version",
        id: found.clone(),
        reason: e.to_string(),
    })?;
    if version > SCHEMA_VERSION {
        return Err(SagaError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// What [`Store::idempotency_begin`] found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key is new (or its record expired, or the claim on it ran out: its holder
    /// died): this request runs.
    Started,
    /// A request with this key and payload is running (its claim is held).
    InProgress,
    /// A request with this key and payload finished: its stored response.
    Completed(Vec<u8>),
    /// A request with this key and payload finished, but its response was too large to
    /// keep: its status and headers only (empty body).
    CompletedUnstored(Vec<u8>),
    /// The key was used with a different payload.
    Mismatch,
}

/// An idempotency key as stored: the client's scope (an opaque id; empty for keys shared
/// by every client) and the key it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopedKey<'a> {
    /// The client's scope.
    pub scope: &'a str,
    /// The key.
    pub key: &'a str,
}

/// A request's claim on a key: who holds it (a token unique to the request) and for how
/// long from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimLease<'a> {
    /// The claim's holder.
    pub owner: &'a str,
    /// The time now, milliseconds since the epoch.
    pub now_ms: i64,
    /// How long the claim lasts unless renewed.
    pub lease_ms: i64,
}

/// A saga as stored: its definition's name, status, and its state (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    /// The saga's id.
    pub id: String,
    /// The definition's name.
    pub name: String,
    /// Its status (`running`, `compensating`, `completed`, `compensated`, `parked`).
    pub status: String,
    /// The state, JSON.
    pub state: String,
    /// Optimistic-locking version: bumped on every save.
    pub version: i64,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Its type, e.g. `Deposited`.
    pub kind: String,
    /// Its data, JSON.
    pub data: String,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Its position across all streams (increasing, gap-free in commit order).
    pub position: i64,
    /// Its stream.
    pub stream: String,
    /// Its version within the stream (1 for the first).
    pub version: i64,
    /// Its type.
    pub kind: String,
    /// Its data, JSON.
    pub data: String,
}

/// Where idempotency records, sagas and events are kept. Every method is one
/// transaction: a change is all there or not at all.
pub trait Store: Clone + Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint` until `claim.now_ms +
    /// claim.lease_ms`, the record kept until `now_ms + ttl_ms` (atomically: of concurrent
    /// callers, one gets [`Begin::Started`]). A record past its expiry counts as absent; a
    /// running one whose claim ran out is taken over.
    fn idempotency_begin(
        &self,
        key: ScopedKey<'_>,
        fingerprint: &str,
        claim: ClaimLease<'_>,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<Begin, SagaError>> + Send;
    /// Extends `claim.owner`'s claim on `key` to `claim.now_ms + claim.lease_ms`: whether
    /// it still held it.
    fn idempotency_renew(
        &self,
        key: ScopedKey<'_>,
        claim: ClaimLease<'_>,
    ) -> impl Future<Output = Result<bool, SagaError>> + Send;
    /// Stores the response of the request that holds `key` (`replayable`: the whole
    /// response; otherwise its status and headers only, see [`Begin::CompletedUnstored`]):
    /// whether `owner` still held the claim.
    fn idempotency_complete(
        &self,
        key: ScopedKey<'_>,
        owner: &str,
        response: Vec<u8>,
        replayable: bool,
    ) -> impl Future<Output = Result<bool, SagaError>> + Send;
    /// Forgets `key` if `owner` still holds its claim (the request failed in a way worth
    /// retrying).
    fn idempotency_abandon(
        &self,
        key: ScopedKey<'_>,
        owner: &str,
    ) -> impl Future<Output = Result<(), SagaError>> + Send;
    /// Deletes every key whose expiry is at or before `now_ms` (finished or not, of every
    /// scope); how many.
    fn idempotency_purge_expired(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<usize, SagaError>> + Send;

    /// Stores a new saga, owned by `owner` until `lease_until_ms`; false when the id
    /// exists.
    fn saga_create(
        &self,
        row: SagaRow,
        owner: &str,
        lease_until_ms: i64,
    ) -> impl Future<Output = Result<bool, SagaError>> + Send;
    /// A saga by id.
    fn saga_load(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<SagaRow>, SagaError>> + Send;
    /// Takes (or renews) the saga for `owner` until `now_ms + lease_ms`, unless another
    /// owner's lease is still running: whether it is now `owner`'s.
    fn saga_claim(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> impl Future<Output = Result<bool, SagaError>> + Send;
    /// Saves `row` if the stored version is `row.version - 1` and `owner` holds it;
    /// `release` gives the lease up (the saga finished). Whether it was saved.
    fn saga_save(
        &self,
        row: SagaRow,
        owner: &str,
        release: bool,
    ) -> impl Future<Output = Result<bool, SagaError>> + Send;
    /// Ids of sagas not finished (running or compensating), oldest first.
    fn saga_unfinished(&self) -> impl Future<Output = Result<Vec<String>, SagaError>> + Send;

    /// Appends `events` to `stream` if it is at `expected`; the stream's new version.
    /// Fails with [`SagaError::Conflict`] otherwise (nothing appended).
    fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<i64, SagaError>> + Send;
    /// Events of `stream` after version `after`, in order.
    fn read_stream(
        &self,
        stream: &str,
        after: i64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, SagaError>> + Send;
    /// Up to `limit` events of every stream after position `after`, in order.
    fn read_all(
        &self,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, SagaError>> + Send;
    /// Keeps `state` (JSON) as `stream`'s snapshot at `version`.
    fn snapshot_save(
        &self,
        stream: &str,
        version: i64,
        state: String,
    ) -> impl Future<Output = Result<(), SagaError>> + Send;
    /// `stream`'s latest snapshot: (version, state).
    fn snapshot_load(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<(i64, String)>, SagaError>> + Send;
    /// The position projection `name` has applied up to (0: none).
    fn checkpoint_load(&self, name: &str) -> impl Future<Output = Result<i64, SagaError>> + Send;
    /// Records that projection `name` applied everything up to `position`.
    fn checkpoint_save(
        &self,
        name: &str,
        position: i64,
    ) -> impl Future<Output = Result<(), SagaError>> + Send;
}
