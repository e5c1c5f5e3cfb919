use crate::Error;

/// Decides something about an outcome: whether it is a failure (breaker), worth retrying
/// (retry) or worth replacing (fallback).
///
/// Any `Fn(&Result<T, Error<E>>) -> bool` is a predicate; [`OnError`] is the default.
pub trait Predicate<T, E> {
    /// `true` when the strategy should act on `outcome`.
    fn test(&self, outcome: &Result<T, Error<E>>) -> bool;
}

impl<T, E, F> Predicate<T, E> for F
where
    F: Fn(&Result<T, Error<E>>) -> bool,
{
    fn test(&self, outcome: &Result<T, Error<E>>) -> bool {
        self(outcome)
    }
}

/// The default predicate: every `Err` counts, every `Ok` does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnError;

impl<T, E> Predicate<T, E> for OnError {
    #[inline]
    fn test(&self, outcome: &Result<T, Error<E>>) -> bool {
        outcome.is_err()
    }
}

/// Every `Err` counts except the rejections other strategies make on the caller's behalf
/// (open circuit, full bulkhead, rate limit, exhausted budget): the operation did not run,
/// so there is nothing to learn from — the retry strategy's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnTransientError;

impl<T, E> Predicate<T, E> for OnTransientError {
    #[inline]
    fn test(&self, outcome: &Result<T, Error<E>>) -> bool {
        matches!(outcome, Err(e) if !e.is_rejection())
    }
}
