"""Erasing a customer completely (LGPD, art. 18): their conversation's state, history and
outbox, their place in the line and with agents, the indexes, cached lookups, and the queue's
leftovers that name them (dedupe markers, dead letters).

The conversation must not be in the middle of being handled: while its queue holds messages
(ready, leased or delayed) the erase is refused with ConversationBusy, to be retried, since a
handler running now would write the data back.
"""

from __future__ import annotations

from typing import Any

from engine.identity import ChatKind, chat_kind
from engine.state import State
from shared.keys import (
    EngineIndexKeys,
    LineKeys,
    WahaSessionKeys,
    conversation_token,
    engine_keys_for,
)
from shared.queue_errors import ConversationBusy


def _glob_escape(value: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in value)


async def erase_customer(
    redis: Any, *, prefix: str, shards: int, session: str, chat_id: str
) -> int:
    """Delete everything about (session, chat_id). Returns how many keys/entries went."""
    keys = engine_keys_for(session, chat_id, shards, prefix)
    queue = keys.conversation
    token = conversation_token(session, chat_id)
    queue_state = await redis.hget(queue.meta, "state")
    if queue_state is not None and queue_state.decode() in ("ready", "leased", "delayed"):
        raise ConversationBusy(f"{token} has messages being handled; try again shortly")
    removed = 0
    # The conversation's own keys (one hash tag).
    own = [*keys.all_own(), queue.messages, queue.bodies, queue.meta, queue.attempts]
    removed += int(await redis.delete(*own))
    removed += int(await redis.zrem(keys.outbox_pending, token))
    for list_key in (keys.outbox_dlq, queue.shard_keys.dlq):
        for value in await redis.lrange(list_key, 0, -1):
            if chat_id.encode() in value:
                removed += int(await redis.lrem(list_key, 0, value))
    # Dedupe markers carry the WhatsApp message id, which names the chat.
    pattern = f"{queue.shard_keys.tag}:seen:{_glob_escape(session)}:m:*{_glob_escape(chat_id)}*"
    async for marker in redis.scan_iter(match=pattern, count=1000):
        removed += int(await redis.delete(marker))
    # The line and the agents.
    line = LineKeys(prefix)
    removed += int(await redis.zrem(line.waiting(session), token))
    removed += int(await redis.hdel(line.taken, token))
    for agent_id in await redis.hkeys(line.agents):
        name = agent_id.decode() if isinstance(agent_id, bytes) else str(agent_id)
        removed += int(await redis.srem(line.agent_conversations(name), token))
    # The indexes and timers.
    index = EngineIndexKeys(prefix)
    removed += int(await redis.zrem(index.conversations, token))
    removed += int(await redis.zrem(index.timers, token))
    for state in State:
        removed += int(await redis.srem(index.in_state(state.value), token))
    # Cached lookups and sends under way for this chat.
    session_keys = WahaSessionKeys(session, prefix)
    doomed = [session_keys.inflight(chat_id)]
    if chat_kind(chat_id) is ChatKind.LID:
        doomed.append(session_keys.lid(chat_id))
    removed += int(await redis.delete(*doomed))
    return removed
