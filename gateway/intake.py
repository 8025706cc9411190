"""Where an accepted event goes: Redis within the deadline, else the local spool.

The answer is 2xx only once the event is durable in one of the two. An event must not
overtake events already answered "spooled": while they wait, it either waits for the replayer
to move them into Redis (when Redis answers, that takes milliseconds) or joins the spool.
Waiting is preferred: every event that joins the spool would in turn hold up the next ones,
and a busy gateway would never leave the spool again.
"""

from __future__ import annotations

from gateway.batcher import EnqueueBatcher
from gateway.errors import RedisUnavailable
from gateway.redis_link import RedisStatus
from gateway.spool import Spool
from shared.enqueue import EnqueueRequest

QUEUED = "queued"
DUPLICATE = "duplicate"
SPOOLED = "spooled"


class Intake:
    def __init__(
        self,
        batcher: EnqueueBatcher,
        spool: Spool,
        status: RedisStatus,
        *,
        redis_timeout_s: float,
    ) -> None:
        self._batcher = batcher
        self._spool = spool
        self._status = status
        self._redis_timeout_s = redis_timeout_s

    async def accept(self, request: EnqueueRequest, body: bytes, received_at_ms: int) -> str:
        """QUEUED, DUPLICATE or SPOOLED; raises SpoolUnavailable when neither Redis nor the
        spool took the event."""
        if await self._may_use_redis():
            try:
                queued = await self._batcher.enqueue(request)
            except RedisUnavailable:
                pass
            else:
                return QUEUED if queued else DUPLICATE
        await self._spool.append(body, received_at_ms)
        return SPOOLED

    async def _may_use_redis(self) -> bool:
        if not self._status.usable:
            return False
        if not self._spool.has_backlog:
            return True
        if not self._status.reachable:
            return False  # the replayer cannot make progress: join the spool now
        # Bounded like a round trip: a replayer that cannot catch up that fast means Redis
        # is too slow for this event to wait on it.
        return await self._spool.wait_replayed(self._redis_timeout_s)
