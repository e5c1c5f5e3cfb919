"""The exceptions stormwall raises. Every one is a :class:`StormwallError`; those that mean
"a deadline passed" are also :class:`TimeoutError`, and bad options are also
:class:`ValueError` and :class:`TypeError`, so code that catches the standard ones keeps
working."""

from __future__ import annotations

from typing import Any


class StormwallError(Exception):
    """Base class of every error stormwall raises on its own behalf (the operation's own
    exceptions come back as they were raised)."""


class ConfigError(StormwallError, ValueError, TypeError):
    """An option was rejected: unknown, of the wrong type or out of range.

    ``field`` is the option's key path as Rust and the sidecar name it
    (``retry.max_delay``, ``circuit_breaker.failure_ratio``), ``value`` the rejected value,
    ``reason`` what would have been valid."""

    def __init__(self, field: str, value: str, reason: str) -> None:
        super().__init__(f"invalid `{field}` = {value}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.value, self.reason))


class RejectedError(StormwallError):
    """A strategy refused to run the call (the operation did not run)."""


class CircuitOpenError(RejectedError):
    """The circuit breaker is open (or isolated, or out of half-open probes).

    ``retry_after``: seconds until the breaker admits a probe; ``None`` while isolated."""

    def __init__(self, retry_after: float | None) -> None:
        if retry_after is None:
            super().__init__("circuit is isolated")
        else:
            super().__init__(f"circuit is open; retry after {retry_after:.3f}s")
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.retry_after,))


class TimeoutRejected(StormwallError, TimeoutError):
    """A timeout strategy cancelled the operation after ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"operation timed out after {timeout:.3f}s")
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.timeout,))


class BulkheadFull(RejectedError):
    """The bulkhead had no free slot and no queue place."""

    def __init__(self) -> None:
        super().__init__("bulkhead is full")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), ())


class RateLimited(RejectedError):
    """A rate limiter rejected the call; a permit is free in ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:.3f}s")
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.retry_after,))


class BudgetExhausted(RejectedError):
    """A retry was due but the retry budget had none left."""

    def __init__(self) -> None:
        super().__init__("retry budget exhausted")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), ())


class Throttled(RejectedError):
    """Adaptive throttling rejected the call locally."""

    def __init__(self) -> None:
        super().__init__("throttled locally: the dependency is rejecting most calls")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), ())


class FallbackError(StormwallError):
    """The fallback handler itself raised (its exception is ``__cause__``); ``original``
    is the exception the fallback was handling."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"the fallback handler raised while handling {original!r}")
        self.original = original

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.original,))


class RedisUnavailable(StormwallError, ConnectionError):
    """A shared breaker could not reach Redis at ``url`` when it was made."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"redis at {url!r} did not answer: {reason}")
        self.url = url
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.reason))


class InternalError(StormwallError):
    """A bug in stormwall (a Rust panic), caught at the boundary. Please report it."""
