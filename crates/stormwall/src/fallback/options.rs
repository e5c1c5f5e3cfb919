use crate::pipeline::OnError;

/// Options of the fallback strategy: what to answer instead (`action`) and when
/// (`should_handle`). There is nothing to validate: both are code.
#[derive(Debug, Clone)]
pub struct FallbackOptions<A, P = OnError> {
    /// Produces the replacement outcome. See [`FallbackValue`](super::FallbackValue) and
    /// [`FallbackFn`](super::FallbackFn).
    pub action: A,
    /// Which outcomes are replaced. Default: [`OnError`] (every `Err`).
    pub should_handle: P,
}

impl<T> FallbackOptions<super::FallbackValue<T>> {
    /// Answers `Ok(value.clone())` instead of a handled outcome.
    pub fn value(value: T) -> Self {
        FallbackOptions {
            action: super::FallbackValue(value),
            should_handle: OnError,
        }
    }
}

impl<F> FallbackOptions<super::FallbackFn<F>> {
    /// Answers what `action(outcome).await` returns instead of a handled outcome.
    /// `action` is any `Fn(Result<T, Error<E>>) -> impl Future<Output = Result<T, Error<E>>>`.
    pub fn with(action: F) -> Self {
        FallbackOptions {
            action: super::FallbackFn(action),
            should_handle: OnError,
        }
    }
}

impl<A> FallbackOptions<A> {
    /// Answers what `action` (any [`FallbackAction`](super::FallbackAction)) produces.
    pub fn action(action: A) -> Self {
        FallbackOptions {
            action,
            should_handle: OnError,
        }
    }
}

impl<A, P> FallbackOptions<A, P> {
    /// Sets [`should_handle`](Self::should_handle): any `Fn(&Result<T, Error<E>>) -> bool`.
    pub fn handle<Q>(self, should_handle: Q) -> FallbackOptions<A, Q> {
        FallbackOptions {
            action: self.action,
            should_handle,
        }
    }
}
