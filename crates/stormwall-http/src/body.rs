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
