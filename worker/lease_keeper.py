"""Keeping a lease alive while a conversation's turn runs (an LLM call can take 15 s).

The keeper extends the lease every third of its length, so one missed extension (a Redis
blip) still leaves time for the next. Once an extension is refused the lease is gone for good:
`lost` turns true and every later commit is refused without asking Redis.

Almost every turn ends long before its first extension is due (a menu reply takes a few ms,
a lease lasts 30 s), so the keeper starts as a timer and becomes a task only when that first
extension comes: a task, its Event wait and their cancellation for every turn cost about as
much as one Redis round trip (docs/benchmarks.md, first session of December 2026).
"""

from __future__ import annotations

import asyncio
import logging
import time

from shared.periodic import sleep_unless
from shared.queue_consumer import Lease, QueueConsumer
from shared.queue_errors import LeaseLost
from shared.redis_errors import REDIS_UNAVAILABLE
from worker.redis_retry import retry_until

log = logging.getLogger("wsm.worker.lease_keeper")

# Our own estimate of the deadline runs this much ahead of Redis's: the lease started in Redis
# before its answer reached us, and retrying right up to the deadline would be wasted work.
DEADLINE_MARGIN_SECONDS = 0.1


class LeaseKeeper:
    def __init__(self, consumer: QueueConsumer, lease: Lease) -> None:
        self.consumer = consumer
        self.lease = lease
        self.lost = False
        self._lease_seconds = consumer.lease_ms / 1000
        # time.monotonic() by which the lease has surely run out unless extended.
        self.deadline = time.monotonic() + self._lease_seconds - DEADLINE_MARGIN_SECONDS
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            self._lease_seconds / 3, self._first_extension_due
        )

    def _first_extension_due(self) -> None:
        self._timer = None
        if not self._stop.is_set():
            self._task = asyncio.create_task(self._keep(), name=f"lease-keeper {self.lease.token}")

    async def stop(self) -> None:
        """Stop extending. Not waited for: the turn is over, and an extension in flight is
        harmless (the keeper checks the flag before the next one)."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def extend(self) -> None:
        """Extend now. Raises LeaseLost when the lease is gone (or Redis stayed unreachable
        until it would have run out)."""
        if self.lost:
            raise LeaseLost(f"lease on {self.lease.token} is lost")
        asked_at = time.monotonic()
        try:
            await retry_until(
                lambda: self.consumer.extend(self.lease), self.deadline, "extend_lease"
            )
        except LeaseLost:
            self.lost = True
            raise
        except REDIS_UNAVAILABLE as exc:
            self.lost = True
            raise LeaseLost(f"lease on {self.lease.token} ran out while Redis was away") from exc
        self.deadline = asked_at + self._lease_seconds - DEADLINE_MARGIN_SECONDS

    async def _keep(self) -> None:
        # Started when the first extension is due. Stops on the flag, not on cancel() alone:
        # see worker/stopping.py.
        while not self._stop.is_set():
            try:
                await self.extend()
            except LeaseLost:
                if not self._stop.is_set():
                    log.warning(
                        "lease lost while handling", extra={"conversation": self.lease.token}
                    )
                return
            await sleep_unless(self._stop, self._lease_seconds / 3)
