"""stormwall: resilience pipelines for asyncio and plain Python on stormwall's Rust core.

Build a pipeline outer to inner, then run coroutine functions through it::

    import stormwall

    pipeline = (
        stormwall.Pipeline.builder()
        .timeout(30)                                    # total, outermost
        .retry(max_retries=3, delay=0.2, handle=ConnectionError)
        .circuit_breaker(failure_ratio=0.5, minimum_throughput=10)
        .timeout(1)                                     # per attempt
        .build()
    )
    body = await pipeline.execute(fetch, "https://example.test")

Options, defaults and validation are the Rust core's (the same serde types the sidecar's
config file uses); errors name the field (``ConfigError.field == "retry.max_delay"``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

from ._errors import (
    BudgetExhausted,
    BulkheadFull,
    CircuitOpenError,
    ConfigError,
    FallbackError,
    InternalError,
    RateLimited,
    RedisUnavailable,
    RejectedError,
    StormwallError,
    Throttled,
    TimeoutRejected,
)
from ._stormwall import CircuitBreaker, Pipeline, PipelineBuilder, __version__

__all__ = [
    "BudgetExhausted",
    "BulkheadFull",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigError",
    "FallbackError",
    "InternalError",
    "Pipeline",
    "PipelineBuilder",
    "RateLimited",
    "RedisUnavailable",
    "RejectedError",
    "StormwallError",
    "Throttled",
    "TimeoutRejected",
    "__version__",
    "circuit_breaker",
    "pipeline",
    "retry",
    "timeout",
]

F = TypeVar("F", bound=Callable[..., Any])


def _is_coroutine_function(fn: Any) -> bool:
    """``async def`` functions and methods, ``functools.partial`` of them, and objects whose
    ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or (
        not inspect.isroutine(fn) and inspect.iscoroutinefunction(getattr(fn, "__call__", None))
    )


def pipeline(p: Pipeline) -> Callable[[F], F]:
    """Runs every call of the decorated function through ``p``: coroutine functions (``async
    def``, a ``functools.partial`` of one, an object with ``async def __call__``) through
    ``await p.execute``, plain ones through ``p.execute_sync``."""

    def decorate(fn: F) -> F:
        if _is_coroutine_function(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                return await p.execute(fn, *args, **kwargs)

            run_async.pipeline = p  # type: ignore[attr-defined]
            return run_async  # type: ignore[return-value]
        if not callable(fn):
            raise TypeError(f"stormwall decorators wrap functions, not {type(fn).__name__}")

        @functools.wraps(fn)
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            return p.execute_sync(fn, *args, **kwargs)

        run_sync.pipeline = p  # type: ignore[attr-defined]
        return run_sync  # type: ignore[return-value]

    return decorate


def retry(**options: Any) -> Callable[[F], F]:
    """``@stormwall.retry(max_retries=3, delay=0.2, handle=ConnectionError)``: a pipeline of
    one retry (options as :meth:`PipelineBuilder.retry`)."""
    return pipeline(Pipeline.builder().retry(**options).build())


def circuit_breaker(breaker: CircuitBreaker | None = None, **options: Any) -> Callable[[F], F]:
    """``@stormwall.circuit_breaker(consecutive_failures=5)`` or
    ``@stormwall.circuit_breaker(shared_breaker)``: a pipeline of one breaker."""
    return pipeline(Pipeline.builder().circuit_breaker(breaker, **options).build())


def timeout(seconds: Any) -> Callable[[F], F]:
    """``@stormwall.timeout(2.5)``: a pipeline of one timeout (seconds, timedelta or
    ``"2500ms"``)."""
    return pipeline(Pipeline.builder().timeout(seconds).build())
