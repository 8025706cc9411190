"""A step run every so often in the background until an Event says stop.

The engine's sweeps and timers, the worker's heartbeat and reaper all have this shape: do the
step, survive its failure (logged; the next round tries again), wait an interval or less if
asked to stop. They stop on an Event checked after every await rather than on `Task.cancel()`,
which Python 3.11 can lose inside redis-py's `wait_for` (see worker/stopping.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("wsm.shared.periodic")


def cancel_requested() -> bool:
    """Whether the running task was asked to stop by `Task.cancel()`, even if the cancellation
    itself was lost (gh-86296 above): the request stays counted (`Task.cancelling()`). A loop
    that nobody stops by its Event, such as one left to `asyncio.run`'s final cancel, checks this
    too, or it would run on and hang the process's exit."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_every(
    interval: float | Callable[[], float],
    step: Callable[[], Awaitable[Any]],
    stop: asyncio.Event,
    *,
    what: str,
    logger: logging.Logger = log,
    wake: asyncio.Event | None = None,
) -> None:
    """Run `step()` now and then every `interval` seconds (a callable gives each wait, for
    jitter) until `stop` is set; setting `wake` starts the next step at once. A step that
    raises is logged ("<what> failed", on the caller's `logger`); the loop goes on."""
    while not stop.is_set():
        if wake is not None:
            wake.clear()  # before the step: a wake during it makes the next wait return at once
        try:
            await step()
        except Exception:
            logger.exception(f"{what} failed")
        seconds = interval() if callable(interval) else interval
        if wake is None:
            await sleep_unless(stop, seconds)
        else:
            await _sleep_unless_either(stop, wake, seconds)


async def _sleep_unless_either(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
