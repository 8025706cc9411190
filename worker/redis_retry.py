"""What the worker does when Redis cannot be reached: wait and try again, within limits.

A worker outlives Redis restarts and failovers: blocking claims back off and retry forever;
calls made while holding a lease retry only until the lease would have run out, after which the
reaper owns the conversation and trying is pointless. The protocol's scripts make repeating a
call whose answer was lost safe (see shared/queue_consumer.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ClusterDownError, ConnectionError, TimeoutError, TryAgainError

T = TypeVar("T")

log = logging.getLogger("wsm.worker.redis")

# redis-py wraps socket errors in its own ConnectionError/TimeoutError; BusyLoadingError (Redis
# replaying its append-only file after a restart) is a ConnectionError. Not OSError: the
# builtin TimeoutError (asyncio.wait_for) is one, and means something else.
RETRYABLE_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    ClusterDownError,
    TryAgainError,
)


class Backoff:
    """Exponential backoff with full jitter (many workers reconnecting at once spread out)."""

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def next_delay(self) -> float:
        delay = random.uniform(self._next / 2, self._next)
        self._next = min(self.cap, self._next * 2)
        return delay


async def retry_until(call: Callable[[], Awaitable[T]], deadline: float | None, what: str) -> T:
    """`await call()`, retrying on Redis connection trouble until `deadline` (time.monotonic).

    Past the deadline the last error is raised; None means no deadline.
    """
    backoff: Backoff | None = None
    while True:
        try:
            return await call()
        except RETRYABLE_REDIS_ERRORS as exc:
            backoff = backoff or Backoff(first=0.05, cap=1.0)
            delay = backoff.next_delay()
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            log.warning("redis unreachable, retrying", extra={"op": what, "error": str(exc)})
            await asyncio.sleep(delay)
