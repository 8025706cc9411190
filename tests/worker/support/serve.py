"""A worker process's `serve()` (worker/process.py) run as a task of the test's own loop, with
a probe handler that records what the process gives it: tests/worker/test_process_mutants.py.

The fleet tests run serve() in child processes, where a mutation run cannot see it; this takes
the same path in the test process. serve() installs loop handlers for SIGTERM and SIGINT and
stops on SIGTERM, and settles the heap (shared/heap.py: frozen objects, a higher young
threshold); `serving` undoes both afterwards, leaving the test process as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.envelope import QueuedEvent
from shared.settings import Settings
from worker.handler import HandlerContext, HandlerSetup
from worker.handlers.recording import handled_entry
from worker.process import ProcessOptions, serve

# The handler spec of the probe (`--handler`): a factory, so the process's HandlerSetup shows.
PROBE = "tests.worker.support.serve:probe"
# A serve() that has not stopped by then is stuck (a real one stops within its grace period
# plus a few seconds of bounded waits).
STOP_TIMEOUT = 15.0

Behaviour = Callable[[QueuedEvent, HandlerContext], Awaitable[None]]


async def commit(event: QueuedEvent, ctx: HandlerContext) -> None:
    """Commit at once, recorded like the recording handler's (tests/worker/support/fleet.py's
    handled_ids reads it)."""
    await ctx.commit([("RPUSH", ctx.conversation.handled, handled_entry(event, ctx))])


@dataclass
class Probe:
    """What the probe handler of one serve() was given and did."""

    behaviour: Behaviour
    setups: list[Any] = field(default_factory=list)
    lifecycle: list[str] = field(default_factory=list)
    contexts: list[HandlerContext] = field(default_factory=list)
    # Set: the handler's aclose() never returns.
    hang_on_close: bool = False


# The probe of the serve() running now (the factory is found by its spec, not passed).
_current: list[Probe] = []


class ProbeHandler:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def start(self) -> None:
        self.probe.lifecycle.append("start")

    async def __call__(self, event: QueuedEvent, ctx: HandlerContext) -> None:
        self.probe.contexts.append(ctx)
        await self.probe.behaviour(event, ctx)

    async def aclose(self) -> None:
        self.probe.lifecycle.append("close")
        if self.probe.hang_on_close:
            await asyncio.Event().wait()


def probe(setup: HandlerSetup) -> ProbeHandler:
    """The factory PROBE names: records the setup it is called with."""
    current = _current[-1]
    current.setups.append(setup)
    return ProbeHandler(current)


@dataclass
class Serving:
    task: asyncio.Task[int]
    probe: Probe

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM to this process, as the supervisor sends it; serve()'s exit status."""
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(self.task, timeout)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, options: ProcessOptions, behaviour: Behaviour = commit
) -> AsyncIterator[Serving]:
    """serve(settings, options) running as a task; its probe handler (when options.handler is
    PROBE) does `behaviour` with each message. Stopped (SIGTERM, then cancelled) if the test
    left it running; its signal handlers removed."""
    loop = asyncio.get_running_loop()
    signums = (signal.SIGTERM, signal.SIGINT)
    saved = {signum: signal.getsignal(signum) for signum in signums}
    thresholds = gc.get_threshold()
    current = Probe(behaviour)
    _current.append(current)
    task = asyncio.create_task(serve(settings, options), name="serve")
    # serve() installs its signal handlers before its first await: after this they are there.
    await asyncio.sleep(0)
    try:
        yield Serving(task, current)
    finally:
        try:
            if not task.done():
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        finally:
            for signum in signums:
                loop.remove_signal_handler(signum)
                signal.signal(signum, saved[signum])
            gc.unfreeze()
            gc.set_threshold(*thresholds)
            _current.remove(current)
