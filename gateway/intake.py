"""Where an accepted event goes: Redis within the deadline, else the local spool.

The answer is 2xx only once the event is durable in one of the two. An event must not
overtake events already answered "spooled": while they wait, it either waits for the replayer
to move them into Redis (when Redis answers, that takes milliseconds) or joins the spool.
Waiting is preferred: every event that joins the spool would in turn hold up the next ones,
and a busy gateway would never leave the spool again.

The batcher answers within the round trip in flight plus the event's own. The intake does not
rely on that alone: its wait has a deadline of its own, past which the event is spooled too,
so a batcher that fails to answer a waiter (a bug) costs that event seconds, not the webhook.
"""

from __future__ import annotations

import logging

from gateway.batcher import EnqueueBatcher
from gateway.errors import RedisUnavailable
from gateway.redis_link import RedisStatus
from gateway.spool import Spool
from shared.deadlines import deadline
from shared.enqueue import EnqueueRequest

QUEUED = "queued"
DUPLICATE = "duplicate"
SPOOLED = "spooled"

log = logging.getLogger("wsm.gateway.intake")

# Added to the batcher's own bound (two round trips): a backstop, not a deadline for Redis, so
# it must not fire when the gateway's CPU is merely busy (docs/gateway.md, "Deadlines").
ENQUEUE_SLACK_S = 2.0


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
        self._enqueue_deadline_s = 2 * redis_timeout_s + ENQUEUE_SLACK_S

    async def accept(self, request: EnqueueRequest, body: bytes, received_at_ms: int) -> str:
        """QUEUED, DUPLICATE or SPOOLED; raises SpoolUnavailable when neither Redis nor the
        spool took the event."""
        if await self._may_use_redis():
            try:
                # A backstop behind the batcher's own deadline: one timer for every webhook
                # (shared/deadlines.py), not one each.
                with deadline(self._enqueue_deadline_s):
                    queued = await self._batcher.enqueue(request)
            except RedisUnavailable:
                pass
            except TimeoutError:
                log.error("the enqueue batcher did not answer; spooling the event")
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
