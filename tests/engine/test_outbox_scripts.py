"""outbox_sent, outbox_retry, outbox_dead and outbox_settle on a real Redis (repeats included)."""

from __future__ import annotations

import orjson

from engine.outbox import new_entry, outbox_writes
from engine.sender import OUTBOX_DEAD, OUTBOX_RETRY, OUTBOX_SENT, OUTBOX_SETTLE
from engine.writes import apply_writes
from shared.keys import engine_keys_for

CHAT = "5511987650052@c.us"
TOKEN = f"default|{CHAT}"


async def setup(aredis, prefix: str, n: int = 2):
    keys = engine_keys_for("default", CHAT, 1, prefix)
    entries = [new_entry(CHAT, f"r{i}") for i in range(n)]
    await apply_writes(aredis, outbox_writes(keys, entries, retention_seconds=60, now_ms=5))
    return keys, entries


async def test_outbox_sent_removes_head_once_and_applies_an_early_ack(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix)
    await aredis.hset(keys.history_meta, "w:AAA:ack", "read")
    args = [entries[0].mid, "true_x_AAA", "AAA", TOKEN]
    sent_keys = [keys.outbox, keys.history_meta, keys.outbox_pending]
    assert await OUTBOX_SENT(aredis, sent_keys, args) == 1
    assert await OUTBOX_SENT(aredis, sent_keys, args) == 0  # a repeat removes nothing more
    assert await aredis.llen(keys.outbox) == 1
    meta = await aredis.hgetall(keys.history_meta)
    assert meta[f"{entries[0].mid}:status".encode()] == b"read"
    assert meta[b"w:AAA"] == entries[0].mid.encode() and b"w:AAA:ack" not in meta
    assert await aredis.zscore(keys.outbox_pending, TOKEN) == 5
    assert await OUTBOX_SENT(aredis, sent_keys, [entries[1].mid, "", "", TOKEN]) == 1
    assert await aredis.zscore(keys.outbox_pending, TOKEN) is None


async def test_outbox_retry_counts_and_reschedules(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix)
    retry_keys = [keys.outbox, keys.outbox_pending]
    assert await OUTBOX_RETRY(aredis, retry_keys, [entries[0].mid, 999, TOKEN, "boom"]) == 1
    assert await OUTBOX_RETRY(aredis, retry_keys, [entries[0].mid, 1999, TOKEN, "boom"]) == 2
    assert await OUTBOX_RETRY(aredis, retry_keys, [entries[1].mid, 1, TOKEN, "x"]) == 0
    head = orjson.loads(await aredis.lindex(keys.outbox, 0))
    assert head["attempts"] == 2 and head["last_error"] == "boom"
    assert await aredis.zscore(keys.outbox_pending, TOKEN) == 1999


async def test_outbox_dead_moves_head_with_the_reason(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix, n=1)
    dead_keys = [keys.outbox, keys.outbox_dlq, keys.history_meta, keys.outbox_pending]
    reason = orjson.dumps({"status": 400, "answer": "bad", "error": "x"})
    assert await OUTBOX_DEAD(aredis, dead_keys, [entries[0].mid, TOKEN, reason, 7]) == 1
    assert await OUTBOX_DEAD(aredis, dead_keys, [entries[0].mid, TOKEN, reason, 7]) == 0
    [letter] = [orjson.loads(x) for x in await aredis.lrange(keys.outbox_dlq, 0, -1)]
    assert letter["conversation"] == TOKEN and letter["reason"]["status"] == 400
    assert await aredis.hget(keys.history_meta, f"{entries[0].mid}:status") == b"failed"
    assert await aredis.zscore(keys.outbox_pending, TOKEN) is None


async def test_outbox_settle_releases_only_its_own_lock(aredis, key_prefix) -> None:
    keys, _ = await setup(aredis, key_prefix, n=1)
    settle_keys = [keys.sending, keys.outbox, keys.outbox_pending]
    await aredis.set(keys.sending, "other")
    assert await OUTBOX_SETTLE(aredis, settle_keys, ["mine", TOKEN]) == 1
    assert await aredis.get(keys.sending) == b"other"
    await aredis.delete(keys.outbox)
    assert await OUTBOX_SETTLE(aredis, settle_keys, ["other", TOKEN]) == 0
    assert await aredis.exists(keys.sending) == 0
    assert await aredis.zscore(keys.outbox_pending, TOKEN) is None
