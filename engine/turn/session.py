"""`session.status`: a WAHA session's status, kept in the engine's session registry. WORKING
lifts the sender's park on the session (a 422 parked it), so what waits is sent at once. Not a
conversation's turn: it has no chat."""

from __future__ import annotations

import orjson

from engine.sender import Sender
from shared.clock import now_ms
from shared.envelope import QueuedEvent
from shared.keys import EngineIndexKeys, WahaSessionKeys
from shared.redis_client import RedisClient


async def session_status(
    redis: RedisClient, index: EngineIndexKeys, sender: Sender | None, prefix: str,
    event: QueuedEvent,
) -> None:  # fmt: skip
    payload = event.document().get("payload") or {}
    status = str(payload.get("status") or "")
    if not status:
        return
    record = orjson.dumps({"status": status, "at": now_ms()})
    await redis.hset(index.sessions, event.session, record)
    if status == "WORKING":
        if sender is not None:
            await sender.wake_session(event.session)
        else:
            await redis.delete(WahaSessionKeys(event.session, prefix).parked)
