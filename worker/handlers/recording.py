"""The default handler until the conversation engine is plugged in: it records what it got.

Each delivery is appended to the conversation's `handled` list (shared/keys.py) inside the
commit, so a record exists exactly when the message was acked: tests read these lists to check
order and exactly-once commits. The list keeps the newest RECORD_LIMIT entries.
"""

from __future__ import annotations

import os

import orjson

from shared.envelope import QueuedEvent
from worker.handler import HandlerContext

RECORD_LIMIT = 1000


def handled_entry(event: QueuedEvent, ctx: HandlerContext) -> bytes:
    return orjson.dumps(
        {
            "id": event.id,
            "event": event.event,
            "attempt": ctx.attempt,
            "fence": ctx.fence,
            "pid": os.getpid(),
        }
    )


async def record(event: QueuedEvent, ctx: HandlerContext) -> None:
    key = ctx.conversation.handled
    await ctx.commit(
        [
            ("RPUSH", key, handled_entry(event, ctx)),
            ("LTRIM", key, -RECORD_LIMIT, -1),
        ]
    )
