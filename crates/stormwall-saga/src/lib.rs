#![cfg_attr(docsrs, feature(doc_cfg))]
//! Idempotency keys, durable sagas with compensation, and an event store — the parts of
//! a business flow across services that retries alone cannot make safe.
//!
//! - [`IdempotencyLayer`]: the `Idempotency-Key` header for axum/tower services.
//! - [`Orchestrator`]: sagas whose steps run through stormwall pipelines, persisted after
//!   every step, compensated in reverse order, resumed after a restart.
//! - [`EventStore`]: append-only streams with optimistic locking, snapshots, projections.
//! - [`choreography`]: services reacting to each other's events — a transactional outbox,
//!   consumer groups on PostgreSQL or Redis Streams, idempotent consumers, saga tracking.
//!
//! Everything is kept in a [`Store`]: [`SqliteStore`] (embedded default) or
//! `PostgresStore` (feature `postgres`) — the same schema migrations, the same tests.

pub mod choreography;
mod error;
mod events;
mod idempotency;
mod saga;
pub mod store;

pub use error::{ExpectedVersion, SagaError};
pub use events::{Aggregate, EventStore, Projection};
pub use idempotency::{
    Clock, IdempotencyBody, IdempotencyLayer, IdempotencyOptions, IdempotencyScope,
    IdempotencyService, ScopeFn,
};
pub use saga::{
    Orchestrator, OrchestratorOptions, SagaDefinition, SagaEvent, SagaState, SagaStatus,
    StepContext, StepFuture,
};
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
pub use store::{RecordedEvent, SqliteStore, Store};
