"""Success-path cost per call: stormwall against tenacity (retry), pybreaker and aiobreaker
(circuit breaker) and a hand-written asyncio composite, in one process, same run.

Run (a release build; not part of CI):

    python3 -m venv /tmp/bench-venv && . /tmp/bench-venv/bin/activate
    pip install maturin tenacity pybreaker aiobreaker
    (cd crates/stormwall-py && maturin develop --release)
    python crates/stormwall-py/bench/bench.py

Each case runs `CALLS` calls of a function that returns at once, in `ROUNDS` rounds
interleaved with its peer's, and reports the fastest round of each in microseconds per call
(the function's own cost included: see "baseline"), and the ratio peer / stormwall.

Each side is timed through the call user code makes: a peer's decorated function, or
`pipeline.execute(fn)`; where a call needs its argument, both sides get it bound with
`functools.partial` (no Python frame of the harness's own in either).
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from importlib import metadata
from typing import Any, Awaitable, Callable

import aiobreaker
import pybreaker
import tenacity

import stormwall
from stormwall import Pipeline

CALLS = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
ROUNDS = 9


async def ok_async() -> int:
    return 1


def ok_sync() -> int:
    return 1


def time_sync(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        call()
    return (time.perf_counter() - start) / CALLS * 1e6


async def time_async(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        await call()
    return (time.perf_counter() - start) / CALLS * 1e6


async def pair(
    peer: Callable[[], Any], ours: Callable[[], Any], is_async: bool
) -> tuple[float, float]:
    """Rounds of the peer and stormwall interleaved (so a change of load on the machine
    hits both alike); the fastest round of each (the least disturbed)."""
    peer_rounds, our_rounds = [], []
    for _ in range(ROUNDS):
        if is_async:
            peer_rounds.append(await time_async(peer))
            our_rounds.append(await time_async(ours))
        else:
            peer_rounds.append(time_sync(peer))
            our_rounds.append(time_sync(ours))
    return min(peer_rounds), min(our_rounds)


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
    # Retry (success path): the first attempt succeeds.
    retry = Pipeline.builder().retry(max_retries=3, delay=0.001).build()
    wait = tenacity.wait_exponential(0.001)
    tenacity_async = tenacity.retry(stop=tenacity.stop_after_attempt(4), wait=wait)(ok_async)
    tenacity_sync = tenacity.retry(stop=tenacity.stop_after_attempt(4), wait=wait)(ok_sync)
    # Circuit breaker (closed, success path).
    breaker = Pipeline.builder().circuit_breaker(consecutive_failures=5, failure_ratio="off").build()
    aio_call = aiobreaker.CircuitBreaker(fail_max=5)(ok_async)
    py = pybreaker.CircuitBreaker(fail_max=5)
    # Five strategies: rate limit, bulkhead, total timeout, retry, breaker (+ attempt timeout).
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
    bind = functools.partial
    cases = [
        ("retry, async", "tenacity", tenacity_async, bind(retry.execute, ok_async), True),
        ("retry, sync", "tenacity", tenacity_sync, bind(retry.execute_sync, ok_sync), False),
        ("breaker, async", "aiobreaker", aio_call, bind(breaker.execute, ok_async), True),
        ("breaker, sync", "pybreaker", bind(py.call, ok_sync), bind(breaker.execute_sync, ok_sync), False),
        ("5 strategies, async", "hand-written asyncio", bind(hand.call, ok_async),
         bind(composite.execute, ok_async), True),
    ]
    base_async, _ = await pair(ok_async, ok_async, True)
    base_sync, _ = await pair(ok_sync, ok_sync, False)
    peers = ", ".join(f"{p} {metadata.version(p)}" for p in ("tenacity", "pybreaker", "aiobreaker"))
    print(f"stormwall {stormwall.__version__}, {peers}, Python {sys.version.split()[0]}; "
          f"{CALLS} calls x {ROUNDS} interleaved rounds, fastest round; µs per call")
    print(f"{'case':<22}{'peer':<22}{'peer µs':>9}{'stormwall µs':>14}{'ratio':>8}")
    print(f"{'baseline':<22}{'await fn() / fn()':<22}{base_async:>9.2f}{base_sync:>14.2f}")
    for case, peer_name, peer, ours, is_async in cases:
        peer_us, our_us = await pair(peer, ours, is_async)
        print(f"{case:<22}{peer_name:<22}{peer_us:>9.2f}{our_us:>14.2f}{peer_us / our_us:>7.1f}x", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
