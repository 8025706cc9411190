"""Deadlines for many short waits, kept by one timer per event loop.

Why: `asyncio.timeout` costs about 4 µs of CPU per use on Python 3.11 (a `Timeout` object, a
timer handle scheduled on the loop and cancelled again), and the worker wraps every Redis round
trip and every call to WAHA in one: about 7% of a worker's busy samples under load
(docs/benchmarks.md, "Deadlines without a timer each"). Almost every such wait ends long before
its deadline. Here a wait only registers its deadline (about 0.4 µs); one timer per loop looks
at the waits in flight every `TICK_SECONDS` and cancels the task of each one past its deadline,
as `asyncio.timeout` would. So a wait is cut between its deadline and `TICK_SECONDS` after it:
fine for bounds of a second or more (Redis's command timeout, WAHA's read timeout), not for
precise short ones (those keep `asyncio.timeout`).

Semantics are `asyncio.timeout`'s: the body is cancelled, and the `with` block raises the
builtin `TimeoutError` in its place; a cancellation from elsewhere stays a cancellation (the
task's `cancelling()` count tells them apart), nested deadlines each raise only for their own.
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType

# How often the waits in flight are looked at, while there are any.
TICK_SECONDS = 0.05


class _Watch:
    """The waits in flight on one event loop, and the one timer that looks at them."""

    __slots__ = ("__weakref__", "_loop", "_timer", "_waits")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waits: dict[deadline, None] = {}  # an ordered set
        self._timer: asyncio.TimerHandle | None = None

    def add(self, wait: deadline) -> None:
        self._waits[wait] = None
        if self._timer is None:
            self._timer = self._loop.call_later(TICK_SECONDS, self._tick)

    def discard(self, wait: deadline) -> None:
        self._waits.pop(wait, None)

    def _tick(self) -> None:
        self._timer = None
        now = self._loop.time()
        for wait in list(self._waits):
            if wait.at <= now and not wait.expired:
                wait.expire()
        if self._waits:  # stops with the last wait: an idle loop pays nothing
            self._timer = self._loop.call_later(TICK_SECONDS, self._tick)


_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = weakref.WeakKeyDictionary()


class deadline:  # used like asyncio.timeout: a lower-case context manager
    """`with deadline(seconds):` - the block's awaits cut off `seconds` (to `TICK_SECONDS` more)
    after it began, with `TimeoutError`. Used inside a task on a running loop."""

    __slots__ = ("_cancelling", "_task", "_watch", "at", "expired")

    def __init__(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        watch = _WATCHES.get(loop)
        if watch is None:
            watch = _WATCHES[loop] = _Watch(loop)
        self._watch = watch
        self.at = loop.time() + seconds
        self.expired = False
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("deadline() is used inside a task")
        self._task = task
        self._cancelling = 0

    def __enter__(self) -> deadline:
        self._cancelling = self._task.cancelling()
        self._watch.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._watch.discard(self)
        # uncancel() whenever it expired (the cancel was ours), as asyncio.timeout does.
        expired_here = self.expired and self._task.uncancel() <= self._cancelling
        if expired_here and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expire(self) -> None:
        """Past its deadline: cancel the task waiting in the block (the watch's timer)."""
        self.expired = True
        self._task.cancel()
