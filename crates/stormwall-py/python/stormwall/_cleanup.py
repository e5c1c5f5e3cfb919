"""The cleanup of a cancelled attempt, driven to its end.

When the pipeline gives up on an attempt (a stormwall timeout, a losing hedge, the awaiting
task cancelled), the bridge throws ``CancelledError`` into its coroutine. A coroutine whose
``finally`` block or ``__aexit__`` then awaits (``await conn.close()``) yields a future: the
bridge hands the coroutine and that future to :func:`finish`, which drives it to its end in a
task of the running loop (as an asyncio task drives a cancelled coroutine), and the execution
answers once every such cleanup has ended (see :func:`wait`), as ``asyncio.wait_for`` does.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generator

# Cleanup tasks alive (the loop keeps only weak references to tasks).
_running: set[asyncio.Task[None]] = set()


class _Resume:
    """Awaits the rest of a coroutine that yielded ``first`` when ``CancelledError`` was
    thrown in: sends into it what the task sends, throws into it what the task throws."""

    __slots__ = ("_iterator", "_first")

    def __init__(self, iterator: Any, first: Any) -> None:
        self._iterator = iterator
        self._first = first

    def __await__(self) -> Generator[Any, Any, None]:
        iterator, yielded = self._iterator, self._first
        self._iterator = self._first = None
        while True:
            try:
                value = yield yielded
            except BaseException as error:  # the cleanup task was cancelled: pass it on
                try:
                    yielded = iterator.throw(error)
                except StopIteration:
                    return
                continue
            try:
                yielded = iterator.send(value)
            except StopIteration:
                return


async def _finish(iterator: Any, first: Any) -> None:
    try:
        await _Resume(iterator, first)
    except asyncio.CancelledError:
        # The end a cancelled coroutine normally comes to.
        pass
    except Exception as error:
        # The execution answered for the cancellation (TimeoutRejected, the caller's
        # CancelledError, the winning hedge): what the cleanup raised goes to the loop's
        # exception handler, at once.
        asyncio.get_running_loop().call_exception_handler(
            {"message": "stormwall: a cancelled attempt's cleanup raised", "exception": error}
        )


def finish(iterator: Any, first: Any) -> asyncio.Task[None] | None:
    """Drives the cancelled coroutine ``iterator``, which yielded ``first``, to its end in a
    task of the running loop; ``None`` (and the coroutine closed) when no loop runs."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        iterator.close()
        return None
    task = loop.create_task(_finish(iterator, first))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


def wait(tasks: list[asyncio.Task[None]]) -> asyncio.Future[None] | None:
    """A future done when every task of ``tasks`` is (ready for an awaiting task to
    yield); ``None`` when they all are already."""
    pending = [t for t in tasks if not t.done()]
    if not pending:
        return None
    loop = pending[0].get_loop()
    done: asyncio.Future[None] = loop.create_future()
    left = [len(pending)]

    def one_done(_: object) -> None:
        left[0] -= 1
        if left[0] == 0 and not done.done():
            done.set_result(None)

    for task in pending:
        task.add_done_callback(one_done)
    done._asyncio_future_blocking = True
    return done
