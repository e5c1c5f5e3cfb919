//! One proxied connection: two streams (client → upstream, upstream → client), each read
//! by one future and written by another, with the stream's toxics applied in between.
//!
//! Reading and writing are separate so that a delayed chunk does not stop the next one
//! from being read (latency is measured from each chunk's arrival, as Toxiproxy does).
//! The toxic list is read again for every chunk, so adding or removing a toxic changes
//! live connections at the next chunk without losing data.

use crate::toxic::{Stream, Toxic, ToxicKind};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// A toxic as installed on a proxy: `id` changes whenever it is added or updated, so each
/// connection rolls its toxicity dice again for the new version.
#[derive(Debug)]
pub(crate) struct Installed {
    pub id: u64,
    pub toxic: Toxic,
}

/// Every toxic of a proxy, in the order they were added.
pub(crate) type ToxicList = Arc<Vec<Arc<Installed>>>;

/// How a stream (or the whole connection) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The reader saw end of file; the writer passed it on.
    Eof,
    /// A toxic closes the connection (limit_data, timeout).
    Close,
    /// A toxic resets the connection (reset_peer).
    Reset,
}

const CHUNK: usize = 256 * 1024;

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
        let up = stream(client_read, server_write, Stream::Upstream, toxics.clone());
        let down = stream(server_read, client_write, Stream::Downstream, toxics);
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
        // Linger 0 turns the close into a TCP RST.
        #[allow(deprecated)]
        {
            let _ = client.set_linger(Some(Duration::ZERO));
            let _ = server.set_linger(Some(Duration::ZERO));
        }
    }
}

/// One chunk as read, with the moment it arrived.
struct Chunk {
    data: Bytes,
    arrived: Instant,
}

/// Moves one direction: reads into a small queue, writes through the toxics.
async fn stream<R, W>(
    mut reader: R,
    writer: W,
    direction: Stream,
    toxics: watch::Receiver<ToxicList>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel::<Chunk>(4);
    let read = async move {
        let mut buffer = BytesMut::with_capacity(CHUNK);
        loop {
            buffer.reserve(CHUNK);
            match reader.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let chunk = Chunk {
                        data: buffer.split().freeze(),
                        arrived: Instant::now(),
                    };
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = Writer::new(writer, direction, toxics).run(rx);
    let mut write = std::pin::pin!(write);
    tokio::select! {
        // The reader finishing drops the sender; the writer then drains and sees the end.
        _ = read => write.await,
        end = &mut write => end,
    }
}

/// This connection's view of one toxic: whether it applies here, since when, and its
/// running count (limit_data).
#[derive(Debug, Clone, Copy)]
struct Seen {
    active: bool,
    since: Instant,
    passed: u64,
}

/// A step of delivering one chunk.
enum Op {
    Write(Bytes),
    Sleep(Duration),
    SleepUntil(Instant),
    Close,
}

struct Writer<W> {
    writer: W,
    direction: Stream,
    toxics: watch::Receiver<ToxicList>,
    /// Per toxic id: this connection's dice roll and counters.
    seen: HashMap<u64, Seen>,
    /// False once the proxy is gone (no more updates to wait for).
    watching: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    fn new(writer: W, direction: Stream, toxics: watch::Receiver<ToxicList>) -> Self {
        Writer {
            writer,
            direction,
            toxics,
            seen: HashMap::new(),
            watching: true,
        }
    }

    /// The toxics that apply to this stream of this connection now, in order.
    fn active(&mut self) -> Vec<Arc<Installed>> {
        let list = self.toxics.borrow_and_update().clone();
        let now = Instant::now();
        let seen = &mut self.seen;
        seen.retain(|id, _| list.iter().any(|t| t.id == *id));
        list.iter()
            .filter(|t| t.toxic.stream == self.direction)
            .filter(|t| {
                seen.entry(t.id)
                    .or_insert_with(|| Seen {
                        active: t.toxic.toxicity >= 1.0 || fastrand::f64() < t.toxic.toxicity,
                        since: now,
                        passed: 0,
                    })
                    .active
            })
            .cloned()
            .collect()
    }

    /// The earliest moment a timeout or reset_peer toxic ends the connection.
    fn deadline(&self, active: &[Arc<Installed>]) -> Option<(Instant, End)> {
        active
            .iter()
            .filter_map(|t| {
                let since = self.seen.get(&t.id)?.since;
                match t.toxic.kind {
                    ToxicKind::Timeout { timeout } if timeout > 0 => {
                        Some((since + ToxicKind::millis(timeout), End::Close))
                    }
                    ToxicKind::ResetPeer { timeout } => {
                        Some((since + ToxicKind::millis(timeout), End::Reset))
                    }
                    _ => None,
                }
            })
            .min_by_key(|(at, _)| *at)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Chunk>) -> End {
        loop {
            let active = self.active();
            let deadline = self.deadline(&active);
            if let Some((at, end)) = deadline {
                // Checked before waiting: tokio's timer rounds up to the next millisecond, so
                // a deadline already passed could otherwise let a chunk through first.
                if at <= Instant::now() {
                    return end;
                }
            }
            let at = deadline.map_or_else(Instant::now, |(at, _)| at);
            tokio::select! {
                biased;
                _ = sleep_until(at), if deadline.is_some() => {
                    return deadline.map_or(End::Close, |(_, end)| end);
                }
                changed = self.toxics.changed(), if self.watching => {
                    self.watching = changed.is_ok();
                }
                chunk = rx.recv() => match chunk {
                    Some(chunk) => {
                        if let Err(end) = self.deliver(chunk, &active).await {
                            return end;
                        }
                    }
                    None => return self.finish(&active).await,
                },
            }
        }
    }

    /// The stream ended: wait out any slow_close, then pass the end on.
    async fn finish(&mut self, active: &[Arc<Installed>]) -> End {
        let delay = active
            .iter()
            .filter_map(|t| match t.toxic.kind {
                ToxicKind::SlowClose { delay } => Some(ToxicKind::millis(delay)),
                _ => None,
            })
            .max();
        if let Some(delay) = delay {
            sleep(delay).await;
        }
        let _ = self.writer.shutdown().await;
        End::Eof
    }

    async fn deliver(&mut self, chunk: Chunk, active: &[Arc<Installed>]) -> Result<(), End> {
        if active.is_empty() {
            // No toxics: straight through.
            return self
                .writer
                .write_all(&chunk.data)
                .await
                .map_err(|_| End::Close);
        }
        let mut ops = vec![Op::Write(chunk.data)];
        for toxic in active {
            let seen = self.seen.get_mut(&toxic.id);
            ops = apply(&toxic.toxic.kind, ops, chunk.arrived, seen);
        }
        for op in ops {
            match op {
                Op::Write(data) => self.writer.write_all(&data).await.map_err(|_| End::Close)?,
                Op::Sleep(d) => sleep(d).await,
                Op::SleepUntil(at) => sleep_until(at).await,
                Op::Close => {
                    let _ = self.writer.flush().await;
                    return Err(End::Close);
                }
            }
        }
        Ok(())
    }
}

/// One toxic's effect on the steps delivering a chunk: it rewrites the writes and keeps
/// the waits the toxics before it added.
fn apply(kind: &ToxicKind, ops: Vec<Op>, arrived: Instant, seen: Option<&mut Seen>) -> Vec<Op> {
    let mut out = Vec::with_capacity(ops.len() + 2);
    let mut seen = seen;
    for op in ops {
        let Op::Write(data) = op else {
            out.push(op);
            continue;
        };
        match *kind {
            ToxicKind::Latency { latency, jitter } => {
                let mut delay = ToxicKind::millis(latency);
                if jitter > 0 {
                    let j = fastrand::u64(0..=2 * jitter);
                    delay =
                        (delay + ToxicKind::millis(j)).saturating_sub(ToxicKind::millis(jitter));
                }
                out.push(Op::SleepUntil(arrived + delay));
                out.push(Op::Write(data));
            }
            ToxicKind::Bandwidth { rate } if rate > 0 => {
                // rate KB/s = rate × 100 bytes per 100 ms: larger writes go in 100 ms steps.
                let step = (rate * 100) as usize;
                let mut rest = data;
                while rest.len() > step {
                    out.push(Op::Sleep(Duration::from_millis(100)));
                    out.push(Op::Write(rest.split_to(step)));
                }
                let nanos = rest.len() as u64 * 1_000_000 / rate;
                out.push(Op::Sleep(Duration::from_nanos(nanos)));
                out.push(Op::Write(rest));
            }
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay,
            } => {
                let mut rest = data;
                let low = average_size.saturating_sub(size_variation).max(1);
                let high = (average_size + size_variation).max(low);
                while !rest.is_empty() {
                    let size = (fastrand::u64(low..=high) as usize).min(rest.len());
                    out.push(Op::Write(rest.split_to(size)));
                    if !rest.is_empty() && delay > 0 {
                        out.push(Op::Sleep(Duration::from_micros(delay)));
                    }
                }
            }
            ToxicKind::LimitData { bytes } => {
                let Some(seen) = seen.as_deref_mut() else {
                    continue;
                };
                let allowed = bytes.saturating_sub(seen.passed);
                let take = (data.len() as u64).min(allowed) as usize;
                seen.passed += take as u64;
                out.push(Op::Write(data.slice(..take)));
                if seen.passed >= bytes {
                    out.push(Op::Close);
                    break;
                }
            }
            // Data is dropped while a timeout toxic is active.
            ToxicKind::Timeout { .. } => {}
            ToxicKind::Bandwidth { .. }
            | ToxicKind::SlowClose { .. }
            | ToxicKind::ResetPeer { .. } => out.push(Op::Write(data)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(ops: &[Op]) -> Vec<usize> {
        ops.iter()
            .filter_map(|o| match o {
                Op::Write(d) => Some(d.len()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn slicer_keeps_every_byte_in_order() {
        let data = Bytes::from((0..=255u8).cycle().take(10_000).collect::<Vec<_>>());
        let kind = ToxicKind::Slicer {
            average_size: 100,
            size_variation: 40,
            delay: 10,
        };
        let ops = apply(&kind, vec![Op::Write(data.clone())], Instant::now(), None);
        let mut joined = Vec::new();
        for op in &ops {
            if let Op::Write(d) = op {
                assert!((1..=140).contains(&d.len()));
                joined.extend_from_slice(d);
            }
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn limit_data_passes_exactly_the_limit_then_closes() {
        let mut seen = Seen {
            active: true,
            since: Instant::now(),
            passed: 0,
        };
        let kind = ToxicKind::LimitData { bytes: 150 };
        let first = apply(
            &kind,
            vec![Op::Write(Bytes::from(vec![0; 100]))],
            Instant::now(),
            Some(&mut seen),
        );
        assert_eq!(writes(&first), vec![100]);
        let second = apply(
            &kind,
            vec![Op::Write(Bytes::from(vec![0; 100]))],
            Instant::now(),
            Some(&mut seen),
        );
        assert_eq!(writes(&second), vec![50]);
        assert!(matches!(second.last(), Some(Op::Close)));
    }

    #[test]
    fn bandwidth_paces_in_100ms_steps() {
        let kind = ToxicKind::Bandwidth { rate: 10 }; // 1000 bytes per 100 ms
        let ops = apply(
            &kind,
            vec![Op::Write(Bytes::from(vec![0; 2500]))],
            Instant::now(),
            None,
        );
        assert_eq!(writes(&ops), vec![1000, 1000, 500]);
        let slept: Duration = ops
            .iter()
            .map(|o| match o {
                Op::Sleep(d) => *d,
                _ => Duration::ZERO,
            })
            .sum();
        assert_eq!(slept, Duration::from_millis(250));
    }
}
