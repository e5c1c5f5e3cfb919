//! A lazily (re)connected multiplexed connection: every use bounded by a timeout, a failed
//! one dropped so the next use reconnects. Callers never queue behind a connection being
//! made: while one caller connects, the others get `None` at once (and decide locally).

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub(crate) struct Lazy {
    client: Client,
    timeout: Duration,
    /// Held only to clone or swap the connection, never across an await.
    connection: Mutex<Option<MultiplexedConnection>>,
    /// Set while one caller is connecting.
    connecting: AtomicBool,
}

/// Clears `connecting` however the connecting caller ends (a cancelled future included).
struct Connecting<'a>(&'a AtomicBool);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Lazy {
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        Lazy {
            client,
            timeout,
            connection: Mutex::new(None),
            connecting: AtomicBool::new(false),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection, connecting within the timeout if there is none; `None` at once if
    /// another caller is connecting.
    pub(crate) async fn get(&self) -> Option<MultiplexedConnection> {
        if let Some(connection) = self.slot().as_ref() {
            return Some(connection.clone());
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return None;
        }
        let _connecting = Connecting(&self.connecting);
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
        *self.slot() = Some(connection.clone());
        Some(connection)
    }

    /// Forgets the connection after a failure.
    pub(crate) async fn reset(&self) {
        *self.slot() = None;
    }
}
