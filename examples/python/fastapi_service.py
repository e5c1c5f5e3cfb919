"""A FastAPI service calling a flaky payment provider through a stormwall pipeline, with
health endpoints driven by its circuit breaker (the seeds' Python pattern).

    pip install fastapi uvicorn
    uvicorn fastapi_service:app            # REDIS_URL=redis://127.0.0.1:6379 to share the breaker

- ``POST /charge``: the provider call, through total timeout → retry → breaker → attempt
  timeout; an open circuit answers 503 with ``Retry-After`` instead of waiting.
- ``GET /health/live``: 200 while the process runs (a breaker never restarts a pod).
- ``GET /health/ready``: 503 while the payments breaker is open or isolated, so the load
  balancer sends traffic to replicas that can serve it.
- ``GET /health``: every breaker's state, as JSON.
- ``POST /admin/payments/{isolate,close}``: manual control (on every replica when shared).
"""

from __future__ import annotations

import asyncio
import math
import os
import random

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

import stormwall
from stormwall import CircuitBreaker, Pipeline

BREAKER_OPTIONS = dict(failure_ratio=0.5, minimum_throughput=10, sampling_duration=10, break_duration=5)

if os.environ.get("REDIS_URL"):
    payments_breaker = CircuitBreaker.redis(os.environ["REDIS_URL"], name="payments", **BREAKER_OPTIONS)
else:
    payments_breaker = CircuitBreaker(**BREAKER_OPTIONS)

payments = (
    Pipeline.builder()
    .name("payments")
    .log_events()
    .timeout(10)
    .retry(max_retries=3, delay=0.2, handle=(ConnectionError, TimeoutError))
    .circuit_breaker(payments_breaker)
    .timeout(2)
    .build()
)

BREAKERS = {"payments": payments_breaker}
NOT_READY = {"open", "isolated"}

app = FastAPI()


async def call_provider(amount: int) -> dict[str, object]:
    """Stands in for an HTTP call to the provider (fails one time in five)."""
    await asyncio.sleep(0.01)
    if random.random() < float(os.environ.get("PROVIDER_FAILURE_RATE", "0.2")):
        raise ConnectionError("provider reset the connection")
    return {"status": "paid", "amount": amount}


@app.post("/charge")
async def charge(amount: int) -> Response:
    try:
        receipt = await payments.execute(call_provider, amount)
    except stormwall.CircuitOpenError as e:
        retry_after = str(math.ceil(e.retry_after)) if e.retry_after is not None else "60"
        return JSONResponse({"error": "payments unavailable"}, status_code=503, headers={"Retry-After": retry_after})
    except (ConnectionError, TimeoutError):
        return JSONResponse({"error": "payment provider failed"}, status_code=502)
    return JSONResponse(receipt)


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "live"}


@app.get("/health/ready")
async def ready() -> Response:
    down = [name for name, b in BREAKERS.items() if b.state in NOT_READY]
    if down:
        return JSONResponse({"status": "not ready", "open": down}, status_code=503)
    return JSONResponse({"status": "ready"})


@app.get("/health")
async def health() -> dict[str, object]:
    return {
        "breakers": {
            name: {"state": b.state, "shared": b.name is not None, "connected": b.is_connected}
            for name, b in BREAKERS.items()
        }
    }


@app.post("/admin/payments/{action}")
async def control(action: str) -> Response:
    if action == "isolate":
        payments_breaker.isolate()
    elif action == "close":
        payments_breaker.close()
    else:
        return JSONResponse({"error": "action must be isolate or close"}, status_code=400)
    return JSONResponse({"state": payments_breaker.state})
