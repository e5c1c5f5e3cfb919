//! Request bodies that can be sent again (for retries and hedges).

use bytes::Bytes;

/// A request body that may be cloned for another attempt. `try_clone` returns `None` for
/// a body that cannot be replayed (a stream): such a request is sent once, never retried.
pub trait ReplayBody: Sized {
    /// A copy for another attempt, or `None` when the body cannot be replayed.
    fn try_clone(&self) -> Option<Self>;
}

macro_rules! replay_by_clone {
    ($($ty:ty),*) => {$(
        impl ReplayBody for $ty {
            fn try_clone(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

replay_by_clone!(
    String,
    Vec<u8>,
    Bytes,
    &'static str,
    (),
    http_body_util::Full<Bytes>,
    http_body_util::Empty<Bytes>
);

/// A request taken apart so that each attempt can send it again: the first attempt sends
/// the body itself, later ones copies of a copy made up front.
pub(crate) struct Replay<B> {
    pub(crate) parts: http::request::Parts,
    first: std::sync::Mutex<Option<B>>,
    copy: Option<B>,
}

impl<B: ReplayBody + Default> Replay<B> {
    pub(crate) fn new(request: http::Request<B>) -> Self {
        let (parts, body) = request.into_parts();
        Replay {
            copy: body.try_clone(),
            first: std::sync::Mutex::new(Some(body)),
            parts,
        }
    }

    /// Whether the body can be sent more than once.
    pub(crate) fn replayable(&self) -> bool {
        self.copy.is_some()
    }

    /// The request for the next attempt, to `uri`. A body that cannot be replayed is sent by
    /// the first attempt only (callers then make one attempt; a later one would get an empty
    /// body rather than a panic).
    pub(crate) fn next(&self, uri: http::Uri) -> http::Request<B> {
        let taken = self.first.lock().unwrap_or_else(|e| e.into_inner()).take();
        let body = taken
            .or_else(|| self.copy.as_ref().and_then(ReplayBody::try_clone))
            .unwrap_or_default();
        let mut attempt = http::Request::new(body);
        *attempt.method_mut() = self.parts.method.clone();
        *attempt.uri_mut() = uri;
        *attempt.version_mut() = self.parts.version;
        *attempt.headers_mut() = self.parts.headers.clone();
        attempt
    }
}
