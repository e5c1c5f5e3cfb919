"""The FastAPI example: readiness follows the payments breaker; an open circuit answers 503
with Retry-After (skipped where fastapi is not installed; scripts/test installs it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402


def load_example(monkeypatch: pytest.MonkeyPatch, failure_rate: str) -> object:
    monkeypatch.setenv("PROVIDER_FAILURE_RATE", failure_rate)
    monkeypatch.delenv("REDIS_URL", raising=False)
    path = Path(__file__).parents[3] / "examples" / "python" / "fastapi_service.py"
    spec = importlib.util.spec_from_file_location("fastapi_service", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastapi_service"] = module
    spec.loader.exec_module(module)
    return module


def test_readiness_follows_the_breaker_and_open_circuits_answer_503(monkeypatch: pytest.MonkeyPatch) -> None:
    service = load_example(monkeypatch, "0")
    with TestClient(service.app) as client:  # type: ignore[attr-defined]
        assert client.post("/charge", params={"amount": 5}).json() == {"status": "paid", "amount": 5}
        assert client.get("/health/ready").status_code == 200
        assert client.post("/admin/payments/isolate").json() == {"state": "isolated"}
        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["open"] == ["payments"]
        refused = client.post("/charge", params={"amount": 5})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "60"
        assert client.get("/health").json()["breakers"]["payments"]["state"] == "isolated"
        client.post("/admin/payments/close")
        assert client.get("/health/ready").status_code == 200

