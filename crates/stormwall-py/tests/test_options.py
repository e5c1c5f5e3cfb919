"""Options: every strategy's validation errors name the field as Rust and the sidecar do,
wrong types and unknown keys included; dicts read as the sidecar's spec."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, Callable

import pytest

import stormwall
from stormwall import CircuitBreaker, Pipeline

B = Pipeline.builder

CASES: list[tuple[str, Callable[[], Any], str, str]] = [
    ("retry max_retries", lambda: B().retry(max_retries=0), "retry.max_retries", "must be ≥ 1"),
    ("retry delay zero", lambda: B().retry(delay=0), "retry.delay", "must be greater than zero"),
    ("retry delay too long", lambda: B().retry(delay=86_401), "retry.delay", "must be ≤ 1 day"),
    ("retry max_delay", lambda: B().retry(delay=1, max_delay=0.5), "retry.max_delay", "must be ≥ delay"),
    ("retry unknown key", lambda: B().retry(max_retrys=2), "retry.max_retrys", "unknown field `max_retrys`"),
    ("retry backoff", lambda: B().retry(backoff="cubic"), "retry.backoff", "unknown variant `cubic`"),
    ("retry jitter", lambda: B().retry(jitter="lots"), "retry.jitter", "unknown variant `lots`"),
    ("retry wrong type", lambda: B().retry(max_retries="3"), "retry.max_retries", "invalid type"),
    ("retry negative delay", lambda: B().retry(delay=-1), "retry.delay", "seconds ≥ 0"),
    ("retry handle", lambda: B().retry(handle="ConnectionError"), "retry.handle", "exception class"),
    ("retry delay_generator", lambda: B().retry(delay_generator=3), "retry.delay_generator", "callable"),
    ("timeout zero", lambda: B().timeout(0), "timeout.timeout", "must be greater than zero"),
    ("timeout text", lambda: B().timeout("soon"), "timeout", "expected a duration"),
    ("breaker failure_ratio", lambda: B().circuit_breaker(failure_ratio=1.5), "circuit_breaker.failure_ratio", "(0, 1]"),
    ("breaker minimum_throughput", lambda: B().circuit_breaker(minimum_throughput=1), "circuit_breaker.minimum_throughput", "must be ≥ 2"),
    ("breaker sampling_duration", lambda: B().circuit_breaker(sampling_duration=0.001), "circuit_breaker.sampling_duration", "≥ 10ms"),
    ("breaker break_duration", lambda: B().circuit_breaker(break_duration=0), "circuit_breaker.break_duration", "greater than zero"),
    ("breaker half-open", lambda: B().circuit_breaker(permitted_calls_in_half_open=0), "circuit_breaker.permitted_calls_in_half_open", "must be ≥ 1"),
    ("breaker slow_call", lambda: B().circuit_breaker(slow_call={"duration_threshold": 1, "ratio": 2}), "circuit_breaker.slow_call.ratio", "(0, 1]"),
    ("breaker nothing trips", lambda: B().circuit_breaker(failure_ratio="off"), "circuit_breaker.failure_ratio", "at least one of"),
    ("breaker count window", lambda: B().circuit_breaker(sampling_window={"count": 5}), "circuit_breaker.sampling_window", "count window"),
    ("breaker unknown key", lambda: CircuitBreaker(threshold=3), "circuit_breaker.threshold", "unknown field `threshold`"),
    ("bulkhead", lambda: B().bulkhead(max_concurrency=0), "bulkhead.max_concurrency", "must be ≥ 1"),
    ("bulkhead queue_timeout", lambda: B().bulkhead(queue_timeout=0), "bulkhead.queue_timeout", "greater than zero"),
    ("bulkhead max_keys", lambda: B().bulkhead(keyed=True, max_keys=0), "bulkhead.max_keys", "≥ 1"),
    ("rate_limit permits", lambda: B().rate_limit(permits=0), "rate_limit.permits", "must be ≥ 1"),
    ("rate_limit period", lambda: B().rate_limit(period=0), "rate_limit.period", "greater than zero"),
    ("rate_limit segments", lambda: B().rate_limit(algorithm={"sliding_window": {"segments": 0}}), "rate_limit.algorithm.segments", "between 1 and 1000"),
    ("hedging attempts", lambda: B().hedging(max_hedged_attempts=11), "hedging.max_hedged_attempts", "must be ≤ 10"),
    ("hedging delay", lambda: B().hedging(delay="sometime"), "hedging.delay", "a duration"),
    ("fallback nothing", lambda: B().fallback(), "fallback", "give one of"),
    ("fallback both", lambda: B().fallback(value=1, handler=print), "fallback", "give one of"),
    ("fallback handler", lambda: B().fallback(handler=3), "fallback.handler", "callable"),
    ("fallback unknown", lambda: B().fallback(value=1, when=ValueError), "fallback.when", "unknown option"),
]


@pytest.mark.parametrize("build,field,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_options_raise_config_error_naming_the_field(build: Callable[[], Any], field: str, reason: str) -> None:
    with pytest.raises(stormwall.ConfigError) as caught:
        build()
    assert caught.value.field == field
    assert reason in str(caught.value), str(caught.value)
    # ConfigError is also the standard ValueError and TypeError.
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)


def test_durations_read_as_seconds_timedelta_or_humantime() -> None:
    for delay in (0.25, datetime.timedelta(milliseconds=250), "250ms"):
        B().retry(delay=delay, max_delay=0.25)
    with pytest.raises(stormwall.ConfigError, match="retry.max_delay"):
        B().retry(delay=datetime.timedelta(seconds=1), max_delay="999ms")


def test_a_spec_dict_builds_like_the_sidecars_config_and_names_key_paths() -> None:
    # A `[pipelines.<name>]` table: its strategies in order, the first the outermost.
    spec = {
        "strategies": [
            {"rate_limit": {"permits": 100, "period": "1s"}},
            {"bulkhead": {"max_concurrency": 10, "queue": 5}},
            {"timeout": "30s"},
            {"retry": {"max_retries": 3, "delay": "200ms", "jitter": "full"}},
            {"circuit_breaker": {"failure_ratio": 0.5, "minimum_throughput": 10}},
            {"timeout": "1s"},
        ]
    }
    p = Pipeline.from_spec(spec, name="payment")
    assert p.name == "payment"
    assert p.circuit_breaker is not None and p.circuit_breaker.state == "closed"

    async def ok() -> int:
        return 1

    assert asyncio.run(_run(p, ok)) == 1
    for bad, field in [
        ([{"retry": {"max_retries": 0}}], "strategies[0].retry.max_retries"),
        ([{"retry": {}}, {"timeout": "0s"}], "strategies[1].timeout"),
        ([{"retry": {"delay": "1s", "max_delay": "10ms"}}], "strategies[0].retry.max_delay"),
        ([{"circuit_breaker": {"failure_ratio": 2}}], "strategies[0].circuit_breaker.failure_ratio"),
    ]:
        with pytest.raises(stormwall.ConfigError) as caught:
            Pipeline.from_spec({"strategies": bad})
        assert caught.value.field == field, (bad, caught.value)
    with pytest.raises(stormwall.ConfigError) as caught:
        Pipeline.from_spec({"retries": {}})
    assert caught.value.field == "retries", caught.value
    # The same error from the builder: one validation, one message (under its position).
    with pytest.raises(stormwall.ConfigError) as from_spec:
        Pipeline.from_spec({"strategies": [{"retry": {"max_retries": 0}}]})
    with pytest.raises(stormwall.ConfigError) as from_kwargs:
        B().retry(max_retries=0)
    assert str(from_spec.value) == str(from_kwargs.value).replace(
        "`retry.", "`strategies[0].retry."
    )


async def _run(p: Pipeline, fn: Any) -> Any:
    return await p.execute(fn)


def test_defaults_are_rusts_a_breaker_waits_for_minimum_throughput_100() -> None:
    breaker = CircuitBreaker()
    p = B().circuit_breaker(breaker).build()

    def fails() -> None:
        raise ConnectionError

    for _ in range(99):
        with pytest.raises(ConnectionError):
            p.execute_sync(fails)
    assert breaker.state == "closed"
    with pytest.raises(ConnectionError):
        p.execute_sync(fails)
    assert breaker.state == "open"


def test_bad_functions_are_rejected_naming_the_argument() -> None:
    p = B().retry(max_retries=1, delay=0.001).build()
    with pytest.raises(TypeError, match="func must be callable"):
        p.execute(42)  # type: ignore[arg-type]

    def plain() -> int:
        return 1

    async def run() -> Any:
        return await p.execute(plain)

    with pytest.raises(TypeError, match="func must be a coroutine function"):
        asyncio.run(run())
    with pytest.raises(TypeError, match="callable"):
        B().on_event(3)  # type: ignore[arg-type]


def test_exceptions_form_a_hierarchy_with_the_standard_ones() -> None:
    assert issubclass(stormwall.TimeoutRejected, TimeoutError)
    assert issubclass(stormwall.RedisUnavailable, ConnectionError)
    for cls in (stormwall.CircuitOpenError, stormwall.BulkheadFull, stormwall.RateLimited,
                stormwall.BudgetExhausted, stormwall.Throttled):
        assert issubclass(cls, stormwall.RejectedError)
        assert issubclass(cls, stormwall.StormwallError)
    for cls in (stormwall.TimeoutRejected, stormwall.ConfigError, stormwall.FallbackError,
                stormwall.InternalError, stormwall.RedisUnavailable):
        assert issubclass(cls, stormwall.StormwallError)


def test_durations_in_error_messages_read_as_people_write_them() -> None:
    # Seconds and timedeltas reach the core as humantime strings it shows back in its
    # messages: "1s 500ms", not "1500000000ns".
    from datetime import timedelta

    for value, text in [(1.5, '"1s 500ms"'), (timedelta(milliseconds=200), '"200ms"'), (0.000_001_5, '"1us 500ns"')]:
        with pytest.raises(stormwall.ConfigError) as caught:
            B().circuit_breaker(slow_call={"duration_threshold": value})
        assert text in str(caught.value), caught.value
    # ...and parse back to the same duration.
    p = B().timeout(0.0123456).build()

    async def hangs() -> None:
        await asyncio.sleep(10)

    with pytest.raises(stormwall.TimeoutRejected) as timed_out:
        asyncio.run(p.execute(hangs))
    assert timed_out.value.timeout == 0.0123456
    assert "0.012s" in str(timed_out.value)
