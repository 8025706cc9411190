"""History retention, against what docs/conversations.md promises:

- the history is "trimmed past the retention" (WSM_HISTORY_RETENTION_DAYS): messages older
  than the retention leave it, recent ones stay, pagination still works;
- "everything of a conversation expires after WSM_HISTORY_RETENTION_DAYS without activity":
  each of its keys carries a TTL of at most the retention, renewed by activity.

When the trimming runs is an implementation choice (on append, or in the engine's maintenance
pass): the test appends through the real handler and then runs one maintenance pass, so it
holds for either. Messages older than the retention cannot be made by waiting 90 days: they are
written with the stream ids (Redis's clock) they would have had back then, through the same
writes the handler commits (engine.history.append_writes).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from engine.history import HistoryEntry, HistoryKeys, append_writes, read_page
from shared.keys import engine_keys_for
from tests.engine.harness import apply_writes
from tests.support.waha import text_message

ANA = "5511987650101@c.us"
DAY_MS = 24 * 3600 * 1000


def history_keys(prefix: str, chat: str) -> HistoryKeys:
    keys = engine_keys_for("default", chat, 1, prefix)
    return HistoryKeys(keys.history, keys.history_meta)


async def write_old_messages(
    redis: Any, keys: HistoryKeys, *, retention_days: int, count: int
) -> list[str]:
    """`count` messages written (retention + 1) days ago, with their WhatsApp ids; their mids."""
    written_at = int(time.time() * 1000) - (retention_days + 1) * DAY_MS
    mids = []
    for n in range(count):
        mid = f"OLD{n}{uuid.uuid4().hex[:8].upper()}"
        entry = HistoryEntry(
            mid=mid,
            direction="in",
            text=f"mensagem antiga {n}",
            at=written_at + n,
            author="customer",
            waha_id=f"false_{ANA}_{mid}",
        )
        writes = append_writes(keys, entry, retention_seconds=retention_days * 24 * 3600)
        # Back then Redis's clock gave the stream id: the same writes, with that id.
        command, key, stream_id, *fields = writes[0]
        assert (command, stream_id) == ("XADD", "*")
        writes[0] = (command, key, f"{written_at + n}-0", *fields)
        await apply_writes(redis, writes)
        mids.append(mid)
    return mids


async def test_messages_older_than_the_retention_leave_the_history(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any
) -> None:
    retention_days = 90
    harness = make_harness(history_retention_days=retention_days)
    keys = history_keys(key_prefix, ANA)
    old_mids = await write_old_messages(aredis, keys, retention_days=retention_days, count=3)
    assert len((await read_page(aredis, keys))[0]) == 3

    for text in ("oi", "Ana"):
        await harness.webhook(text_message(ANA, text))
    await harness.drain()
    await harness.service.maintenance_once(force=True)

    page, more = await read_page(aredis, keys, limit=2)
    older, none = await read_page(aredis, keys, limit=2, before=more)
    kept = older + page
    assert none is None
    assert [(e.direction, e.author) for e in kept] == [
        ("in", "customer"), ("out", "bot"), ("in", "customer"), ("out", "bot"),
    ]  # fmt: skip
    assert [e.text for e in kept if e.direction == "in"] == ["oi", "Ana"]
    # What was recorded about the old messages went with them.
    meta_fields = [f.decode() for f in await aredis.hkeys(keys.meta)]
    assert not [f for f in meta_fields if any(mid in f for mid in old_mids)], meta_fields


async def test_every_key_of_a_conversation_expires_after_the_retention_without_activity(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any
) -> None:
    retention_days = 7
    retention_s = retention_days * 24 * 3600
    harness = make_harness(history_retention_days=retention_days)
    for text in ("oi", "Ana"):
        await harness.webhook(text_message(ANA, text))
    await harness.drain()

    conversation = engine_keys_for("default", ANA, 1, key_prefix)
    own = [k async for k in aredis.scan_iter(match=f"{conversation.state.rsplit(':', 1)[0]}:*")]
    assert {conversation.state, conversation.history, conversation.history_meta} <= {
        k.decode() for k in own
    }
    for key in own:
        ttl = await aredis.ttl(key)
        # Some TTL, never longer than the retention (and not a short one: set from it).
        assert retention_s - 3600 < ttl <= retention_s, (key, ttl)
