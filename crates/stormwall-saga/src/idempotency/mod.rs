//! The `Idempotency-Key` header as a tower layer (axum, hyper, tonic): the first request
//! with a key runs; a repeat with the same key and payload gets the stored response
//! (`Idempotent-Replayed: true`); a repeat while the first still runs gets 409 (or waits
//! for it, up to `in_flight_wait`); the same key with another payload gets 422.
//!
//! Keys are scoped per client ([`IdempotencyScope`], by default the `Authorization`
//! header): two clients that pick the same key never see each other's response.
//! Concurrent duplicates run the handler once: the store claims a (scope, key) atomically.
//! A claim is a lease of `claim_lease`, renewed while the handler runs: if the process
//! dies mid-request, a retry takes the key over once the lease runs out instead of
//! meeting 409 until the key expires. A response larger than `max_body_bytes` still
//! reaches the first client in full, but only its status and headers are kept: a repeat
//! is told (409) that it completed and cannot be replayed — the handler never runs twice.

mod body;
mod layer;
mod options;
mod record;

pub use body::IdempotencyBody;
pub use layer::{IdempotencyLayer, IdempotencyService};
pub use options::{Clock, IdempotencyOptions, IdempotencyScope, ScopeFn};
