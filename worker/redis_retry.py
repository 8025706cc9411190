"""What the worker does when Redis cannot be reached: wait and try again, within limits.

A worker outlives Redis restarts and failovers: blocking claims back off and retry forever;
calls made while holding a lease retry only until the lease would have run out, after which the
reaper owns the conversation and trying is pointless. The protocol's scripts make repeating a
call whose answer was lost safe (see shared/queue_consumer.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.backoff import Backoff
from shared.redis_errors import REDIS_UNAVAILABLE, RETRY_CAP_SECONDS

T = TypeVar("T")

log = logging.getLogger("wsm.worker.redis_retry")


async def retry_until(call: Callable[[], Awaitable[T]], deadline: float | None, what: str) -> T:
    """`await call()`, retrying on Redis connection trouble until `deadline` (time.monotonic).

    Past the deadline the last error is raised; None means no deadline.
    """
    backoff: Backoff | None = None
    while True:
        try:
            return await call()
        except REDIS_UNAVAILABLE as exc:
            backoff = backoff or Backoff(first=0.05, cap=RETRY_CAP_SECONDS)
            delay = backoff.next_delay()
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            log.warning("redis unreachable, retrying", extra={"op": what, "error": str(exc)})
            await asyncio.sleep(delay)
