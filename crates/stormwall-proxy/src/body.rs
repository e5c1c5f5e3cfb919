//! Request bodies on their way to the upstream: streamed, never held whole.
//!
//! [`ClientBody`] is what the client sends, checked as it arrives: over `max_body_bytes` it
//! fails at once (413), too slow it fails (408, `body_timeout` / `body_min_rate`).
//! [`prepare`] keeps up to `retry_buffer_bytes` of it so that a retry can send it again:
//! a body that fits is [`Prepared::Replayable`]; a larger one is [`Prepared::Once`], its
//! first part kept and the rest streamed from the client, sent to one attempt only.

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    /// Longer than `server.max_body_bytes`.
    TooLarge,
    /// Slower than `server.body_timeout` / `server.body_min_rate` allow.
    TooSlow,
    /// The client's framing was broken or the connection ended mid-body.
    Malformed,
}

impl std::fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyFailure::TooLarge => "request body larger than server.max_body_bytes",
            BodyFailure::TooSlow => {
                "request body slower than server.body_timeout / body_min_rate allow"
            }
            BodyFailure::Malformed => "malformed or incomplete request body",
        })
    }
}

impl std::error::Error for BodyFailure {}

/// The limits a request body is read under (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    pub(crate) max_bytes: u64,
    pub(crate) timeout: Duration,
    pub(crate) min_rate: u64,
}

/// The client's request body, checked as it arrives (see the module docs). Its failure,
/// if any, is kept where the request's handler can read it after the upstream call
/// failed on it ([`ClientBody::failure`]).
pub(crate) struct ClientBody {
    inner: Incoming,
    limits: BodyLimits,
    received: u64,
    /// Time spent waiting for the client so far (not counting a wait going on).
    waited: Duration,
    /// When the wait going on began.
    waiting_since: Option<Instant>,
    /// Armed at the first wait (a body that is there at once never needs one).
    timer: Option<Pin<Box<Sleep>>>,
    failure: Arc<OnceLock<BodyFailure>>,
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBody")
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl ClientBody {
    pub(crate) fn new(inner: Incoming, limits: BodyLimits) -> Self {
        ClientBody {
            inner,
            limits,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            failure: Arc::new(OnceLock::new()),
        }
    }

    /// Where the body's failure will be, if it fails.
    pub(crate) fn failure(&self) -> Arc<OnceLock<BodyFailure>> {
        Arc::clone(&self.failure)
    }

    fn fail(&self, why: BodyFailure) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        let _ = self.failure.set(why);
        Poll::Ready(Some(Err(why)))
    }

    /// When the wait that began at `since` becomes too long: no single wait longer than
    /// `timeout`; and once `timeout` has been spent waiting in all, the body must have
    /// come at `min_rate` bytes per second of waiting on average.
    fn deadline(&self, since: Instant) -> Instant {
        let BodyLimits {
            timeout, min_rate, ..
        } = self.limits;
        let allowed_in_all = if min_rate == 0 {
            Duration::MAX
        } else {
            timeout.max(Duration::from_secs_f64(
                self.received as f64 / min_rate as f64,
            ))
        };
        since + timeout.min(allowed_in_all.saturating_sub(self.waited))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyFailure;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        let this = &mut *self;
        if let Some(why) = this.failure.get() {
            return Poll::Ready(Some(Err(*why)));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            let since = *this.waiting_since.get_or_insert_with(Instant::now);
            let deadline = this.deadline(since);
            let timer = match &mut this.timer {
                Some(timer) => {
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    timer
                }
                None => this
                    .timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            if timer.as_mut().poll(cx).is_ready() {
                return this.fail(BodyFailure::TooSlow);
            }
            return Poll::Pending;
        }
        if let Some(since) = this.waiting_since.take() {
            this.waited += since.elapsed();
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limits.max_bytes {
                        return this.fail(BodyFailure::TooLarge);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => this.fail(BodyFailure::Malformed),
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

/// A request body as the route's attempts see it.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// Whole in memory (at most `retry_buffer_bytes`, or none): every attempt sends it.
    Replayable(Bytes),
    /// Larger: the part read so far, then the rest from the client; one attempt only.
    Once(UpstreamBody),
}

/// Reads up to `buffer` bytes of `body` when the request may be retried (`retry`), so
/// that a retry can send it again; otherwise, or when it is larger, it streams once.
pub(crate) async fn prepare(
    mut body: ClientBody,
    buffer: usize,
    retry: bool,
) -> Result<Prepared, BodyFailure> {
    use http_body_util::BodyExt as _;
    if body.is_end_stream() {
        return Ok(Prepared::Replayable(Bytes::new()));
    }
    let exact = body.size_hint().exact();
    let fits = exact.is_none_or(|n| n <= buffer as u64);
    if !retry || !fits {
        if exact.is_some_and(|n| n > body.limits.max_bytes) {
            let _ = body.failure.set(BodyFailure::TooLarge);
            return Err(BodyFailure::TooLarge);
        }
        return Ok(Prepared::Once(UpstreamBody::streamed(Vec::new(), body)));
    }
    let mut kept: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            // Trailers: nothing more to keep (they are not forwarded).
            break;
        };
        size += data.len();
        kept.push(data);
        if size > buffer {
            return Ok(Prepared::Once(UpstreamBody::streamed(kept, body)));
        }
    }
    Ok(Prepared::Replayable(match kept.len() {
        0 => Bytes::new(),
        1 => kept.pop().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(size);
            for part in kept {
                all.extend_from_slice(&part);
            }
            all.freeze()
        }
    }))
}

/// The body of a request sent upstream: bytes in memory, or bytes kept then the rest of
/// the client's body.
pub(crate) struct UpstreamBody(Kind);

enum Kind {
    Full(Option<Bytes>),
    /// Boxed: the request carrying the body is moved a dozen times on its way through
    /// hyper's client, and most bodies are `Full` (a few words).
    Streamed(Box<Streamed>),
}

struct Streamed {
    /// Read before the attempt began, sent first (in order).
    kept: std::vec::IntoIter<Bytes>,
    rest: ClientBody,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Full(_) => "UpstreamBody::Full",
            Kind::Streamed(_) => "UpstreamBody::Streamed",
        })
    }
}

impl UpstreamBody {
    /// A body in memory.
    pub(crate) fn full(bytes: Bytes) -> Self {
        UpstreamBody(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// No body.
    pub(crate) fn empty() -> Self {
        UpstreamBody(Kind::Full(None))
    }

    fn streamed(kept: Vec<Bytes>, rest: ClientBody) -> Self {
        UpstreamBody(Kind::Streamed(Box::new(Streamed {
            kept: kept.into_iter(),
            rest,
        })))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyFailure;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        match &mut self.0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streamed(streamed) => match streamed.kept.next() {
                Some(part) => Poll::Ready(Some(Ok(Frame::data(part)))),
                None => Pin::new(&mut streamed.rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streamed(streamed) => streamed.kept.len() == 0 && streamed.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streamed(streamed) => {
                let kept: u64 = streamed
                    .kept
                    .as_slice()
                    .iter()
                    .map(|b| b.len() as u64)
                    .sum();
                let rest = streamed.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(kept + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(kept + upper);
                }
                hint
            }
        }
    }
}
