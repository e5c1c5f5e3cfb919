"""The asyncio pipeline: retry, timeouts, cancellation both ways, bulkhead, rate limiter,
hedging, fallback, events."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import stormwall
from stormwall import Pipeline


class Flaky:
    """Fails `failures` times with `error`, then answers `value`."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError, value: Any = "ok"):
        self.failures = failures
        self.error = error
        self.value = value
        self.calls = 0

    async def __call__(self, *args: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(0)
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return (self.value, args) if args else self.value


class Gate:
    """An operation that answers `value` once released; `entered` is set when it runs."""

    def __init__(self, value: Any = "held") -> None:
        self.value = value
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> Any:
        self.entered.set()
        await self.release.wait()
        return self.value


async def quick() -> str:
    return "quick"


def events_of(kind: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


@pytest.mark.asyncio
async def test_retry_retries_until_success_and_waits_the_configured_delays() -> None:
    events: list[dict[str, Any]] = []
    p = (
        Pipeline.builder()
        .name("payments")
        .on_event(events.append)
        .retry(max_retries=3, delay=0.01, backoff="linear", jitter="none")
        .build()
    )
    flaky = Flaky(2)
    assert await p.execute(flaky, 1, 2) == ("ok", (1, 2))
    assert flaky.calls == 3
    retries = events_of("retry", events)
    assert [r["delay"] for r in retries] == pytest.approx([0.01, 0.02])
    assert all(r["pipeline"] == "payments" and r["strategy"] == "retry" for r in retries)
    assert len(events_of("attempt_completed", events)) == 3


@pytest.mark.asyncio
async def test_retry_gives_up_after_max_retries_with_the_last_exception() -> None:
    p = Pipeline.builder().retry(max_retries=2, delay=0.001).build()
    flaky = Flaky(10)
    with pytest.raises(ConnectionError, match="failure 3"):
        await p.execute(flaky)
    assert flaky.calls == 3


@pytest.mark.asyncio
async def test_retry_handles_only_the_given_exception_types_or_predicate() -> None:
    p = Pipeline.builder().retry(max_retries=3, delay=0.001, handle=(ConnectionError, TimeoutError)).build()
    flaky = Flaky(1, error=ValueError)
    with pytest.raises(ValueError):
        await p.execute(flaky)
    assert flaky.calls == 1
    p = Pipeline.builder().retry(max_retries=3, delay=0.001, handle=lambda e: "retry me" in str(e)).build()

    async def picky() -> str:
        picky.calls += 1  # type: ignore[attr-defined]
        if picky.calls == 1:  # type: ignore[attr-defined]
            raise RuntimeError("retry me")
        raise RuntimeError("final")

    picky.calls = 0  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="final"):
        await p.execute(picky)
    assert picky.calls == 2  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_retry_never_retries_base_exceptions_such_as_cancellation() -> None:
    p = Pipeline.builder().retry(max_retries=3, delay=0.001).build()
    flaky = Flaky(5, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        await p.execute(flaky)
    assert flaky.calls == 1


@pytest.mark.asyncio
async def test_retry_honours_a_retry_after_hint_on_the_exception() -> None:
    class Busy(Exception):
        retry_after = 0.005

    events: list[dict[str, Any]] = []
    p = Pipeline.builder().on_event(events.append).retry(max_retries=1, delay=5, retry_after=True).build()
    flaky = Flaky(1, error=Busy)
    assert await p.execute(flaky) == "ok"
    assert [r["delay"] for r in events_of("retry", events)] == pytest.approx([0.005])
    seen: list[tuple[str, int]] = []

    def generator(exc: BaseException, attempt: int) -> float:
        seen.append((type(exc).__name__, attempt))
        return 0.001

    events.clear()
    p = Pipeline.builder().on_event(events.append).retry(max_retries=2, delay=5, delay_generator=generator).build()
    assert await p.execute(Flaky(2)) == "ok"
    assert seen == [("ConnectionError", 0), ("ConnectionError", 1)]
    assert [r["delay"] for r in events_of("retry", events)] == pytest.approx([0.001, 0.001])


@pytest.mark.asyncio
async def test_a_timeout_cancels_the_coroutine_and_raises_timeout_rejected() -> None:
    seen: list[str] = []

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("finally")

    p = Pipeline.builder().timeout(0.02).build()
    with pytest.raises(stormwall.TimeoutRejected) as caught:
        await p.execute(hangs)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.timeout == pytest.approx(0.02)
    assert seen == ["cancelled", "finally"]


@pytest.mark.asyncio
async def test_attempt_timeouts_are_retried_and_the_total_timeout_bounds_them() -> None:
    started: list[int] = []

    async def hangs() -> None:
        started.append(1)
        await asyncio.Event().wait()

    p = Pipeline.builder().retry(max_retries=2, delay=0.001).timeout(0.01).build()
    with pytest.raises(stormwall.TimeoutRejected):
        await p.execute(hangs)
    assert len(started) == 3
    started.clear()
    p = Pipeline.builder().timeout(0.05).retry(max_retries=1000, delay=0.001, jitter="none", backoff="constant").timeout(0.01).build()
    started_at = time.monotonic()
    with pytest.raises(stormwall.TimeoutRejected) as caught:
        await p.execute(hangs)
    # 1000 attempts of 10 ms would take 11 s.
    assert time.monotonic() - started_at < 5
    # The total timeout ended it (the last attempt's own timeout may report first when both
    # deadlines fall together: the core clamps the attempt's to the total's).
    assert caught.value.timeout in (pytest.approx(0.05), pytest.approx(0.01))
    assert 1 <= len(started) < 1000


@pytest.mark.asyncio
async def test_cancelling_the_caller_cancels_the_running_attempt() -> None:
    entered = asyncio.Event()
    seen: list[str] = []

    async def hangs() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    p = Pipeline.builder().retry(max_retries=3, delay=0.001).timeout(30).build()
    task = asyncio.ensure_future(p.execute(hangs))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]
    # asyncio.wait_for cancels the same way.
    entered.clear()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(p.execute(hangs), 0.01)
    assert seen == ["cancelled", "cancelled"]


@pytest.mark.asyncio
async def test_bulkhead_limits_concurrency_and_queue() -> None:
    p = Pipeline.builder().bulkhead(max_concurrency=2, queue_limit=1).build()
    release = asyncio.Event()
    running = 0
    peak = 0

    async def work() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return "done"

    tasks = [asyncio.ensure_future(p.execute(work)) for _ in range(3)]
    while running < 2:
        await asyncio.sleep(0)
    with pytest.raises(stormwall.BulkheadFull) as caught:
        await p.execute(work)
    assert isinstance(caught.value, stormwall.RejectedError)
    release.set()
    assert await asyncio.gather(*tasks) == ["done"] * 3
    assert peak == 2


@pytest.mark.asyncio
async def test_a_cancelled_call_releases_its_bulkhead_slot() -> None:
    p = Pipeline.builder().bulkhead(max_concurrency=1).build()
    holds = Gate()  # never released
    holder = asyncio.ensure_future(p.execute(holds))
    await holds.entered.wait()
    with pytest.raises(stormwall.BulkheadFull):
        await p.execute(quick)
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert await p.execute(quick) == "quick"


@pytest.mark.asyncio
async def test_rate_limiter_rejects_past_its_quota_per_key() -> None:
    async def ok() -> str:
        return "ok"

    p = Pipeline.builder().rate_limit(permits=2, period=60).build()
    assert [await p.execute(ok) for _ in range(2)] == ["ok", "ok"]
    with pytest.raises(stormwall.RateLimited) as caught:
        await p.execute(ok)
    assert 0 < caught.value.retry_after <= 30
    keyed = Pipeline.builder().rate_limit(permits=1, period=60, keyed=True).build()
    assert await keyed.execute_keyed("tenant-a", ok) == "ok"
    assert await keyed.execute_keyed("tenant-b", ok) == "ok"
    with pytest.raises(stormwall.RateLimited):
        await keyed.execute_keyed("tenant-a", ok)


@pytest.mark.asyncio
async def test_hedging_answers_with_the_first_success_and_cancels_the_loser() -> None:
    seen: list[str] = []
    calls = 0

    async def first_slow() -> str:
        nonlocal calls
        calls += 1
        me = calls
        if me == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("loser cancelled")
                raise
        return f"attempt {me}"

    p = Pipeline.builder().hedging(delay=0.005, max_hedged_attempts=1).build()
    assert await p.execute(first_slow) == "attempt 2"
    assert seen == ["loser cancelled"]


@pytest.mark.asyncio
async def test_fallback_value_handler_and_async_handler() -> None:
    async def fails() -> str:
        raise ConnectionError("down")

    p = Pipeline.builder().fallback(value=None).build()
    assert await p.execute(fails) is None
    p = Pipeline.builder().fallback(handler=lambda e: f"cached ({e})").build()
    assert await p.execute(fails) == "cached (down)"

    async def from_cache(e: BaseException) -> str:
        await asyncio.sleep(0)
        return f"async {type(e).__name__}"

    p = Pipeline.builder().fallback(handler=from_cache, handle=ConnectionError).build()
    assert await p.execute(fails) == "async ConnectionError"
    # Not handled: passes through.
    p = Pipeline.builder().fallback(value="x", handle=ValueError).build()
    with pytest.raises(ConnectionError):
        await p.execute(fails)
    # Covers the strategies' own rejections too, when outermost.
    p = Pipeline.builder().fallback(value="stale").timeout(0.001).build()

    async def hangs() -> None:
        await asyncio.Event().wait()

    assert await p.execute(hangs) == "stale"


@pytest.mark.asyncio
async def test_an_exception_inside_the_fallback_becomes_fallback_error_with_its_cause() -> None:
    async def fails() -> str:
        raise ConnectionError("down")

    def broken(e: BaseException) -> str:
        raise KeyError("no cache")

    p = Pipeline.builder().fallback(handler=broken).build()
    with pytest.raises(stormwall.FallbackError) as caught:
        await p.execute(fails)
    assert isinstance(caught.value.__cause__, KeyError)
    assert isinstance(caught.value.original, ConnectionError)

    async def broken_async(e: BaseException) -> str:
        raise KeyError("no async cache")

    p = Pipeline.builder().fallback(handler=broken_async).build()
    with pytest.raises(stormwall.FallbackError) as caught:
        await p.execute(fails)
    assert isinstance(caught.value.__cause__, KeyError)


@pytest.mark.asyncio
async def test_events_reach_the_logging_module() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("stormwall")
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        p = Pipeline.builder().name("inventory").log_events().retry(max_retries=1, delay=0.001).build()
        await p.execute(Flaky(1))
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert len(messages) == 1 and "stormwall inventory retry" in messages[0], messages
    assert records[0].levelno == logging.INFO


@pytest.mark.asyncio
async def test_the_pipeline_is_reentrant_across_many_concurrent_tasks() -> None:
    p = Pipeline.builder().timeout(10).retry(max_retries=3, delay=0.001).circuit_breaker(consecutive_failures=100, failure_ratio="off").bulkhead(max_concurrency=50, queue_limit=1000).build()

    async def work(i: int) -> int:
        await asyncio.sleep(0)
        if i % 7 == 0 and not hasattr(work, f"failed{i}"):
            setattr(work, f"failed{i}", True)
            raise ConnectionError
        return i

    results = await asyncio.gather(*(p.execute(work, i) for i in range(500)))
    assert results == list(range(500))


@pytest.mark.asyncio
async def test_a_rust_panic_becomes_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rust's panic message still goes to stderr; no backtrace (slow to symbolise).
    monkeypatch.setenv("RUST_BACKTRACE", "0")
    with pytest.raises(stormwall.InternalError, match="deliberate panic"):
        await stormwall._stormwall._panicking_execution()  # type: ignore[attr-defined]
    assert issubclass(stormwall.InternalError, stormwall.StormwallError)


@pytest.mark.asyncio
async def test_half_open_admits_only_the_permitted_probes() -> None:
    breaker = stormwall.CircuitBreaker(consecutive_failures=1, failure_ratio="off", break_duration=0.02,
                                       permitted_calls_in_half_open=1)
    events: list[dict[str, Any]] = []
    p = Pipeline.builder().on_event(events.append).circuit_breaker(breaker).build()
    with pytest.raises(ConnectionError):
        await p.execute(Flaky(1))
    assert breaker.state == "open"
    probe = Gate("probe")
    # Once the break is over, the first call is the probe; while it runs, others are refused.
    deadline = time.monotonic() + 10
    task = None
    while task is None:
        assert time.monotonic() < deadline, "the break did not end"
        candidate = asyncio.ensure_future(p.execute(probe))
        await asyncio.sleep(0)
        if probe.entered.is_set():
            task = candidate
        else:
            with pytest.raises(stormwall.CircuitOpenError):
                await candidate
            await asyncio.sleep(0.005)
    assert breaker.state == "half_open"
    with pytest.raises(stormwall.CircuitOpenError):
        await p.execute(quick)
    probe.release.set()
    assert await task == "probe"
    assert breaker.state == "closed"
    moves = [(e["from"], e["to"]) for e in events if e["event"] == "circuit_transition"]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


@pytest.mark.asyncio
async def test_keyed_bulkhead_limits_each_key_apart() -> None:
    p = Pipeline.builder().bulkhead(max_concurrency=1, keyed=True).build()
    holds = Gate()
    holder = asyncio.ensure_future(p.execute_keyed("tenant-a", holds))
    await holds.entered.wait()
    with pytest.raises(stormwall.BulkheadFull):
        await p.execute_keyed("tenant-a", quick)
    assert await p.execute_keyed("tenant-b", quick) == "quick"
    holds.release.set()
    assert await holder == "held"


@pytest.mark.asyncio
async def test_parallel_hedging_starts_every_attempt_at_once() -> None:
    started: list[int] = []
    release = asyncio.Event()

    async def attempt() -> int:
        me = len(started)
        started.append(me)
        if len(started) == 3:
            release.set()
        await release.wait()
        return me

    p = Pipeline.builder().hedging(delay="parallel", max_hedged_attempts=2).build()
    assert await p.execute(attempt) in (0, 1, 2)
    assert started == [0, 1, 2]


def test_slow_calls_trip_the_breaker() -> None:
    breaker = stormwall.CircuitBreaker(failure_ratio="off", minimum_throughput=2,
                                       slow_call={"duration_threshold": 0.005, "ratio": 1.0})
    p = Pipeline.builder().circuit_breaker(breaker).build()

    def slow() -> str:
        time.sleep(0.01)  # the behaviour under test: a call slower than the threshold
        return "slow"

    for _ in range(2):
        assert p.execute_sync(slow) == "slow"
    assert breaker.state == "open"


@pytest.mark.asyncio
@pytest.mark.parametrize("listened", [False, True], ids=["direct", "through the pipeline"])
async def test_a_lone_breaker_behaves_alike_run_directly_or_through_the_pipeline(listened: bool) -> None:
    # A pipeline of one in-memory breaker that nothing listens to runs it around the
    # coroutine directly (the coroutine's own futures go to the awaiting task); with a
    # listener it runs through the whole pipeline. Both must behave alike: failures open it,
    # an open circuit rejects, one probe at a time in half-open, a cancelled probe gives its
    # slot back, a probe that succeeds closes it.
    breaker = stormwall.CircuitBreaker(consecutive_failures=1, failure_ratio="off", break_duration=0.02,
                                       permitted_calls_in_half_open=1)
    moves: list[tuple[str, str]] = []
    breaker.on_transition(lambda e: moves.append((e["from"], e["to"])))
    builder = Pipeline.builder()
    if listened:
        builder = builder.on_event(lambda e: None)
    p = builder.circuit_breaker(breaker).build()

    async def sleeps() -> str:
        await asyncio.sleep(0.001)
        return "slept"

    assert await p.execute(sleeps) == "slept"
    with pytest.raises(ConnectionError):
        await p.execute(Flaky(1))
    assert breaker.state == "open"
    with pytest.raises(stormwall.CircuitOpenError) as rejected:
        await p.execute(quick)
    assert rejected.value.retry_after is not None

    async def probe_with(gate: Gate) -> asyncio.Future[Any]:
        # Once the break is over, the first call is the probe.
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the break did not end"
            candidate = asyncio.ensure_future(p.execute(gate))
            await asyncio.sleep(0)
            if gate.entered.is_set():
                return candidate
            with pytest.raises(stormwall.CircuitOpenError):
                await candidate
            await asyncio.sleep(0.005)

    cancelled = await probe_with(Gate())
    assert breaker.state == "half_open"
    with pytest.raises(stormwall.CircuitOpenError):
        await p.execute(quick)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    # The cancelled probe's slot is free again: the next call is admitted as the probe.
    probe = Gate("probe")
    task = asyncio.ensure_future(p.execute(probe))
    await probe.entered.wait()
    probe.release.set()
    assert await task == "probe"
    assert breaker.state == "closed"
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


class Resource:
    """An `async with` whose `__aexit__` awaits (a connection closed), recording each step."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    async def __aenter__(self) -> Resource:
        self.seen.append("acquired")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.seen.append("releasing")
        await asyncio.sleep(0.01)  # a real await: a bare yield and a timer
        await asyncio.sleep(0)
        self.seen.append("released")


@pytest.mark.asyncio
async def test_a_timed_out_coroutine_runs_its_awaiting_cleanup_to_the_end_before_the_timeout_answers() -> None:
    seen: list[str] = []

    async def hangs() -> None:
        async with Resource(seen):
            await asyncio.Event().wait()

    p = Pipeline.builder().timeout(0.02).build()
    with pytest.raises(stormwall.TimeoutRejected):
        await p.execute(hangs)
    # As asyncio.wait_for: the answer waits for the cleanup.
    assert seen == ["acquired", "releasing", "released"]
    # Per attempt, retried: each attempt's cleanup ends before the execution answers (the
    # retry may start while the previous attempt's cleanup runs).
    seen.clear()
    p = Pipeline.builder().retry(max_retries=1, delay=0.001).timeout(0.02).build()
    with pytest.raises(stormwall.TimeoutRejected):
        await p.execute(hangs)
    assert sorted(seen) == sorted(["acquired", "releasing", "released"] * 2)


@pytest.mark.asyncio
async def test_cancelling_the_caller_runs_the_attempts_awaiting_cleanup_to_the_end() -> None:
    for p in (
        Pipeline.builder().retry(max_retries=3, delay=0.001).timeout(30).build(),
        # A lone breaker: the coroutine's futures are awaited by the task itself.
        Pipeline.builder().circuit_breaker().build(),
    ):
        entered = asyncio.Event()
        seen: list[str] = []

        async def hangs() -> None:
            async with Resource(seen):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(p.execute(hangs))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # As an asyncio task: the cancellation is raised once the cleanup has ended.
        assert seen == ["acquired", "releasing", "released"]
        assert task.cancelled()
        # The same under asyncio.wait_for.
        seen.clear()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(p.execute(hangs), 0.01)
        assert seen == ["acquired", "releasing", "released"]


@pytest.mark.asyncio
async def test_a_losing_hedge_runs_its_awaiting_cleanup_to_the_end() -> None:
    seen: list[str] = []
    calls = 0

    async def first_slow() -> str:
        nonlocal calls
        calls += 1
        me = calls
        if me == 1:
            async with Resource(seen):
                await asyncio.Event().wait()
        return f"attempt {me}"

    p = Pipeline.builder().hedging(delay=0.005, max_hedged_attempts=1).build()
    assert await p.execute(first_slow) == "attempt 2"
    assert seen == ["acquired", "releasing", "released"]


@pytest.mark.asyncio
async def test_an_exception_raised_by_a_cancelled_attempts_cleanup_reaches_the_loops_handler() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)
            raise OSError("close failed")

    try:
        p = Pipeline.builder().timeout(0.02).build()
        with pytest.raises(stormwall.TimeoutRejected):
            await p.execute(hangs)
    finally:
        loop.set_exception_handler(None)
    assert [type(c.get("exception")) for c in reported] == [OSError]
    assert "cleanup raised" in reported[0]["message"]
