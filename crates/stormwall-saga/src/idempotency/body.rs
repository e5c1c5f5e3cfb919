use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What the layer's responses may fail with while streaming.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// The body of an [`IdempotencyService`](super::IdempotencyService) response: a
    /// stored (or the layer's own) response whole, the handler's body untouched, or the
    /// handler's body after the part the layer read looking for its end (a response over
    /// `max_body_bytes`, which reaches its client in full).
    pub struct IdempotencyBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProjection]
    enum Kind<B> {
        Whole { data: Option<Bytes> },
        Handler { #[pin] body: B },
        Rest { read: VecDeque<Bytes>, rest: Pin<Box<B>> },
    }
}

impl<B> IdempotencyBody<B> {
    /// A body of these bytes.
    pub(crate) fn whole(data: Bytes) -> Self {
        IdempotencyBody {
            kind: Kind::Whole {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// The handler's body, untouched.
    pub(crate) fn handler(body: B) -> Self {
        IdempotencyBody {
            kind: Kind::Handler { body },
        }
    }

    /// `read` (already taken from the handler's body), then the rest of it.
    pub(crate) fn rest(read: VecDeque<Bytes>, rest: Pin<Box<B>>) -> Self {
        IdempotencyBody {
            kind: Kind::Rest { read, rest },
        }
    }
}

impl<B> Body for IdempotencyBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProjection::Whole { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProjection::Handler { body } => body.poll_frame(cx).map_err(Into::into),
            KindProjection::Rest { read, rest } => match read.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => rest.as_mut().poll_frame(cx).map_err(Into::into),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole { data } => data.is_none(),
            Kind::Handler { body } => body.is_end_stream(),
            Kind::Rest { read, rest } => read.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Whole { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Handler { body } => body.size_hint(),
            Kind::Rest { read, rest } => {
                let read: u64 = read.iter().map(|d| d.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + read);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + read);
                }
                hint
            }
        }
    }
}

impl<B> std::fmt::Debug for IdempotencyBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Whole { .. } => "whole",
            Kind::Handler { .. } => "handler",
            Kind::Rest { .. } => "rest",
        };
        f.debug_struct("IdempotencyBody")
            .field("kind", &kind)
            .finish()
    }
}
