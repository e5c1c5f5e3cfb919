//! The one error type of the chaos proxy, with the HTTP status Toxiproxy gives each case.

use std::io;

/// What went wrong with a request to the chaos proxy (its HTTP API or its Rust API).
///
/// Messages follow Toxiproxy's (`proxy not found`, `bad request body: ...`) so clients that
/// match on them keep working; [`status`](Self::status) is the HTTP status Toxiproxy uses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// The body is not the JSON expected; the message names the field and value.
    #[error("bad request body: {0}")]
    BadRequest(String),
    /// A required field is absent or empty.
    #[error("missing required field: {0}")]
    MissingField(&'static str),
    /// No proxy has that name.
    #[error("proxy not found")]
    ProxyNotFound,
    /// A proxy with that name exists already.
    #[error("proxy already exists")]
    ProxyExists,
    /// No toxic of the proxy has that name.
    #[error("toxic not found")]
    ToxicNotFound,
    /// A toxic with that name exists already on the proxy.
    #[error("toxic already exists")]
    ToxicExists,
    /// The toxic type is not one the proxy knows.
    #[error("invalid toxic type: {0}")]
    InvalidToxicType(String),
    /// `stream` is neither `upstream` nor `downstream`.
    #[error("stream was invalid, can be either upstream or downstream (got {0:?})")]
    InvalidStream(String),
    /// An address (`listen` or `upstream`) does not resolve.
    #[error("{field} {address:?} does not resolve: {reason}")]
    Unresolvable {
        /// `listen` or `upstream`.
        field: &'static str,
        /// The address as given.
        address: String,
        /// What the resolver said.
        reason: String,
    },
    /// The proxy could not listen on its address (in use, not permitted).
    #[error("listen {address}: {source}")]
    Listen {
        /// The address it tried.
        address: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The proxy could not listen on its new address, and going back to the old one
    /// failed too: it is left disabled.
    #[error("{failed}; going back failed too: {rollback} (the proxy is disabled)")]
    RollbackFailed {
        /// Why the new address failed.
        failed: Box<ChaosError>,
        /// Why going back to the old one failed.
        rollback: Box<ChaosError>,
    },
    /// No such API path.
    #[error("not found")]
    NotFound,
    /// A config file could not be read.
    #[error("config {path}: {source}")]
    Config {
        /// The file.
        path: String,
        /// Why it could not be read.
        source: io::Error,
    },
}

impl ChaosError {
    pub(crate) fn rollback_failed(failed: ChaosError, rollback: ChaosError) -> Self {
        ChaosError::RollbackFailed {
            failed: Box::new(failed),
            rollback: Box::new(rollback),
        }
    }

    /// The HTTP status for this error, as Toxiproxy answers it.
    pub fn status(&self) -> u16 {
        match self {
            ChaosError::BadRequest(_)
            | ChaosError::MissingField(_)
            | ChaosError::InvalidToxicType(_)
            | ChaosError::InvalidStream(_)
            | ChaosError::Unresolvable { .. }
            | ChaosError::Config { .. } => 400,
            ChaosError::ProxyNotFound | ChaosError::ToxicNotFound | ChaosError::NotFound => 404,
            ChaosError::ProxyExists | ChaosError::ToxicExists => 409,
            ChaosError::Listen { .. } | ChaosError::RollbackFailed { .. } => 500,
        }
    }
}
