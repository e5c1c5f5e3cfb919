"""The synchronous path (GIL released while the pipeline waits), circuit breaker states and
manual control, and the decorators."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import stormwall
from stormwall import CircuitBreaker, Pipeline


def test_execute_sync_retries_a_plain_function() -> None:
    calls = 0

    def flaky(x: int, *, y: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return x + y

    p = Pipeline.builder().retry(max_retries=3, delay=0.001).build()
    assert p.execute_sync(flaky, 1, y=2) == 3
    assert calls == 3


def test_execute_sync_releases_the_gil_while_it_waits() -> None:
    # Another thread counts while the pipeline waits out a 300 ms backoff: had the GIL been
    # held from the first attempt's end to the second's start, it could not have counted.
    stop = threading.Event()
    counter = [0]

    def count() -> None:
        while not stop.is_set():
            counter[0] += 1

    marks: list[int] = []

    def flaky() -> str:
        marks.append(counter[0])
        if len(marks) == 1:
            threading.Thread(target=count, daemon=True).start()
            marks[0] = counter[0]
            raise ConnectionError
        return "ok"

    p = Pipeline.builder().retry(max_retries=1, delay=0.3, backoff="constant", jitter="none").build()
    try:
        assert p.execute_sync(flaky) == "ok"
    finally:
        stop.set()
    assert marks[1] > marks[0], marks


def test_execute_sync_times_out_a_blocking_function_without_waiting_for_it() -> None:
    release = threading.Event()

    def blocks() -> str:
        release.wait(30)
        return "late"

    p = Pipeline.builder().timeout(0.02).build()
    try:
        with pytest.raises(stormwall.TimeoutRejected):
            p.execute_sync(blocks)
    finally:
        release.set()


def test_breaker_opens_half_opens_and_closes_with_events() -> None:
    breaker = CircuitBreaker(consecutive_failures=2, failure_ratio="off", break_duration=0.05)
    transitions: list[tuple[str, str]] = []
    breaker.on_transition(lambda e: transitions.append((e["from"], e["to"])))
    p = Pipeline.builder().circuit_breaker(breaker).build()
    healthy = False

    def call() -> str:
        if not healthy:
            raise ConnectionError
        return "ok"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            p.execute_sync(call)
    assert breaker.state == "open"
    with pytest.raises(stormwall.CircuitOpenError) as caught:
        p.execute_sync(call)
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 0.05
    healthy = True
    # The break ends after 50 ms: the next call is the probe, and it closes the circuit.
    answers: list[Any] = []

    def probe() -> bool:
        try:
            answers.append(p.execute_sync(call))
            return True
        except stormwall.CircuitOpenError:
            return False

    from conftest import eventually

    eventually(probe, "the break to end")
    assert answers == ["ok"]
    assert breaker.state == "closed"
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_manual_isolate_close_and_disable() -> None:
    breaker = CircuitBreaker(consecutive_failures=1, failure_ratio="off")
    p = Pipeline.builder().circuit_breaker(breaker).build()
    breaker.isolate()
    assert breaker.state == "isolated"
    with pytest.raises(stormwall.CircuitOpenError) as caught:
        p.execute_sync(lambda: 1)
    assert caught.value.retry_after is None
    breaker.close()
    assert p.execute_sync(lambda: 1) == 1
    breaker.disable()

    def fails() -> None:
        raise ConnectionError

    for _ in range(3):
        with pytest.raises(ConnectionError):
            p.execute_sync(fails)
    assert breaker.state == "disabled"
    assert p.circuit_breaker is not None and p.circuit_breaker.state == "disabled"


def test_decorators_wrap_async_and_plain_functions() -> None:
    calls = {"a": 0, "s": 0}

    @stormwall.retry(max_retries=2, delay=0.001)
    async def fetch(x: int) -> int:
        """Fetches."""
        calls["a"] += 1
        if calls["a"] == 1:
            raise ConnectionError
        return x

    @stormwall.retry(max_retries=2, delay=0.001)
    def compute(x: int) -> int:
        calls["s"] += 1
        if calls["s"] == 1:
            raise ConnectionError
        return x * 2

    assert asyncio.run(fetch(5)) == 5
    assert compute(5) == 10
    assert calls == {"a": 2, "s": 2}
    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Fetches."

    shared = CircuitBreaker(consecutive_failures=1, failure_ratio="off")

    @stormwall.circuit_breaker(shared)
    def down() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        down()
    with pytest.raises(stormwall.CircuitOpenError):
        down()

    @stormwall.circuit_breaker(consecutive_failures=1, failure_ratio="off")
    async def also_down() -> None:
        raise ConnectionError

    async def twice() -> None:
        with pytest.raises(ConnectionError):
            await also_down()
        with pytest.raises(stormwall.CircuitOpenError):
            await also_down()

    asyncio.run(twice())

    @stormwall.timeout(0.01)
    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        asyncio.run(hangs())

    p = Pipeline.builder().fallback(value="fallback").build()

    @stormwall.pipeline(p)
    def broken() -> str:
        raise RuntimeError

    assert broken() == "fallback"


def test_the_interpreter_waits_for_an_abandoned_call_at_exit(tmp_path: Any) -> None:
    # A timeout abandons the plain function, which is still running when the script ends.
    # The interpreter waits for it at exit (as for a non-daemon thread): a call returning
    # into an interpreter being finalized aborted the process (SIGABRT, PyGILState_Release)
    # in about 2 runs of 3. The function's last act is to write a file: it must be there.
    import subprocess
    import sys

    done = tmp_path / "done"
    script = (
        "import pathlib, time\n"
        "from stormwall import Pipeline, TimeoutRejected\n"
        "def slow():\n"
        "    time.sleep(0.3)\n"
        f"    pathlib.Path({str(done)!r}).write_text('finished')\n"
        "p = Pipeline.builder().timeout(0.05).build()\n"
        "try:\n"
        "    p.execute_sync(slow)\n"
        "except TimeoutRejected:\n"
        "    print('timed out', flush=True)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, "timed out\n"), run.stderr
    assert done.read_text() == "finished"


def test_every_error_survives_pickling() -> None:
    # Errors cross process boundaries (multiprocessing, ProcessPoolExecutor, Celery).
    import pickle

    errors: list[Exception] = [
        stormwall.ConfigError("retry.max_delay", "-1s", "must be positive"),
        stormwall.CircuitOpenError(1.5),
        stormwall.CircuitOpenError(None),
        stormwall.TimeoutRejected(0.25),
        stormwall.BulkheadFull(),
        stormwall.RateLimited(0.1),
        stormwall.BudgetExhausted(),
        stormwall.Throttled(),
        stormwall.FallbackError(ValueError("boom")),
        stormwall.RedisUnavailable("redis://127.0.0.1:1", "refused"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__.keys() == error.__dict__.keys()
    original = pickle.loads(pickle.dumps(errors[8]))
    assert isinstance(original, stormwall.FallbackError)
    assert isinstance(original.original, ValueError)


def test_ctrl_c_interrupts_execute_sync_during_a_long_retry_delay_and_releases_its_slot() -> None:
    # A child process waits out a 30 s retry delay; SIGINT, sent once it says it is waiting,
    # must raise KeyboardInterrupt within the deadline (well under 30 s), and the bulkhead
    # slot the interrupted call held must be free again.
    import signal
    import subprocess
    import sys

    script = (
        "import time\n"
        "from stormwall import Pipeline\n"
        "def flaky():\n"
        "    raise ConnectionError\n"
        "def on_event(event):\n"
        "    if event['event'] == 'retry':\n"
        "        print('waiting', flush=True)\n"
        "p = (Pipeline.builder().on_event(on_event).bulkhead(max_concurrency=1, queue_limit=0)\n"
        "     .retry(max_retries=1, delay=30, backoff='constant', jitter='none').build())\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    p.execute_sync(flaky)\n"
        "except KeyboardInterrupt:\n"
        "    print(f'interrupted after {time.monotonic() - start:.1f} s', flush=True)\n"
        "print(p.execute_sync(lambda: 'slot free'), flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "waiting\n"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=15)
    finally:
        child.kill()
        child.wait()
    lines = out.splitlines()
    assert child.returncode == 0, err
    assert lines[0].startswith("interrupted after ") and lines[1] == "slot free", out
    assert float(lines[0].split()[2]) < 15, out


def test_plain_functions_on_worker_threads_see_the_callers_context_variables() -> None:
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")
    caller = threading.get_ident()
    threads: list[int] = []

    def read() -> str:
        threads.append(threading.get_ident())
        return request_id.get()

    # A timeout (or hedging) runs each attempt on a worker thread.
    p = Pipeline.builder().timeout(10).build()
    hedged = Pipeline.builder().hedging(delay="parallel", max_hedged_attempts=1).build()

    @stormwall.pipeline(p)
    def decorated() -> str:
        return read()

    token = request_id.set("req-42")
    try:
        assert p.execute_sync(read) == "req-42"
        assert decorated() == "req-42"
        assert hedged.execute_sync(read) == "req-42"
    finally:
        request_id.reset(token)
    assert caller not in threads and len(threads) >= 3


def test_an_abandoned_plain_call_no_longer_counts_against_the_bulkhead() -> None:
    # What the README documents: a timeout gives up on the call (its thread runs on, Python
    # cannot stop it) and the bulkhead's slot is free at once for the next call.
    started = threading.Event()
    release = threading.Event()

    def blocks() -> str:
        started.set()
        release.wait(30)
        return "late"

    p = Pipeline.builder().bulkhead(max_concurrency=1, queue_limit=0).timeout(0.05).build()
    try:
        with pytest.raises(stormwall.TimeoutRejected):
            p.execute_sync(blocks)
        assert started.is_set()
        assert p.execute_sync(lambda: "admitted") == "admitted"
        assert not release.is_set()  # the abandoned call is still running
    finally:
        release.set()
