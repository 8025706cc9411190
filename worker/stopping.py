"""Stopping background tasks without trusting `Task.cancel()`.

On Python 3.11, `asyncio.wait_for` swallows a cancellation that arrives just as the awaited
operation completes (CPython gh-86296, fixed in 3.12), and redis-py wraps every socket write in
`wait_for`. So a task making Redis calls often survives `cancel()` and carries on. Loops here
therefore stop on an Event they check after every await (shared/periodic.py's `sleep_unless`
and `run_every`), and whoever stops a task waits for it
for a bounded time only: a task that outlives that is left behind rather than hanging the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("wsm.worker.stopping")


async def wait_stopped(tasks: Iterable[asyncio.Task[None]], timeout: float) -> None:
    """Wait up to `timeout` for `tasks` (already told to stop); cancel and leave what remains."""
    pending = {task for task in tasks if not task.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=timeout)
    for task in pending:
        log.warning("task still running after its stop; cancelled", extra={"task": task.get_name()})
        task.cancel()
