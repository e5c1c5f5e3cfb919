//! One proxied connection: two streams (client → upstream, upstream → client), each moved
//! by its own future.
//!
//! A stream with no toxic that applies to it takes the fast path ([`relay`]): on Linux the
//! bytes go socket → pipe → socket with `splice(2)` and never enter user space; elsewhere
//! a plain copy. As soon as a toxic applies, the stream switches to the toxic path
//! ([`toxic_path`]): a reader queues each chunk (at most 32 KiB, as Toxiproxy's reads)
//! with the moment it arrived, and a writer passes it through the stream's toxics in the
//! order they were added. Reading and writing are separate so that a delayed chunk does
//! not stop the next one from being read (latency counts from each chunk's arrival, as in
//! Toxiproxy). Either path watches the toxic list: a change applies to the bytes not yet
//! delivered, and switching between the paths loses no byte.
//!
//! Each toxic's semantics follow Toxiproxy's `toxics/*.go`; docs/chaos.md has them one by
//! one.

use crate::toxic::{Stream, Toxic, ToxicKind};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// A toxic as installed on a proxy. `slot` names the toxic for as long as it exists;
/// `version` changes whenever it is added or updated, so each connection rolls its
/// toxicity dice again and restarts its timers for the new version (Toxiproxy re-runs an
/// updated toxic), while per-connection counters (limit_data) carry over.
#[derive(Debug)]
pub(crate) struct Installed {
    pub slot: u64,
    pub version: u64,
    pub toxic: Toxic,
}

/// Every toxic of a proxy, in the order they were added.
pub(crate) type ToxicList = Arc<Vec<Arc<Installed>>>;

/// How a stream (or the whole connection) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The reader saw end of file; the writer passed it on.
    Eof,
    /// A toxic closes the connection (limit_data, timeout).
    Close,
    /// A toxic resets the connection (reset_peer).
    Reset,
}

/// The most the toxic path reads at once: Toxiproxy's `io.Copy` buffer, so slicer,
/// latency and bandwidth see the chunks Toxiproxy's toxics see.
const TOXIC_CHUNK: usize = 32 * 1024;
/// Chunks the toxic path's reader may queue ahead of the writer (2 MiB at most).
const QUEUE: usize = 64;
/// "Never": an instant this far ahead stands for a wait that would overflow.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + by`, saturating at [`FAR`] ahead.
fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by.min(FAR)).unwrap_or(now)
}

/// Proxies `client` to `upstream` until either side ends, a toxic closes it, or `cancel`.
pub(crate) async fn run(
    mut client: TcpStream,
    upstream: String,
    toxics: watch::Receiver<ToxicList>,
    cancel: CancellationToken,
) {
    let mut server = tokio::select! {
        _ = cancel.cancelled() => return,
        connected = TcpStream::connect(&upstream) => match connected {
            Ok(server) => server,
            Err(e) => {
                tracing::debug!(%upstream, error = %e, "chaos: upstream refused; closing the client");
                return;
            }
        },
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = direction(client_read, server_write, Stream::Upstream, toxics.clone());
        let down = direction(server_read, client_write, Stream::Downstream, toxics);
        let (mut up, mut down) = (std::pin::pin!(up), std::pin::pin!(down));
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let ended = tokio::select! {
                _ = cancel.cancelled() => End::Close,
                end = &mut up, if !up_done => { up_done = true; end }
                end = &mut down, if !down_done => { down_done = true; end }
            };
            if ended != End::Eof || (up_done && down_done) {
                break ended;
            }
        }
    };
    if end == End::Reset {
        // Linger 0 turns the close into a TCP RST (Toxiproxy's SetLinger(0)).
        for socket in [&client, &server] {
            let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Moves one stream until it ends, switching between the fast path and the toxic path as
/// toxics come and go.
async fn direction(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    stream: Stream,
    toxics: watch::Receiver<ToxicList>,
) -> End {
    let mut view = View::new(toxics, stream);
    loop {
        if let Err(end) = view.refresh() {
            return end;
        }
        let ended = if view.has_toxics() {
            toxic_path(&mut from, &mut to, &mut view).await
        } else {
            relay(&mut from, &mut to, &mut view).await
        };
        if let Some(end) = ended {
            return end;
        }
    }
}

/// Passes the end of a stream on: the peer reads end of file.
fn shutdown(to: &WriteHalf<'_>) -> End {
    let _ = socket2::SockRef::from(to.as_ref()).shutdown(std::net::Shutdown::Write);
    End::Eof
}

/// This connection's view of one stream's toxics: which apply (each toxic version's
/// toxicity rolled once), since when, their counters, and whether a reset is due.
struct View {
    toxics: watch::Receiver<ToxicList>,
    stream: Stream,
    /// False once the proxy is gone (no more changes to wait for).
    watching: bool,
    /// Per toxic slot on this stream, whether or not it applies.
    seen: HashMap<u64, Seen>,
    /// The toxics that apply, in order; rebuilt by `refresh`.
    active: Vec<Arc<Installed>>,
    /// Set when a reset_peer toxic saw its first data (or the end): the reset happens
    /// then, whatever changes afterwards (Toxiproxy's reset waits without interruption).
    reset_at: Option<Instant>,
}

/// One toxic on one connection.
#[derive(Debug, Clone, Copy)]
struct Seen {
    version: u64,
    /// The toxicity roll for this version.
    active: bool,
    /// When this connection started running this version (timeout counts from here).
    since: Instant,
    /// limit_data: bytes passed so far (kept across updates, as Toxiproxy's state is).
    passed: u64,
    /// bandwidth: nanoseconds of sleep owed (negative: slept too long), carried from
    /// chunk to chunk as Toxiproxy does.
    owed: i128,
    /// Whether it is a timeout toxic: removing one closes the connection.
    timeout: bool,
}

impl Seen {
    fn new(installed: &Installed, now: Instant) -> Self {
        let toxicity = installed.toxic.toxicity;
        Seen {
            version: installed.version,
            active: toxicity >= 1.0 || fastrand::f64() < toxicity,
            since: now,
            passed: 0,
            owed: 0,
            timeout: matches!(installed.toxic.kind, ToxicKind::Timeout { .. }),
        }
    }
}

impl View {
    fn new(toxics: watch::Receiver<ToxicList>, stream: Stream) -> Self {
        View {
            toxics,
            stream,
            watching: true,
            seen: HashMap::new(),
            active: Vec::new(),
            reset_at: None,
        }
    }

    /// Whether the toxic path is needed.
    fn has_toxics(&self) -> bool {
        !self.active.is_empty() || self.reset_at.is_some()
    }

    /// Reads the toxic list again. `Err(Close)` when a timeout toxic of this stream was
    /// removed: Toxiproxy's timeout closes the connection on removal (its `Cleanup`),
    /// whatever its toxicity rolled.
    fn refresh(&mut self) -> Result<(), End> {
        let list = self.toxics.borrow_and_update().clone();
        let stream = self.stream;
        let here = |slot: u64| {
            list.iter()
                .any(|t| t.slot == slot && t.toxic.stream == stream)
        };
        if self.seen.iter().any(|(slot, s)| s.timeout && !here(*slot)) {
            return Err(End::Close);
        }
        self.seen.retain(|slot, _| here(*slot));
        let now = Instant::now();
        self.active.clear();
        for toxic in list.iter().filter(|t| t.toxic.stream == stream) {
            let seen = self
                .seen
                .entry(toxic.slot)
                .or_insert_with(|| Seen::new(toxic, now));
            if seen.version != toxic.version {
                *seen = Seen {
                    passed: seen.passed,
                    ..Seen::new(toxic, now)
                };
            }
            if seen.active {
                self.active.push(Arc::clone(toxic));
            }
        }
        Ok(())
    }

    /// Waits for the next change of the toxic list (forever once the proxy is gone).
    async fn changed(&mut self) {
        if self.watching && self.toxics.changed().await.is_ok() {
            return;
        }
        self.watching = false;
        std::future::pending().await
    }

    /// The earliest moment an applying timeout toxic closes the connection, or the reset.
    fn deadline(&self) -> Option<(Instant, End)> {
        let timeouts = self.active.iter().filter_map(|t| match t.toxic.kind {
            ToxicKind::Timeout { timeout } if timeout > 0 => {
                let since = self.seen.get(&t.slot)?.since;
                Some((later(since, Duration::from_millis(timeout)), End::Close))
            }
            _ => None,
        });
        timeouts
            .chain(self.reset_at.map(|at| (at, End::Reset)))
            .min_by_key(|(at, _)| *at)
    }
}

/// Waits until `deadline` (forever without one).
async fn until(deadline: Option<(Instant, End)>) -> End {
    match deadline {
        Some((at, end)) => {
            sleep_until(at).await;
            end
        }
        None => std::future::pending().await,
    }
}

/// How a stretch of the fast path ended.
enum Relayed {
    /// The stream (or connection) ended.
    Ended(End),
    /// A toxic applies now; every byte read so far has been written.
    Toxics,
    /// splice(2) only: reads got small; every byte read so far has been written.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Small,
}

/// Reacts to a change of the toxic list on the fast path: `Some` to leave it.
fn on_change(view: &mut View) -> Option<Relayed> {
    match view.refresh() {
        Err(end) => Some(Relayed::Ended(end)),
        Ok(()) if view.has_toxics() => Some(Relayed::Toxics),
        Ok(()) => None,
    }
}

/// The fast path: moves bytes as they come until the stream ends (`Some`) or a toxic
/// applies (`None`; every byte read so far has been written).
///
/// Small messages (request/response) are copied through a buffer: one read and one write
/// each, tokio skipping the read that would only say "empty" after a short one. Once a
/// read fills the buffer (a bulk stream), the bytes move by `splice(2)` through a pipe on
/// Linux, never entering user space, until reads get small again.
async fn relay(from: &mut ReadHalf<'_>, to: &mut WriteHalf<'_>, view: &mut View) -> Option<End> {
    let mut buffer = vec![0; COPY_BUFFER];
    #[cfg(target_os = "linux")]
    let mut pipe = None;
    loop {
        let read = tokio::select! {
            biased;
            () = view.changed() => match on_change(view) {
                Some(Relayed::Ended(end)) => return Some(end),
                Some(_) => return None,
                None => continue,
            },
            read = from.read(&mut buffer) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => return Some(shutdown(to)),
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            return Some(End::Close);
        }
        #[cfg(target_os = "linux")]
        if n == buffer.len() {
            if pipe.is_none() {
                pipe = splice::Pipe::new().ok();
            }
            if let Some(pipe) = &pipe {
                match splice::relay(from, to, view, pipe).await {
                    Relayed::Ended(end) => return Some(end),
                    Relayed::Toxics => return None,
                    Relayed::Small => {}
                }
            }
        }
    }
}

/// The fast path's buffer; a read that fills it moves the stream to `splice(2)`.
const COPY_BUFFER: usize = 64 * 1024;

#[cfg(target_os = "linux")]
mod splice {
    //! The Linux fast path: socket → pipe → socket with `splice(2)`.

    use super::{on_change, shutdown, End, Relayed, View};
    use rustix::fd::OwnedFd;
    use rustix::pipe::{self, PipeFlags, SpliceFlags};
    use std::io;
    use tokio::io::Interest;
    use tokio::net::tcp::{ReadHalf, WriteHalf};

    /// Asked of the kernel for each pipe (its default is 64 KiB; the limit for
    /// unprivileged users, `/proc/sys/fs/pipe-max-size`, is 1 MiB by default).
    const PIPE_SIZE: usize = 1024 * 1024;

    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// Its capacity: the most one splice moves.
        size: usize,
    }

    impl Pipe {
        pub(super) fn new() -> io::Result<Self> {
            let (read, write) = pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
            let size = pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
                .or_else(|_| pipe::fcntl_getpipe_size(&write))?;
            Ok(Pipe { read, write, size })
        }
    }

    const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

    /// Below this a splice counts as small: the stream goes back to copying.
    const SMALL: usize = 16 * 1024;

    /// Moves the stream through `pipe`: each splice in is spliced out in full (the pipe
    /// drained) before the next, a switch to the toxic path, or back to copying.
    pub(super) async fn relay(
        from: &mut ReadHalf<'_>,
        to: &mut WriteHalf<'_>,
        view: &mut View,
        pipe: &Pipe,
    ) -> Relayed {
        let (source, sink) = (from.as_ref(), to.as_ref());
        loop {
            // The pipe is empty here, so a `WouldBlock` can only mean "no data yet".
            let read = tokio::select! {
                biased;
                () = view.changed() => match on_change(view) {
                    Some(leave) => return leave,
                    None => continue,
                },
                read = source.async_io(Interest::READABLE, || {
                    Ok(pipe::splice(source, None, &pipe.write, None, pipe.size, FLAGS)?)
                }) => read,
            };
            let mut left = match read {
                Ok(0) | Err(_) => return Relayed::Ended(shutdown(to)),
                Ok(n) => n,
            };
            let small = left < SMALL;
            // The pipe holds `left` bytes, so a `WouldBlock` here means "socket full".
            while left > 0 {
                let written = sink
                    .async_io(Interest::WRITABLE, || {
                        Ok(pipe::splice(&pipe.read, None, sink, None, left, FLAGS)?)
                    })
                    .await;
                match written {
                    Ok(n) if n > 0 => left -= n,
                    _ => return Relayed::Ended(End::Close),
                }
            }
            if small {
                return Relayed::Small;
            }
        }
    }
}

/// One chunk as read, with the moment it arrived.
struct Chunk {
    data: Bytes,
    arrived: Instant,
}

/// The toxic path: runs until the stream ends (`Some`) or no toxic applies any more and
/// every queued byte has been delivered (`None`).
async fn toxic_path(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    view: &mut View,
) -> Option<End> {
    let (tx, rx) = mpsc::channel::<Chunk>(QUEUE);
    let stop = Notify::new();
    let read = async {
        // Owned here, so the writer sees the end of the queue when the reader returns.
        let tx = tx;
        let mut buffer = vec![0; TOXIC_CHUNK];
        loop {
            let read = tokio::select! {
                biased;
                () = stop.notified() => return,
                read = from.read(&mut buffer) => read,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let chunk = Chunk {
                        data: Bytes::copy_from_slice(&buffer[..n]),
                        arrived: Instant::now(),
                    };
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = Writer { to, view }.run(rx, &stop);
    let mut write = std::pin::pin!(write);
    tokio::select! {
        // The reader finishing drops the sender; the writer then drains and sees the end.
        () = read => write.await,
        end = &mut write => end,
    }
}

/// The toxic path's writer: delivers each queued chunk through the toxics.
struct Writer<'a, 'b> {
    to: &'a mut WriteHalf<'b>,
    view: &'a mut View,
}

impl Writer<'_, '_> {
    async fn run(mut self, mut rx: mpsc::Receiver<Chunk>, stop: &Notify) -> Option<End> {
        // Set once no toxic applies: the reader was told to stop, and when the queue is
        // drained the stream goes back to the fast path.
        let mut leaving = false;
        loop {
            if !leaving && !self.view.has_toxics() {
                leaving = true;
                stop.notify_one();
            }
            let deadline = self.view.deadline();
            if let Some((at, end)) = deadline {
                // Checked before waiting: tokio's timer rounds up to the next millisecond,
                // so a deadline already passed could otherwise let a chunk through first.
                if at <= Instant::now() {
                    return Some(end);
                }
            }
            tokio::select! {
                biased;
                end = until(deadline) => return Some(end),
                () = self.view.changed() => {
                    if let Err(end) = self.view.refresh() {
                        return Some(end);
                    }
                }
                chunk = rx.recv() => match chunk {
                    Some(chunk) => {
                        if let Err(end) = self.deliver(chunk).await {
                            return Some(end);
                        }
                    }
                    None if leaving => return None,
                    None => return Some(self.finish().await),
                },
            }
        }
    }

    /// Passes one chunk through the toxics. When the list changes mid-way, the bytes not
    /// yet delivered go through the new list (with the chunk's arrival time), so a removed
    /// toxic stops holding them at once and none is lost.
    async fn deliver(&mut self, chunk: Chunk) -> Result<(), End> {
        let mut piece = Piece {
            data: chunk.data,
            at: chunk.arrived,
        };
        loop {
            match self.through(piece).await? {
                None => return Ok(()),
                Some(rest) => {
                    self.view.refresh()?;
                    if rest.is_empty() {
                        return Ok(());
                    }
                    piece = Piece {
                        data: rest,
                        at: chunk.arrived,
                    };
                }
            }
        }
    }

    /// Runs `piece` through the toxics that apply now. `Some(rest)`: the list changed,
    /// and `rest` are the bytes not yet delivered, in order.
    async fn through(&mut self, piece: Piece) -> Result<Option<Bytes>, End> {
        let chain = self.view.active.clone();
        let mut stages = Vec::with_capacity(chain.len());
        match chain.first() {
            Some(first) => stages.push(Stage::new(&first.toxic.kind, piece)),
            None => return self.write(&piece.data).await.map(|()| None),
        }
        while !stages.is_empty() {
            let index = stages.len() - 1;
            let stage = &mut stages[index];
            let installed = &chain[index];
            let Some(seen) = self.view.seen.get_mut(&installed.slot) else {
                return Err(End::Close);
            };
            let step = stage.next(&installed.toxic.kind, seen, &mut self.view.reset_at);
            let wait = match step {
                None => {
                    stages.pop();
                    continue;
                }
                Some(Step::Emit(piece)) => {
                    match chain.get(index + 1) {
                        Some(next) => stages.push(Stage::new(&next.toxic.kind, piece)),
                        None => self.write(&piece.data).await?,
                    }
                    continue;
                }
                Some(Step::Close) => return Err(End::Close),
                // Already due: no trip through the timer (which rounds up to 1 ms).
                Some(Step::Until(at)) if at <= Instant::now() => continue,
                Some(Step::Until(at)) => Some(at),
                Some(Step::Hold) => None,
            };
            // Fresh: a reset triggered by this chunk moves the deadline closer.
            let deadline = self.view.deadline();
            let waited = tokio::select! {
                biased;
                end = until(deadline) => return Err(end),
                () = self.view.changed() => false,
                () = wait_until(wait) => true,
            };
            if !waited {
                return Ok(Some(rest(&stages)));
            }
        }
        Ok(None)
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), End> {
        let deadline = self.view.deadline();
        tokio::select! {
            biased;
            end = until(deadline) => Err(end),
            written = self.to.write_all(data) => written.map_err(|_| End::Close),
        }
    }

    /// The stream ended: the end passes through the toxics in order, as Toxiproxy's `nil`
    /// chunk does. slow_close waits its delay; reset_peer takes the end as its first data
    /// (and resets after its timeout); the others pass it on at once.
    async fn finish(&mut self) -> End {
        let chain = self.view.active.clone();
        for installed in &chain {
            match installed.toxic.kind {
                ToxicKind::SlowClose { delay } => {
                    let at = later(Instant::now(), Duration::from_millis(delay));
                    if let Some(end) = self.wait(at).await {
                        return end;
                    }
                }
                ToxicKind::ResetPeer { timeout } => {
                    let now = Instant::now();
                    self.view
                        .reset_at
                        .get_or_insert_with(|| later(now, Duration::from_millis(timeout)));
                    break;
                }
                _ => {}
            }
        }
        if let Some(at) = self.view.reset_at {
            sleep_until(at).await;
            return End::Reset;
        }
        shutdown(self.to)
    }

    /// Sleeps until `at` unless a reset falls due first.
    async fn wait(&mut self, at: Instant) -> Option<End> {
        let reset = self.view.reset_at.map(|at| (at, End::Reset));
        tokio::select! {
            biased;
            end = until(reset) => Some(end),
            () = sleep_until(at) => None,
        }
    }
}

async fn wait_until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Bytes on their way through the toxics, with their timestamp: when they arrived,
/// moved on by each latency toxic they passed (as Toxiproxy's chunk timestamps are).
#[derive(Debug, Clone)]
struct Piece {
    data: Bytes,
    at: Instant,
}

/// What a toxic does next with the bytes it holds.
#[derive(Debug)]
enum Step {
    /// Pass these on to the next toxic (or the socket).
    Emit(Piece),
    /// Wait until then (or until the toxic list changes).
    Until(Instant),
    /// Wait until the toxic list changes.
    Hold,
    /// Close the connection.
    Close,
}

/// One toxic working on one piece; `next` gives its steps in order, `None` when done.
#[derive(Debug)]
enum Stage {
    /// latency: wait until the piece's time plus the delay, then pass it on.
    Latency { piece: Option<Piece>, waited: bool },
    /// bandwidth: `rest` still to pass; `step` is the wait under way (when it began,
    /// whether it is the last one).
    Bandwidth {
        rest: Bytes,
        at: Instant,
        started: bool,
        step: Option<(Instant, bool)>,
    },
    /// slicer: the piece, the ranges still to pass (last = next), whether a delay is due.
    Slicer {
        data: Bytes,
        at: Instant,
        ranges: Vec<(usize, usize)>,
        delay_due: bool,
    },
    /// limit_data: the piece; `closing` once the limit is reached.
    LimitData { piece: Option<Piece>, closing: bool },
    /// slow_close passes data untouched.
    Pass(Option<Piece>),
    /// timeout drops data; reset_peer drops it and starts the reset's clock.
    Drop(Option<Piece>),
}

impl Stage {
    fn new(kind: &ToxicKind, piece: Piece) -> Self {
        match *kind {
            ToxicKind::Latency { .. } => Stage::Latency {
                piece: Some(piece),
                waited: false,
            },
            ToxicKind::Bandwidth { .. } => Stage::Bandwidth {
                rest: piece.data,
                at: piece.at,
                started: false,
                step: None,
            },
            ToxicKind::Slicer { .. } => {
                let len = piece.data.len();
                Stage::Slicer {
                    data: piece.data,
                    at: piece.at,
                    ranges: vec![(0, len)],
                    delay_due: false,
                }
            }
            ToxicKind::LimitData { .. } => Stage::LimitData {
                piece: Some(piece),
                closing: false,
            },
            ToxicKind::SlowClose { .. } => Stage::Pass(Some(piece)),
            ToxicKind::Timeout { .. } | ToxicKind::ResetPeer { .. } => Stage::Drop(Some(piece)),
        }
    }

    fn next(
        &mut self,
        kind: &ToxicKind,
        seen: &mut Seen,
        reset_at: &mut Option<Instant>,
    ) -> Option<Step> {
        match (self, *kind) {
            // Toxiproxy: sleep latency ± jitter (uniform in [-jitter, jitter)) counted from
            // the chunk's timestamp, then move the timestamp on by it.
            (Stage::Latency { piece, waited }, ToxicKind::Latency { latency, jitter }) => {
                let p = piece.as_mut()?;
                if !*waited {
                    *waited = true;
                    p.at = later(p.at, jittered(latency, jitter));
                    return Some(Step::Until(p.at));
                }
                piece.take().map(Step::Emit)
            }
            (
                Stage::Bandwidth {
                    rest,
                    at,
                    started,
                    step,
                },
                ToxicKind::Bandwidth { rate },
            ) => bandwidth(rest, *at, started, step, rate, seen),
            (
                Stage::Slicer {
                    data,
                    at,
                    ranges,
                    delay_due,
                },
                ToxicKind::Slicer {
                    average_size,
                    size_variation,
                    delay,
                },
            ) => {
                // Toxiproxy sleeps `delay` µs after every slice, the last one too.
                if *delay_due {
                    *delay_due = false;
                    return Some(Step::Until(later(
                        Instant::now(),
                        Duration::from_micros(delay),
                    )));
                }
                let (start, end) = next_slice(ranges, average_size, size_variation)?;
                *delay_due = delay > 0;
                Some(Step::Emit(Piece {
                    data: data.slice(start..end),
                    at: *at,
                }))
            }
            // Toxiproxy: pass what fits under the limit, then close once it is reached.
            (Stage::LimitData { piece, closing }, ToxicKind::LimitData { bytes }) => {
                if *closing {
                    return Some(Step::Close);
                }
                let mut p = piece.take()?;
                let allowed = bytes.saturating_sub(seen.passed);
                let take = usize::try_from(allowed).map_or(p.data.len(), |a| a.min(p.data.len()));
                p.data.truncate(take);
                seen.passed = seen.passed.saturating_add(take as u64);
                if seen.passed >= bytes {
                    *closing = true;
                }
                if take == 0 {
                    return (*closing).then_some(Step::Close);
                }
                Some(Step::Emit(p))
            }
            (Stage::Drop(piece), ToxicKind::ResetPeer { timeout }) => {
                piece.take()?;
                // The first data starts the clock; it and all that follows are dropped.
                if reset_at.is_none() {
                    *reset_at = Some(later(Instant::now(), Duration::from_millis(timeout)));
                }
                None
            }
            (Stage::Drop(piece), _) => {
                piece.take();
                None
            }
            (Stage::Pass(piece), _) => piece.take().map(Step::Emit),
            // A stage always runs with the kind it was made for.
            _ => None,
        }
    }

    /// The bytes this stage holds and has not passed on yet.
    fn rest(&self) -> Bytes {
        match self {
            Stage::Latency { piece, .. } | Stage::LimitData { piece, .. } | Stage::Pass(piece) => {
                piece.as_ref().map(|p| p.data.clone()).unwrap_or_default()
            }
            Stage::Bandwidth { rest, .. } => rest.clone(),
            Stage::Slicer { data, ranges, .. } => match ranges.last() {
                Some(&(start, _)) => data.slice(start..),
                None => Bytes::new(),
            },
            Stage::Drop(_) => Bytes::new(),
        }
    }
}

/// The bytes not yet delivered by a stack of stages, in stream order (the last stage
/// holds the earliest bytes).
fn rest(stages: &[Stage]) -> Bytes {
    let mut rest = BytesMut::new();
    for stage in stages.iter().rev() {
        rest.extend_from_slice(&stage.rest());
    }
    rest.freeze()
}

/// latency ± jitter, as Toxiproxy: `latency + rand(2 × jitter) − jitter`, never below 0.
fn jittered(latency: u64, jitter: u64) -> Duration {
    let latency = i128::from(latency);
    let jitter = i128::from(jitter);
    let delay = if jitter > 0 {
        latency
            + i128::from(fastrand::u64(
                0..u64::try_from(2 * jitter).unwrap_or(u64::MAX),
            ))
            - jitter
    } else {
        latency
    };
    Duration::from_millis(u64::try_from(delay.max(0)).unwrap_or(u64::MAX))
}

/// Toxiproxy's bandwidth, step by step: each chunk adds `len / rate` ms to the sleep owed;
/// while more than `rate × 100` bytes remain, wait 100 ms and pass that many; then wait
/// what is owed and pass the rest, carrying any oversleep to the next chunk. Rate 0
/// holds the data (Toxiproxy's loop never passes it) until the toxic changes.
fn bandwidth(
    rest: &mut Bytes,
    at: Instant,
    started: &mut bool,
    step: &mut Option<(Instant, bool)>,
    rate: u64,
    seen: &mut Seen,
) -> Option<Step> {
    const STEP: Duration = Duration::from_millis(100);
    if rate == 0 {
        return if rest.is_empty() {
            None
        } else {
            Some(Step::Hold)
        };
    }
    let now = Instant::now();
    if !*started {
        *started = true;
        seen.owed += rest.len() as i128 * 1_000_000 / i128::from(rate);
    }
    let per_step = usize::try_from(rate.saturating_mul(100)).unwrap_or(usize::MAX);
    match step.take() {
        // A wait is over: pass what it was for.
        Some((began, last)) => {
            if last {
                seen.owed -= (now - began).as_nanos() as i128;
                let piece = std::mem::take(rest);
                return (!piece.is_empty()).then_some(Step::Emit(Piece { data: piece, at }));
            }
            seen.owed -= STEP.as_nanos() as i128;
            let data = rest.split_to(per_step);
            Some(Step::Emit(Piece { data, at }))
        }
        None if rest.is_empty() => None,
        None if rest.len() > per_step => {
            *step = Some((now, false));
            Some(Step::Until(now + STEP))
        }
        None => {
            *step = Some((now, true));
            let owed = u64::try_from(seen.owed.max(0)).unwrap_or(u64::MAX);
            Some(Step::Until(later(now, Duration::from_nanos(owed))))
        }
    }
}

/// Toxiproxy's slicer: a range within `average_size + size_variation` bytes (or smaller
/// than the average) is one slice; a larger one splits near its middle (± the variation)
/// and each half is sliced again. Saturating where Toxiproxy would panic: a split always
/// leaves both halves at least one byte, and a zero variation splits at the middle.
fn next_slice(
    ranges: &mut Vec<(usize, usize)>,
    average_size: u64,
    size_variation: u64,
) -> Option<(usize, usize)> {
    loop {
        let (start, end) = ranges.pop()?;
        let len = (end - start) as u64;
        if len <= 1 || len.saturating_sub(average_size) <= size_variation {
            return Some((start, end));
        }
        let variation = i128::from(size_variation);
        let offset = if variation > 0 {
            fastrand::i128(-variation..variation)
        } else {
            0
        };
        let mid = (start as i128 + (len / 2) as i128 + offset)
            .clamp(start as i128 + 1, end as i128 - 1) as usize;
        ranges.push((mid, end));
        ranges.push((start, mid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> Seen {
        Seen {
            version: 0,
            active: true,
            since: Instant::now(),
            passed: 0,
            owed: 0,
            timeout: false,
        }
    }

    fn piece(len: usize) -> Piece {
        Piece {
            data: Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>()),
            at: Instant::now(),
        }
    }

    /// Runs a stage to the end, not waiting: the emitted sizes and the waits.
    fn steps(kind: &ToxicKind, piece: Piece, seen: &mut Seen) -> (Vec<Bytes>, Vec<Step>) {
        let mut stage = Stage::new(kind, piece);
        let mut reset = None;
        let (mut out, mut other) = (Vec::new(), Vec::new());
        while let Some(step) = stage.next(kind, seen, &mut reset) {
            match step {
                Step::Emit(p) => out.push(p.data),
                Step::Close => {
                    other.push(step);
                    break;
                }
                Step::Hold => {
                    other.push(step);
                    break;
                }
                step => other.push(step),
            }
            if out.len() + other.len() > 1_000_000 {
                panic!("a stage that never ends");
            }
        }
        (out, other)
    }

    #[test]
    fn slicer_keeps_every_byte_in_order_within_the_sizes() {
        let kind = ToxicKind::Slicer {
            average_size: 100,
            size_variation: 40,
            delay: 0,
        };
        let p = piece(10_000);
        let (out, _) = steps(&kind, p.clone(), &mut seen());
        assert!(
            out.iter().all(|s| (1..=140).contains(&s.len())),
            "{:?}",
            out.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert_eq!(out.concat(), p.data);
    }

    #[test]
    fn slicer_of_zero_sizes_slices_single_bytes_instead_of_looping() {
        for (average_size, size_variation) in [(0, 0), (1, 0), (0, u64::MAX), (u64::MAX, u64::MAX)]
        {
            let kind = ToxicKind::Slicer {
                average_size,
                size_variation,
                delay: u64::MAX,
            };
            let p = piece(300);
            let (out, _) = steps(&kind, p.clone(), &mut seen());
            assert_eq!(out.concat(), p.data, "{average_size} {size_variation}");
        }
    }

    #[test]
    fn limit_data_passes_exactly_the_limit_then_closes() {
        let kind = ToxicKind::LimitData { bytes: 150 };
        let mut s = seen();
        let (out, other) = steps(&kind, piece(100), &mut s);
        assert_eq!(out.iter().map(Bytes::len).collect::<Vec<_>>(), vec![100]);
        assert!(other.is_empty());
        let (out, other) = steps(&kind, piece(100), &mut s);
        assert_eq!(out.iter().map(Bytes::len).collect::<Vec<_>>(), vec![50]);
        assert!(matches!(other.last(), Some(Step::Close)));
        let (out, other) = steps(&ToxicKind::LimitData { bytes: 0 }, piece(10), &mut seen());
        assert!(out.is_empty());
        assert!(matches!(other.last(), Some(Step::Close)));
    }

    #[test]
    fn bandwidth_paces_in_100ms_steps_and_saturates_huge_rates() {
        let kind = ToxicKind::Bandwidth { rate: 10 }; // 1000 bytes per 100 ms
        let (out, waits) = steps(&kind, piece(2500), &mut seen());
        assert_eq!(
            out.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        assert_eq!(waits.len(), 3);
        for rate in [1 << 62, u64::MAX] {
            let (out, _) = steps(&ToxicKind::Bandwidth { rate }, piece(10), &mut seen());
            assert_eq!(out.iter().map(Bytes::len).collect::<Vec<_>>(), vec![10]);
        }
        let (out, waits) = steps(&ToxicKind::Bandwidth { rate: 0 }, piece(10), &mut seen());
        assert!(out.is_empty());
        assert!(matches!(waits.last(), Some(Step::Hold)));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_never_overflows() {
        for _ in 0..1000 {
            let d = jittered(10, 5);
            assert!(
                d >= Duration::from_millis(5) && d < Duration::from_millis(15),
                "{d:?}"
            );
        }
        let _ = jittered(u64::MAX, u64::MAX);
        let _ = later(Instant::now(), Duration::MAX);
    }
}
