"""Misuse and the user's own callbacks: a plain function given to `execute` (or a coroutine
function to `execute_sync`) raises a TypeError naming the argument at once, never retried,
never counted by a breaker; an exception inside a `handle=` predicate or a delay generator
reaches the caller; one inside an event callback is logged on the `stormwall` logger."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import stormwall
from stormwall import CircuitBreaker, Pipeline


async def quick() -> str:
    return "quick"


class Counted:
    """A plain function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return 1


def retries_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "retry"]


@pytest.mark.asyncio
async def test_a_plain_function_given_to_execute_raises_at_once_and_is_never_retried() -> None:
    breaker = CircuitBreaker(consecutive_failures=1, failure_ratio="off")
    events: list[dict[str, Any]] = []
    p = (
        Pipeline.builder()
        .on_event(events.append)
        .fallback(value="replaced")
        .retry(max_retries=3, delay=0.001)
        .circuit_breaker(breaker)
        .build()
    )
    plain = Counted()
    with pytest.raises(TypeError, match="func must be a coroutine function") as caught:
        await p.execute(plain)  # type: ignore[arg-type]
    assert "returned int" in str(caught.value)
    assert plain.calls == 1, "called once, not once per retry"
    assert retries_of(events) == []
    # One failure would have opened it (consecutive_failures=1): the misuse was not counted,
    # and the admission it held was given back.
    assert breaker.state == "closed"
    assert await p.execute(quick) == "quick"
    # Hedged attempts started at once do not call it again either.
    hedged = Pipeline.builder().hedging(delay="parallel", max_hedged_attempts=2).build()
    plain = Counted()
    with pytest.raises(TypeError, match="func must be a coroutine function"):
        await hedged.execute(plain)  # type: ignore[arg-type]
    assert plain.calls == 1


def test_a_coroutine_function_given_to_execute_sync_raises_without_running_it() -> None:
    ran = []

    async def fetch() -> str:
        ran.append(1)
        return "fetched"

    events: list[dict[str, Any]] = []
    p = Pipeline.builder().on_event(events.append).retry(max_retries=3, delay=0.001).build()
    with pytest.raises(TypeError, match="func must be a plain function for execute_sync"):
        p.execute_sync(fetch)
    assert ran == [] and retries_of(events) == []


@pytest.mark.asyncio
async def test_an_exception_in_a_handle_predicate_reaches_the_caller() -> None:
    def broken(exc: BaseException) -> bool:
        raise LookupError("bug in the predicate")

    calls = 0

    async def fails() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    p = Pipeline.builder().retry(max_retries=3, delay=0.001, handle=broken).build()
    with pytest.raises(LookupError, match="bug in the predicate") as caught:
        await p.execute(fails)
    assert calls == 1
    assert isinstance(caught.value.__context__, ConnectionError)
    # The same from a breaker's predicate (run directly, and through the pipeline when
    # something listens) and a fallback's. The breaker counts the call as failed (the
    # operation did raise): one failure opens it.
    breaker = CircuitBreaker(consecutive_failures=1, failure_ratio="off", handle=broken)
    for p in [
        Pipeline.builder().circuit_breaker(breaker).build(),
        Pipeline.builder().on_event(lambda e: None).circuit_breaker(breaker).build(),
    ]:
        breaker.close()
        with pytest.raises(LookupError):
            await p.execute(fails)
        assert breaker.state == "open"
    with pytest.raises(LookupError):
        await Pipeline.builder().fallback(value="replaced", handle=broken).build().execute(fails)

    def fails_sync() -> None:
        raise ConnectionError("down")

    p = Pipeline.builder().retry(max_retries=3, delay=0.001, handle=broken).build()
    with pytest.raises(LookupError) as caught:
        p.execute_sync(fails_sync)
    assert isinstance(caught.value.__context__, ConnectionError)


@pytest.mark.asyncio
async def test_an_exception_in_a_delay_generator_reaches_the_caller() -> None:
    def broken(exc: BaseException, attempt: int) -> float:
        raise ZeroDivisionError("bug in the generator")

    async def fails() -> None:
        raise ConnectionError("down")

    p = Pipeline.builder().retry(max_retries=3, delay=0.001, delay_generator=broken).build()
    with pytest.raises(ZeroDivisionError, match="bug in the generator"):
        await p.execute(fails)


@pytest.mark.asyncio
async def test_an_exception_in_an_event_callback_is_logged_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise KeyError("bug in the listener")

    breaker = CircuitBreaker(consecutive_failures=1, failure_ratio="off")
    breaker.on_transition(broken)
    p = Pipeline.builder().on_event(broken).circuit_breaker(breaker).build()

    async def fails() -> None:
        raise ConnectionError("down")

    with caplog.at_level(logging.ERROR, logger="stormwall"):
        assert await p.execute(quick) == "quick"
        with pytest.raises(ConnectionError):
            await p.execute(fails)
    assert breaker.state == "open"
    failures = [r for r in caplog.records if r.name == "stormwall" and r.levelno == logging.ERROR]
    assert {r.args[0] for r in failures if isinstance(r.args, tuple)} == {"on_event", "on_transition"}  # type: ignore[index]
    assert all(r.exc_info and isinstance(r.exc_info[1], KeyError) for r in failures)


def test_decorators_recognise_every_kind_of_coroutine_function() -> None:
    # An object with `async def __call__` and a partial of an `async def` are awaited, not
    # handed to execute_sync (which would refuse them).
    import functools

    class Client:
        async def __call__(self, x: int) -> int:
            await asyncio.sleep(0)
            return x

    async def add(x: int, y: int) -> int:
        return x + y

    wrap = stormwall.retry(max_retries=1, delay=0.001)
    client = wrap(Client())
    partial = wrap(functools.partial(add, 1))

    async def run() -> tuple[int, int]:
        return await client(5), await partial(2)

    assert asyncio.run(run()) == (5, 3)


def test_on_transition_refuses_a_non_callable_at_once() -> None:
    breaker = CircuitBreaker(consecutive_failures=1, failure_ratio="off")
    with pytest.raises(TypeError, match="on_transition: callback must be callable, got 3"):
        breaker.on_transition(3)  # type: ignore[arg-type]
    # Nothing was registered: a transition logs nothing.
    breaker.isolate()
    assert breaker.state == "isolated"


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ["x", -1, float("inf"), float("nan"), [1]])
async def test_a_delay_generator_returning_no_delay_ends_the_execution_naming_it(bad: Any) -> None:
    calls: list[int] = []

    def generator(exc: BaseException, attempt: int) -> Any:
        calls.append(attempt)
        return bad

    async def fails() -> None:
        raise ConnectionError("down")

    p = Pipeline.builder().retry(max_retries=3, delay=0.001, delay_generator=generator).build()
    with pytest.raises(stormwall.ConfigError) as caught:
        await p.execute(fails)
    assert caught.value.field == "retry.delay_generator"
    assert caught.value.value == repr(bad)
    assert isinstance(caught.value.__context__, ConnectionError)
    assert len(calls) == 1, "not retried after the bad value"


@pytest.mark.asyncio
async def test_a_delay_generator_returning_none_means_the_computed_delay() -> None:
    async def fails() -> None:
        raise ConnectionError("down")

    p = Pipeline.builder().retry(max_retries=2, delay=0.001, delay_generator=lambda e, a: None).build()
    with pytest.raises(ConnectionError):
        await p.execute(fails)


@pytest.mark.asyncio
async def test_an_event_callback_error_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise KeyError("bug in the listener")

    breaker = CircuitBreaker(consecutive_failures=1, failure_ratio="off")
    breaker.on_transition(broken)
    p = Pipeline.builder().on_event(broken).build()
    with caplog.at_level(logging.ERROR, logger="stormwall"):
        assert await p.execute(quick) == "quick"
        breaker.isolate()
    failures = [r for r in caplog.records if r.name == "stormwall" and r.levelno == logging.ERROR]
    assert {r.args[0] for r in failures if isinstance(r.args, tuple)} == {"on_event", "on_transition"}  # type: ignore[index]
    for record in failures:
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], KeyError)
        assert record.exc_info[2] is not None, "logged without its traceback"
        assert "in broken" in caplog.text


def test_the_builder_and_from_spec_accept_the_same_number_of_strategies() -> None:
    builder = Pipeline.builder()
    for _ in range(8):
        builder.timeout(1.0)
    with pytest.raises(stormwall.ConfigError) as added:
        builder.timeout(1.0)
    assert (added.value.field, added.value.value, added.value.reason) == ("strategies", "9", "at most 8 strategies")
    assert builder.build() is not None
    with pytest.raises(stormwall.ConfigError) as spec:
        Pipeline.from_spec({"strategies": [{"timeout": "1s"}] * 9})
    assert str(spec.value) == str(added.value)
    Pipeline.from_spec({"strategies": [{"timeout": "1s"}] * 8})
