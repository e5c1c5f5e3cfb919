"""Checked by mypy --strict in test_typing.py: the stubs describe the API a user calls."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import stormwall
from stormwall import CircuitBreaker, Pipeline


async def fetch(item: str) -> float:
    await asyncio.sleep(0)
    return 1.0


def compute(x: int) -> int:
    return x * 2


@stormwall.retry(max_retries=2, delay="10ms")
async def decorated(item: str) -> float:
    return await fetch(item)


async def main() -> None:
    breaker = CircuitBreaker(consecutive_failures=5, failure_ratio="off")
    pipeline = (
        Pipeline.builder()
        .name("typed")
        .fallback(value=0.0, handle=stormwall.CircuitOpenError)
        .timeout(timedelta(seconds=5))
        .retry(max_retries=3, delay=0.01, handle=(ConnectionError, TimeoutError))
        .circuit_breaker(breaker)
        .bulkhead(max_concurrency=10)
        .rate_limit(permits=100, period="1s")
        .hedging(delay=0.5)
        .timeout(1)
        .build()
    )
    price: float = await pipeline.execute(fetch, "apple")
    doubled: int = pipeline.execute_sync(compute, 21)
    state: str = breaker.state
    other: float = await decorated("pear")
    try:
        await pipeline.execute(fetch, "pear")
    except stormwall.RateLimited as e:
        wait: float = e.retry_after
        print(wait)
    print(price, doubled, state, other)
