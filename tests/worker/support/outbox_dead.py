"""Replies dead-lettered as the sender buries them (engine/sender.py): committed to the outbox
by the engine's own writes, their attempt begun by send_begin.lua, then moved by
outbox_dead.lua with the reason the sender gives (WAHA's status, answer and error)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from engine.outbox import OutboxEntry, new_entry, outbox_writes
from engine.sender import OUTBOX_RETRY, SEND_BEGIN
from shared.dead_letters import outbox_dead
from shared.keys import EngineConversationKeys, engine_keys_for

SESSION = "default"
# 2025-11-30T10:53:20.123Z
AT_MS = 1_764_500_000_123
RETENTION_SECONDS = 3600


def keys_for(chat: str, prefix: str, shards: int = 1) -> EngineConversationKeys:
    return engine_keys_for(SESSION, chat, shards, prefix)


async def commit(client: Any, chat: str, prefix: str, shards: int, entries: list[OutboxEntry]):
    """The replies' commit writes, applied one by one (no MULTI: a cluster client too)."""
    keys = keys_for(chat, prefix, shards)
    for item in outbox_writes(keys, entries, retention_seconds=RETENTION_SECONDS, now_ms=AT_MS):
        await client.execute_command(*item)


def refused(status: int = 400, answer: str = '{"message":"chatId is invalid"}') -> bytes:
    """The reason the sender gives when WAHA answered an error (sender._dead)."""
    error = f"POST /api/sendText: WAHA answered {status}"
    return orjson.dumps({"status": status, "answer": answer, "error": error})


def no_answer(error: str = "POST /api/sendText: ReadTimeout: no answer in time") -> bytes:
    """The reason the sender gives when the send got no answer (a timeout, a dropped link)."""
    return orjson.dumps({"status": None, "answer": "", "error": error})


async def bury(
    client: Any,
    chat: str,
    prefix: str,
    texts: list[str],
    *,
    shards: int = 1,
    reason: bytes | None = None,
    attempted: bool = True,
    created_ms: int = AT_MS,
    at_ms: int = AT_MS,
    retries: int = 0,
) -> list[str]:
    """`texts` committed to `chat`'s outbox, then each dead-lettered in turn (its attempt begun
    by send_begin.lua first when `attempted`, after `retries` attempts that failed and were
    retried, outbox_retry.lua): their reply ids, oldest first."""
    keys = keys_for(chat, prefix, shards)
    token = keys.conversation.token
    entries = [new_entry(chat, text, at_ms=created_ms) for text in texts]
    await commit(client, chat, prefix, shards, entries)

    async def begin(mid: str) -> None:
        lock = uuid.uuid4().hex
        await client.set(keys.sending, lock, px=10_000)
        begun = await SEND_BEGIN(
            client,
            [keys.sending, keys.outbox, keys.outbox_pending],
            [lock, mid, 10_000, 60_000, token, at_ms],
        )
        assert int(begun) == 0
        await client.delete(keys.sending)

    for n, entry in enumerate(entries):
        for _ in range(retries):
            await begin(entry.mid)
            error = "POST /api/sendText: WAHA answered 503"
            assert await OUTBOX_RETRY(
                client, [keys.outbox, keys.outbox_pending], [entry.mid, at_ms, token, error]
            )
        if attempted:
            await begin(entry.mid)
        moved = await outbox_dead(client, keys, token, entry.mid, reason or refused(), at_ms + n)
        assert moved
    return [entry.mid for entry in entries]


async def outbox_texts(client: Any, keys: EngineConversationKeys) -> list[str]:
    return [OutboxEntry.decode(raw).text for raw in await client.lrange(keys.outbox, 0, -1)]


async def snapshot(client: Any, keys: EngineConversationKeys) -> dict[str, Any]:
    """Every key replay_outbox_dead.lua may write (it declares these, and Redis refuses it any
    other): their contents and the outbox's expiry."""
    return {
        "dlq": await client.lrange(keys.outbox_dlq, 0, -1),
        "outbox": await client.lrange(keys.outbox, 0, -1),
        "outbox_ttl": await client.ttl(keys.outbox),
        "meta": await client.hgetall(keys.history_meta),
        "pending": await client.zrange(keys.outbox_pending, 0, -1, withscores=True),
    }
