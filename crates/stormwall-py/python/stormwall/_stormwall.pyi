"""Type stubs of the Rust extension module (see crates/stormwall-py/src)."""

from collections.abc import Awaitable, Callable, Coroutine, Generator
from datetime import timedelta
from typing import Any, Literal, TypeVar, final

__version__: str

T = TypeVar("T")

#: Seconds, a timedelta, or a humantime string ("200ms", "30s").
Duration = float | int | timedelta | str
#: An exception class, a tuple of them, or a predicate on the exception.
Handle = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
Event = dict[str, Any]
CircuitStateName = Literal["closed", "open", "half_open", "isolated", "disabled"]

@final
class Execution(Awaitable[T]):
    def __await__(self) -> Generator[Any, None, T]: ...
    def send(self, value: None) -> Any: ...
    def throw(self, error: Any, value: Any = ..., traceback: Any = ...) -> Any: ...
    def close(self) -> None: ...

@final
class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_ratio: float | Literal["off"] = ...,
        minimum_throughput: int = ...,
        sampling_duration: Duration = ...,
        sampling_window: Literal["time"] | dict[str, int] = ...,
        consecutive_failures: int | None = ...,
        slow_call: dict[str, Any] | None = ...,
        break_duration: Duration = ...,
        permitted_calls_in_half_open: int = ...,
        success_threshold: int = ...,
        handle: Handle | None = ...,
    ) -> None: ...
    @staticmethod
    def redis(
        url: str,
        *,
        name: str,
        key_prefix: str | None = ...,
        require_connection: bool = ...,
        failure_ratio: float | Literal["off"] = ...,
        minimum_throughput: int = ...,
        sampling_duration: Duration = ...,
        sampling_window: Literal["time"] | dict[str, int] = ...,
        consecutive_failures: int | None = ...,
        slow_call: dict[str, Any] | None = ...,
        break_duration: Duration = ...,
        permitted_calls_in_half_open: int = ...,
        success_threshold: int = ...,
        handle: Handle | None = ...,
    ) -> CircuitBreaker: ...
    @property
    def state(self) -> CircuitStateName: ...
    @property
    def name(self) -> str | None: ...
    @property
    def is_connected(self) -> bool: ...
    def isolate(self) -> None: ...
    def close(self) -> None: ...
    def disable(self) -> None: ...
    def on_transition(self, callback: Callable[[Event], object]) -> None: ...

@final
class PipelineBuilder:
    def __init__(self) -> None: ...
    def name(self, name: str) -> PipelineBuilder: ...
    def on_event(self, callback: Callable[[Event], object]) -> PipelineBuilder: ...
    def log_events(self, enabled: bool = True) -> PipelineBuilder: ...
    def retry(
        self,
        *,
        max_retries: int = ...,
        backoff: Literal["constant", "linear", "exponential"] = ...,
        delay: Duration = ...,
        max_delay: Duration | None = ...,
        jitter: Literal["none", "full", "equal", "decorrelated", "decorrelated_v2"] = ...,
        handle: Handle | None = ...,
        retry_after: bool = ...,
        delay_generator: Callable[[BaseException, int], float | timedelta | None] | None = ...,
    ) -> PipelineBuilder: ...
    def timeout(self, timeout: Duration) -> PipelineBuilder: ...
    def circuit_breaker(
        self,
        breaker: CircuitBreaker | None = None,
        *,
        failure_ratio: float | Literal["off"] = ...,
        minimum_throughput: int = ...,
        sampling_duration: Duration = ...,
        sampling_window: Literal["time"] | dict[str, int] = ...,
        consecutive_failures: int | None = ...,
        slow_call: dict[str, Any] | None = ...,
        break_duration: Duration = ...,
        permitted_calls_in_half_open: int = ...,
        success_threshold: int = ...,
        handle: Handle | None = ...,
    ) -> PipelineBuilder: ...
    def bulkhead(
        self,
        *,
        max_concurrency: int = ...,
        queue_limit: int = ...,
        queue_timeout: Duration | None = ...,
        keyed: bool = ...,
        max_keys: int = ...,
    ) -> PipelineBuilder: ...
    def rate_limit(
        self,
        *,
        permits: int = ...,
        period: Duration = ...,
        burst: int | None = ...,
        algorithm: Literal["gcra", "token_bucket", "fixed_window"] | dict[str, dict[str, int]] = ...,
        keyed: bool = ...,
        max_keys: int = ...,
    ) -> PipelineBuilder: ...
    def hedging(
        self,
        *,
        delay: Duration | Literal["parallel", "fallback"] = ...,
        max_hedged_attempts: int = ...,
        handle: Handle | None = ...,
    ) -> PipelineBuilder: ...
    def fallback(
        self,
        *,
        value: Any = ...,
        handler: Callable[[BaseException], Any] | None = ...,
        handle: Handle | None = ...,
    ) -> PipelineBuilder: ...
    def build(self) -> Pipeline: ...

@final
class Pipeline:
    @staticmethod
    def builder() -> PipelineBuilder: ...
    @staticmethod
    def from_spec(
        spec: dict[str, Any],
        *,
        name: str = "default",
        on_event: Callable[[Event], object] | None = None,
        log_events: bool = False,
    ) -> Pipeline: ...
    def execute(
        self, func: Callable[..., Coroutine[Any, Any, T] | Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> Execution[T]: ...
    def execute_keyed(
        self, key: str, func: Callable[..., Coroutine[Any, Any, T] | Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> Execution[T]: ...
    def execute_sync(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...
    def execute_sync_keyed(self, key: str, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...
    @property
    def name(self) -> str: ...
    @property
    def circuit_breaker(self) -> CircuitBreaker | None: ...

def _panicking_execution() -> Execution[Any]: ...
