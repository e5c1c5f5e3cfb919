/// What can go wrong building a Redis store. (An unreachable Redis is not an error: the
/// store starts on its local breaker.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A store that starts its own task was made outside a tokio runtime.
    #[error("the Redis store needs a tokio runtime to start in")]
    NoRuntime,
    /// The breaker options are invalid.
    #[error(transparent)]
    Config(#[from] stormwall::ConfigError),
}
