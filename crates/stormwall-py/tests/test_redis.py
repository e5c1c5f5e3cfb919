"""Breakers shared through a real redis-server: a Python replica in another process, and the
Rust sidecar (`stormwall proxy`, a route whose breaker has `redis = ...`), share one state
with this process's `CircuitBreaker.redis`."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

import stormwall
from conftest import Redis, eventually, free_port, stormwall_binary
from stormwall import CircuitBreaker, Pipeline

# The same options on every replica, Rust or Python.
OPTIONS: dict[str, Any] = {"consecutive_failures": 2, "failure_ratio": "off", "break_duration": 30}


def fails() -> None:
    raise ConnectionError("dependency down")


def trip(breaker: CircuitBreaker) -> None:
    p = Pipeline.builder().circuit_breaker(breaker).build()
    for _ in range(2):
        with pytest.raises(ConnectionError):
            p.execute_sync(fails)


REPLICA = textwrap.dedent(
    """
    import sys, stormwall
    breaker = stormwall.CircuitBreaker.redis(sys.argv[1], name="orders", consecutive_failures=2,
                                             failure_ratio="off", break_duration=30)
    p = stormwall.Pipeline.builder().circuit_breaker(breaker).build()
    def fails():
        raise ConnectionError
    for _ in range(2):
        try:
            p.execute_sync(fails)
        except ConnectionError:
            pass
    import time
    end = time.monotonic() + 10
    while breaker.state != "open" and time.monotonic() < end:
        time.sleep(0.005)
    print(breaker.state, flush=True)
    sys.stdin.readline()
    """
)


def test_two_python_processes_share_one_breaker(redis: Redis) -> None:
    here = CircuitBreaker.redis(redis.url, name="orders", **OPTIONS)
    assert here.is_connected and here.state == "closed" and here.name == "orders"
    replica = subprocess.Popen(
        [sys.executable, "-c", REPLICA, redis.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert replica.stdout is not None and replica.stdout.readline().strip() == "open"
        eventually(lambda: here.state == "open", "this process to see the other one's trip")
        with pytest.raises(stormwall.CircuitOpenError):
            Pipeline.builder().circuit_breaker(here).build().execute_sync(lambda: "not called")
    finally:
        assert replica.stdin is not None
        replica.stdin.close()
        replica.wait(10)


class Sidecar:
    """`stormwall proxy` with a route `payment` whose breaker lives in Redis."""

    def __init__(self, redis: Redis) -> None:
        self.listen = free_port()
        self.admin = free_port()
        dead = free_port()  # nothing listens: every forwarded call fails to connect
        self.dir = tempfile.TemporaryDirectory(prefix="stormwall-py-sidecar-")
        config = Path(self.dir.name) / "stormwall.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [server]
                listen = "127.0.0.1:{self.listen}"
                admin = "127.0.0.1:{self.admin}"

                [[route]]
                name = "payment"
                match = {{ path_prefix = "/payment" }}
                upstream = "http://127.0.0.1:{dead}"
                circuit_breaker = {{ consecutive_failures = 2, failure_ratio = "off", break_duration = "30s", redis = "{redis.url}" }}
                """
            )
        )
        self.process = subprocess.Popen(
            [str(stormwall_binary()), "proxy", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        eventually(lambda: self.state() == "closed", "the sidecar to start", deadline=30)

    def get(self, port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def state(self) -> str | None:
        if self.process.poll() is not None:
            assert self.process.stderr is not None
            raise AssertionError(f"the sidecar exited: {self.process.stderr.read().decode()}")
        try:
            _, body = self.get(self.admin, "/admin/circuits")
        except OSError:
            return None
        circuits = json.loads(body)["circuits"]
        return next(c["state"] for c in circuits if c["route"] == "payment")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.dir.cleanup()


@pytest.fixture
def sidecar(redis: Redis) -> Iterator[Sidecar]:
    s = Sidecar(redis)
    try:
        yield s
    finally:
        s.stop()


def test_a_python_service_and_the_rust_sidecar_share_one_breaker(redis: Redis, sidecar: Sidecar) -> None:
    python = CircuitBreaker.redis(redis.url, name="payment", **OPTIONS)
    # Python trips it: the Rust replica opens too, and rejects without calling upstream.
    trip(python)
    # Redis decides the transition (one script run); replicas learn it over pub/sub.
    eventually(lambda: python.state == "open", "Redis to open the breaker")
    eventually(lambda: sidecar.state() == "open", "the sidecar to adopt Python's trip")
    status, body = sidecar.get(sidecar.listen, "/payment/charge")
    assert status == 503 and b"circuit open" in body
    # Rust closes it by hand: Python follows.
    status, _ = sidecar.get(sidecar.admin, "/admin/routes/payment/close", method="POST")
    assert status == 200
    eventually(lambda: python.state == "closed", "Python to adopt the sidecar's close")
    # Rust trips it (its upstream is down): Python opens.
    for _ in range(2):
        status, _ = sidecar.get(sidecar.listen, "/payment/charge")
        assert status >= 500
    eventually(lambda: python.state == "open", "Python to adopt the sidecar's trip")
    # Python isolates it: the sidecar follows.
    python.isolate()
    eventually(lambda: sidecar.state() == "isolated", "the sidecar to adopt Python's isolation")


def test_bad_redis_urls_and_unreachable_servers_are_named() -> None:
    with pytest.raises(stormwall.ConfigError) as caught:
        CircuitBreaker.redis("nope://what", name="x", **OPTIONS)
    assert caught.value.field == "url"
    with pytest.raises(stormwall.RedisUnavailable) as unreachable:
        CircuitBreaker.redis(f"redis://127.0.0.1:{free_port()}", name="x", **OPTIONS)
    assert isinstance(unreachable.value, ConnectionError)
    with pytest.raises(stormwall.ConfigError) as caught:
        CircuitBreaker.redis(f"redis://127.0.0.1:{free_port()}", name="x", failure_ratio=3)
    assert caught.value.field == "circuit_breaker.failure_ratio"


def test_redis_refuses_an_empty_name_and_a_url_that_is_no_string() -> None:
    with pytest.raises(stormwall.ConfigError) as caught:
        CircuitBreaker.redis(f"redis://127.0.0.1:{free_port()}", name="", **OPTIONS)
    assert caught.value.field == "name"
    with pytest.raises(TypeError) as wrong:
        CircuitBreaker.redis(5, name="x", **OPTIONS)  # type: ignore[arg-type]
    assert isinstance(wrong.value, stormwall.ConfigError) and wrong.value.field == "url"
    assert "url" in str(wrong.value)
