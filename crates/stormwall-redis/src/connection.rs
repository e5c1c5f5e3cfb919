//! A lazily (re)connected multiplexed connection: every use bounded by a timeout, a failed
//! one dropped so the next use reconnects.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use std::time::Duration;
use tokio::sync::Mutex;

pub(crate) struct Lazy {
    client: Client,
    timeout: Duration,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl Lazy {
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        Lazy {
            client,
            timeout,
            connection: Mutex::new(None),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection, connecting within the timeout if there is none.
    pub(crate) async fn get(&self) -> Option<MultiplexedConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Some(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let connection = tokio::time::timeout(self.timeout, connect)
            .await
            .ok()?
            .ok()?;
        *slot = Some(connection.clone());
        Some(connection)
    }

    /// Forgets the connection after a failure.
    pub(crate) async fn reset(&self) {
        *self.connection.lock().await = None;
    }
}
