"""Shared fixtures: a real redis-server and the `stormwall` binary (the Rust sidecar) on free
loopback ports, stopped when the test ends. Waits poll for a condition with a generous
deadline; nothing sleeps to synchronise."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(done: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    """Polls `done` until it holds, failing after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Redis:
    def __init__(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed (scripts/test installs it)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="stormwall-py-redis-")
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        eventually(self._answers, "redis-server to answer")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis() -> Iterator[Redis]:
    server = Redis()
    try:
        yield server
    finally:
        server.stop()


def stormwall_binary() -> Path:
    """The `stormwall` binary: $STORMWALL_BIN (scripts/test sets it), else the workspace's
    debug build."""
    configured = os.environ.get("STORMWALL_BIN")
    if configured:
        path = Path(configured)
        if not path.is_file():
            pytest.fail(f"STORMWALL_BIN={configured} does not exist")
        return path
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path(__file__).parents[3] / "target"))
    path = target / "debug" / "stormwall"
    if not path.is_file():
        pytest.skip(f"{path} is missing: cargo build -p stormwall-cli (or set STORMWALL_BIN)")
    return path
