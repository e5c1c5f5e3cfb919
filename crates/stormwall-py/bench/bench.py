"""Success-path cost per call: stormwall against tenacity (retry), pybreaker and aiobreaker
(circuit breaker) and a hand-written asyncio composite, in one process, same run.

Run (a release build; not part of CI):

    python3 -m venv /tmp/bench-venv && . /tmp/bench-venv/bin/activate
    pip install maturin tenacity pybreaker aiobreaker
    (cd crates/stormwall-py && maturin develop --release)
    python crates/stormwall-py/bench/bench.py

Each case runs `CALLS` calls of a function that returns at once, `ROUNDS` times, and reports
the median microseconds per call (the function's own cost included: see "baseline").
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any, Awaitable, Callable

import aiobreaker
import pybreaker
import tenacity

import stormwall
from stormwall import Pipeline

CALLS = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
ROUNDS = 7


async def ok_async() -> int:
    return 1


def ok_sync() -> int:
    return 1


def measure_sync(call: Callable[[], Any]) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(CALLS):
            call()
        samples.append((time.perf_counter() - start) / CALLS * 1e6)
    return statistics.median(samples)


async def measure_async(call: Callable[[], Awaitable[Any]]) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(CALLS):
            await call()
        samples.append((time.perf_counter() - start) / CALLS * 1e6)
    return statistics.median(samples)


class HandWritten:
    """The seeds' Python pattern, written out by hand: a token bucket, a semaphore bulkhead, a
    consecutive-failure breaker, a retry loop and asyncio.timeout around each attempt, plus a
    total timeout."""

    def __init__(self) -> None:
        self.tokens = 1e9
        self.rate = 1e9
        self.last = time.monotonic()
        self.semaphore = asyncio.Semaphore(1000)
        self.failures = 0
        self.open_until = 0.0

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            raise RuntimeError("rate limited")
        self.tokens -= 1
        if self.semaphore.locked():
            raise RuntimeError("bulkhead full")
        async with self.semaphore:
            async with asyncio.timeout(30):
                for attempt in range(4):
                    if time.monotonic() < self.open_until:
                        raise RuntimeError("circuit open")
                    try:
                        async with asyncio.timeout(10):
                            result = await fn()
                    except Exception:
                        self.failures += 1
                        if self.failures >= 5:
                            self.open_until = time.monotonic() + 30
                        if attempt == 3:
                            raise
                        await asyncio.sleep(0.001 * 2**attempt)
                    else:
                        self.failures = 0
                        return result
        raise AssertionError("unreachable")


async def main() -> None:
    rows: list[tuple[str, float, str | None]] = []

    def row(name: str, micros: float, peer: str | None = None) -> None:
        rows.append((name, micros, peer))
        print(f"{name:<58} {micros:8.2f} µs/call", flush=True)

    row("baseline: await fn()", await measure_async(ok_async))
    row("baseline: fn()", measure_sync(ok_sync))

    # Retry (success path): the first attempt succeeds.
    retry = Pipeline.builder().retry(max_retries=3, delay=0.001).build()
    tenacity_async = tenacity.retry(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential(0.001))(ok_async)
    tenacity_sync = tenacity.retry(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential(0.001))(ok_sync)
    row("tenacity async retry", await measure_async(tenacity_async))
    row("stormwall async retry", await measure_async(lambda: retry.execute(ok_async)), "tenacity async retry")
    row("tenacity sync retry", measure_sync(tenacity_sync))
    row("stormwall sync retry", measure_sync(lambda: retry.execute_sync(ok_sync)), "tenacity sync retry")

    # Circuit breaker (closed, success path).
    breaker = Pipeline.builder().circuit_breaker(consecutive_failures=5, failure_ratio="off").build()
    aio = aiobreaker.CircuitBreaker(fail_max=5)
    aio_call = aio(ok_async)
    py = pybreaker.CircuitBreaker(fail_max=5)
    row("aiobreaker async breaker", await measure_async(aio_call))
    row("stormwall async breaker", await measure_async(lambda: breaker.execute(ok_async)), "aiobreaker async breaker")
    row("pybreaker sync breaker", measure_sync(lambda: py.call(ok_sync)))
    row("stormwall sync breaker", measure_sync(lambda: breaker.execute_sync(ok_sync)), "pybreaker sync breaker")

    # Composite of five strategies (rate limit, bulkhead, total timeout, retry, breaker,
    # attempt timeout).
    composite = (
        Pipeline.builder()
        .rate_limit(permits=1_000_000_000, period=1)
        .bulkhead(max_concurrency=1000)
        .timeout(30)
        .retry(max_retries=3, delay=0.001)
        .circuit_breaker(consecutive_failures=5, failure_ratio="off")
        .timeout(10)
        .build()
    )
    hand = HandWritten()
    row("hand-written asyncio composite (5 strategies)", await measure_async(lambda: hand.call(ok_async)))
    row("stormwall composite (5 strategies)", await measure_async(lambda: composite.execute(ok_async)),
        "hand-written asyncio composite (5 strategies)")

    print()
    print(f"stormwall {stormwall.__version__}, tenacity {tenacity.__version__ if hasattr(tenacity, '__version__') else '?'}, "
          f"pybreaker {pybreaker.__version__ if hasattr(pybreaker, '__version__') else '?'}, Python {sys.version.split()[0]}, "
          f"{CALLS} calls x {ROUNDS} rounds, median")
    by_name = {name: micros for name, micros, _ in rows}
    for name, micros, peer in rows:
        if peer:
            print(f"{name:<40} {by_name[peer] / micros:5.1f}x faster than {peer}")


if __name__ == "__main__":
    asyncio.run(main())
