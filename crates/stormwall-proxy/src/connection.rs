//! Client connections: what each one is doing, the timeouts that follow from it, and the
//! bound on how many are open.
//!
//! A connection is in one of three phases:
//! - **idle**: no request being served and no byte of the next one received (keep-alive
//!   between requests, or a new connection before its first byte): closed after
//!   `idle_timeout`;
//! - **reading a head**: bytes of a request head arrived, the head is not complete yet:
//!   closed `header_read_timeout` after its first byte (slowloris);
//! - **serving**: at least one request handed to the proxy whose response has not been
//!   sent in full. Request bodies have their own timeout ([`crate::body`]).
//!
//! hyper's own `header_read_timeout` is not used: it starts when hyper waits for a head,
//! so between keep-alive requests it would close connections after the header timeout
//! instead of the idle timeout.
//!
//! At `max_connections`, a new client makes the connection that has been idle or reading
//! a head the longest close (it holds a slot doing nothing), so new clients get in (as
//! nginx drains its "reusable" connections). Only a connection in that phase for at least
//! [`EVICTABLE_AFTER`] is closed: one just accepted has its request in flight, not yet
//! read.

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a connection must have been idle (or reading a head) before a new client may
/// close it.
pub(crate) const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// The timeouts of one connection, fixed when it is accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// `server.header_read_timeout`.
    pub(crate) header_read: Duration,
    /// `server.idle_timeout`.
    pub(crate) idle: Duration,
}

/// Every open client connection, and the bound on their number.
pub(crate) struct Connections {
    /// Connections open now (each holds one slot from accept until it closes).
    open: AtomicUsize,
    /// `server.max_connections`, changed by a reload.
    limit: AtomicUsize,
    /// Signalled when a connection closes (a slot is free).
    freed: Notify,
    next_id: AtomicU64,
    /// The open connections, for eviction.
    table: Mutex<HashMap<u64, Arc<Connection>>>,
    /// The origin of the connections' `since` timestamps.
    epoch: Instant,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &self.open.load(Ordering::Relaxed))
            .field("limit", &self.limit.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One client connection's phase.
#[derive(Debug)]
pub(crate) struct Connection {
    id: u64,
    /// Requests being served: +1 when the proxy is handed a request, -1 when its response
    /// has been sent in full (or dropped).
    active: AtomicU32,
    /// Set when a byte arrives while no request is served (a head has begun); cleared when
    /// the proxy is handed the request.
    reading_head: AtomicBool,
    /// When the current phase began, in ms since [`Connections::epoch`].
    since: AtomicU64,
    /// Set once the connection was asked to close (so it is not chosen twice).
    evicting: AtomicBool,
    /// Set with `evicting`, taken by the connection's watcher: close if still idle.
    evict: AtomicBool,
    /// Wakes the watcher when `evict` is set (a waker, not a `Notify`: the watcher is
    /// polled at every wake of its connection, and a `Notify` locks at every poll).
    watcher: AtomicWaker,
    epoch: Instant,
}

/// A slot among `max_connections`: given back (and the connection forgotten) on drop.
pub(crate) struct Slot {
    connections: Arc<Connections>,
    pub(crate) connection: Arc<Connection>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.connection.id);
        self.connections.open.fetch_sub(1, Ordering::AcqRel);
        self.connections.freed.notify_one();
    }
}

impl Connections {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            freed: Notify::new(),
            next_id: AtomicU64::new(0),
            table: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Changes the bound (a reload): connections over a lower bound are not closed, new
    /// ones wait until enough have.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
        self.freed.notify_one();
    }

    /// A slot for a connection just accepted: at once when one is free, else after asking
    /// the connection idle the longest to close (waiting, rechecked every 50 ms, while
    /// none is idle: the clients still unaccepted wait in the listen backlog).
    pub(crate) async fn slot(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let taken = self
                .open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                    (open < self.limit.load(Ordering::Acquire)).then_some(open + 1)
                })
                .is_ok();
            if taken {
                return self.register();
            }
            self.evict_longest_idle();
            let _ = tokio::time::timeout(Duration::from_millis(50), freed).await;
        }
    }

    fn register(self: &Arc<Self>) -> Slot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            active: AtomicU32::new(0),
            reading_head: AtomicBool::new(false),
            since: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            evict: AtomicBool::new(false),
            watcher: AtomicWaker::new(),
            epoch: self.epoch,
        });
        connection.mark(Instant::now());
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&connection));
        Slot {
            connections: Arc::clone(self),
            connection,
        }
    }

    /// Asks the connection idle (or reading a head) the longest to close; false when
    /// every connection is serving a request.
    fn evict_longest_idle(&self) -> bool {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let oldest = table
            .values()
            .filter(|c| c.is_idle() && !c.evicting.load(Ordering::Acquire))
            .min_by_key(|c| c.since.load(Ordering::Acquire))
            .filter(|c| now.saturating_duration_since(c.since()) >= EVICTABLE_AFTER);
        match oldest {
            Some(connection) => {
                connection.evicting.store(true, Ordering::Release);
                connection.evict.store(true, Ordering::Release);
                connection.watcher.wake();
                true
            }
            None => false,
        }
    }
}

impl Connection {
    fn mark(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis();
        self.since
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
    }

    fn since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.since.load(Ordering::Acquire))
    }

    /// No request being served (idle, or reading a head).
    fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// When the connection must close if its phase does not change; `None` while it serves.
    fn deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        if !self.is_idle() {
            return None;
        }
        let allowed = if self.reading_head.load(Ordering::Acquire) {
            timeouts.header_read
        } else {
            timeouts.idle
        };
        Some(self.since() + allowed)
    }

    /// When the watcher looks at the connection next (at `now`): at its deadline, but no
    /// later than one header timeout away while it may begin a head (idle) or serves. A
    /// head that begins after `now` has its deadline at least that far, so the watcher
    /// needs no wake-up when a head begins (one per request): it finds the new deadline at
    /// that look, at the latest.
    fn next_look(&self, timeouts: &Timeouts, now: Instant) -> Instant {
        let recheck = now + timeouts.header_read.min(timeouts.idle);
        match self.deadline(timeouts) {
            Some(deadline) if self.reading_head.load(Ordering::Acquire) => deadline,
            Some(deadline) => deadline.min(recheck),
            None => recheck,
        }
    }

    /// A request handed to the proxy: serving until the returned guard drops.
    pub(crate) fn serving(self: &Arc<Self>) -> Serving {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.reading_head.store(false, Ordering::Release);
        Serving(Arc::clone(self))
    }

    /// Bytes arrived from the client.
    fn received(&self) {
        if self.is_idle() && !self.reading_head.load(Ordering::Acquire) {
            self.mark(Instant::now());
            self.reading_head.store(true, Ordering::Release);
        }
    }
}

/// One request being served; the connection is idle again once every guard is dropped
/// (the guard travels in the response body, which hyper drops once it is sent).
#[derive(Debug)]
pub(crate) struct Serving(Arc<Connection>);

impl Drop for Serving {
    fn drop(&mut self) {
        // The time is read before the count drops: a reader seeing 0 sees the new `since`.
        self.0.mark(Instant::now());
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`Serving`] guard until it is sent.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    body: B,
    _serving: Serving,
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, serving: Serving) -> Self {
        Tracked {
            body,
            _serving: serving,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's socket, noting when a request head begins.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    io: T,
    connection: Arc<Connection>,
}

impl<T> Watched<T> {
    pub(crate) fn new(io: T, connection: Arc<Connection>) -> Self {
        Watched { io, connection }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.connection.received();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The client or hyper closed it (or an error did).
    Closed,
    /// Idle past `idle_timeout`.
    IdleTimeout,
    /// A request head took longer than `header_read_timeout`.
    HeaderTimeout,
    /// Closed to make room for a new client at `max_connections`.
    Evicted,
}

/// Drives `serving` (hyper's connection future) until it ends, or until the connection's
/// phase outlasts its timeout, or until it is evicted while idle; dropping the future
/// closes the socket (no request is being served then).
///
/// Polled at every wake of the connection (each read and write readiness): besides
/// `serving` it costs a few atomic operations and the timer's poll then; a head beginning
/// wakes nothing and moves no timer (see [`Connection::next_look`]).
pub(crate) async fn watch<F: std::future::Future>(
    serving: F,
    connection: &Connection,
    timeouts: Timeouts,
) -> Ended {
    let sleep = tokio::time::sleep_until(connection.next_look(&timeouts, Instant::now()));
    tokio::pin!(serving, sleep);
    std::future::poll_fn(|cx| {
        if serving.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ended::Closed);
        }
        connection.watcher.register(cx.waker());
        if connection.evict.swap(false, Ordering::AcqRel) {
            if connection.is_idle() {
                return Poll::Ready(Ended::Evicted);
            }
            connection.evicting.store(false, Ordering::Release);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if connection.deadline(&timeouts).is_some_and(|d| d <= now) {
                return Poll::Ready(if connection.reading_head.load(Ordering::Acquire) {
                    Ended::HeaderTimeout
                } else {
                    Ended::IdleTimeout
                });
            }
            sleep.as_mut().reset(connection.next_look(&timeouts, now));
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUTS: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    /// A connection served by hyper over an in-memory pipe, answering every request with
    /// "ok"; returns the client's end and the task telling how the connection ended.
    fn serve(
        connections: &Arc<Connections>,
        slot: Slot,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<Ended>) {
        let _ = connections;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let handle = tokio::spawn(async move {
            let connection = Arc::clone(&slot.connection);
            let io = hyper_util::rt::TokioIo::new(Watched::new(server, Arc::clone(&connection)));
            let for_service = Arc::clone(&connection);
            let service = hyper::service::service_fn(move |_request| {
                let serving = for_service.serving();
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Tracked::new(
                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                        serving,
                    )))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            let ended = watch(conn, &connection, TIMEOUTS).await;
            drop(slot);
            ended
        });
        (client, handle)
    }

    async fn request(client: &mut tokio::io::DuplexStream) {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_cut_at_the_header_timeout_from_its_first_byte() {
        let connections = Connections::new(10);
        let slot = connections.slot().await;
        let (mut client, ended) = serve(&connections, slot);
        // Idle first: the header clock has not started.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let started = Instant::now();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        // One header byte every 5 s never completes the head.
        let dripping = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if client.write_all(b"X").await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            ended = ended => assert_eq!(ended.unwrap(), Ended::HeaderTimeout),
            () = dripping => {}
        }
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(connections.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
        let connections = Connections::new(10);
        let slot = connections.slot().await;
        let (mut client, ended) = serve(&connections, slot);
        request(&mut client).await;
        let idle_from = Instant::now();
        tokio::time::sleep(Duration::from_secs(59)).await;
        request(&mut client).await;
        let idle_from_again = Instant::now();
        assert!(idle_from_again - idle_from >= Duration::from_secs(59));
        assert_eq!(ended.await.unwrap(), Ended::IdleTimeout);
        assert_eq!(idle_from_again.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_bound_the_longest_idle_connection_makes_room_and_a_busy_one_does_not() {
        let connections = Connections::new(2);
        let (mut first, first_ended) = serve(&connections, connections.slot().await);
        request(&mut first).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (mut second, second_ended) = serve(&connections, connections.slot().await);
        request(&mut second).await;
        // A third client: the first (idle the longest) is closed for it.
        let third = connections.slot().await;
        assert_eq!(first_ended.await.unwrap(), Ended::Evicted);
        // The third serves a request; the second is idle: a fourth client closes the second.
        let serving = third.connection.serving();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let fourth = connections.slot().await;
        assert_eq!(second_ended.await.unwrap(), Ended::Evicted);
        assert!(!third.connection.evicting.load(Ordering::Acquire));
        let also_serving = fourth.connection.serving();
        // Both slots are busy now: a fifth client waits until one is given back.
        let fifth = tokio::time::timeout(Duration::from_secs(120), connections.slot()).await;
        assert!(fifth.is_err(), "no slot while every connection serves");
        drop((serving, also_serving, fourth));
        let _fifth = connections.slot().await;
        assert_eq!(connections.open(), 2);
    }
}
