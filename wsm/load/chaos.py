"""Breaking things while the customers talk (`wsm loadtest --chaos`).

- Every `kill_interval` seconds, SIGKILL one worker process chosen at random (the fleet's
  supervisor starts a new one); at most `max_kills` when given. Only while every worker
  process is up: the supervisor's crash-loop backoff (0.5 s doubling to 30 s for processes that
  die within 30 s of their start) would otherwise soon leave no process running at all, which
  tests the backoff, not the product's promises.
- Once `restart_at` of the messages have been written: SIGKILL Redis and start it again on the
  same port and data (append-only file, fsync on every write: nothing it said yes to is lost).
- Once `outage_at` have been written: stop Redis for `outage_seconds`, longer than WAHA's
  retry window (15 retries 2 s apart, about 30 s). Nothing reaches Redis meanwhile: webhooks are
  answered from the gateway's spool, and customers waiting for an answer wait it out.

Redis events are tied to progress, not to the clock, so they always happen while customers are
mid-conversation, however fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wsm.load.customers import Progress
from wsm.stack import Service


@dataclass(frozen=True)
class ChaosPlan:
    kill_interval: float = 10.0
    processes: int = 2
    max_kills: int | None = None
    restart_at: float | None = 0.3
    outage_at: float | None = 0.6
    outage_seconds: float = 35.0


@dataclass
class ChaosEvent:
    at: float  # seconds since the load started
    what: str
    detail: str = ""


@dataclass
class ChaosLog:
    events: list[ChaosEvent] = field(default_factory=list)
    kills: int = 0
    redis_restarts: int = 0
    redis_outages: int = 0

    def as_dicts(self) -> list[dict[str, object]]:
        return [{"at": round(e.at, 2), "what": e.what, "detail": e.detail} for e in self.events]


def child_pids(parent: int) -> list[int]:
    """Live child processes of `parent` (the supervisor's worker processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


class Chaos:
    def __init__(
        self,
        plan: ChaosPlan,
        progress: Progress,
        *,
        worker: Service,
        redis: Service,
        say: Callable[[str], None] = print,
    ) -> None:
        self.plan = plan
        self.progress = progress
        self.worker = worker
        self.redis = redis
        self.log = ChaosLog()
        self._say = say
        self._random = random.Random()

    def _note(self, what: str, detail: str = "") -> None:
        at = time.monotonic() - self.progress.started_at
        self.log.events.append(ChaosEvent(at, what, detail))
        self._say(f"chaos +{at:6.1f}s  {what} {detail}".rstrip())

    async def run(self, done: asyncio.Event) -> None:
        """Until `done`: kill workers on the clock, break Redis on progress."""
        tasks = [asyncio.create_task(self._kill_workers(done))]
        tasks.append(asyncio.create_task(self._break_redis(done)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Whatever happened, Redis is left running for the checks and the stop.
            if not self.redis.running:
                self.redis.start()
                await self._redis_ready()

    # --- workers -----------------------------------------------------------------------------
    async def _kill_workers(self, done: asyncio.Event) -> None:
        while self.plan.max_kills is None or self.log.kills < self.plan.max_kills:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.plan.kill_interval)
            if done.is_set():
                return
            self.kill_one_worker()

    def kill_one_worker(self) -> int | None:
        supervisor = self.worker.pid
        children = child_pids(supervisor) if supervisor else []
        if len(children) < self.plan.processes:
            self._note(
                "worker kill skipped",
                f"({len(children)} of {self.plan.processes} worker processes up)",
            )
            return None
        victim = self._random.choice(children)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        self.log.kills += 1
        self._note("SIGKILL worker process", f"pid {victim}")
        return victim

    # --- Redis -------------------------------------------------------------------------------
    async def _reached(self, fraction: float, done: asyncio.Event) -> bool:
        while self.progress.fraction_sent < fraction and not done.is_set():
            changed = self.progress.changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 1.0)
        return not done.is_set()

    async def _break_redis(self, done: asyncio.Event) -> None:
        plan = self.plan
        if plan.restart_at is not None and await self._reached(plan.restart_at, done):
            self._note("SIGKILL Redis")
            self.redis.kill()
            self.redis.start()
            await self._redis_ready()
            self.log.redis_restarts += 1
            self._note("Redis back (restarted from its append-only file)")
        if plan.outage_at is not None and await self._reached(plan.outage_at, done):
            self._note("Redis stopped", f"for {plan.outage_seconds:.0f} s")
            self.redis.stop()
            self.log.redis_outages += 1
            # Not cut short by `done`: the outage is the point; the run waits it out.
            await asyncio.sleep(plan.outage_seconds)
            self.redis.start()
            await self._redis_ready()
            self._note("Redis back after the outage")

    async def _redis_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.redis.is_ready():
            if time.monotonic() > deadline:
                raise RuntimeError("Redis did not come back")
            await asyncio.sleep(0.05)
