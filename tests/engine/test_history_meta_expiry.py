"""The history's meta hash is never created again without an expiry.

It lives as long as the history: every append sets the retention on both keys. The writes that
reach it later (the sender's record of a reply, a dead or failed reply, an ack parked for a
message not recorded yet) must not bring back, with no TTL, a hash that expired or was erased:
it would stay in Redis forever."""

from __future__ import annotations

import orjson
import respx

from engine.outbox import new_entry, outbox_writes
from engine.sender import OUTBOX_FAILED, OUTBOX_SENT
from shared.dead_letters import outbox_dead
from shared.keys import engine_keys_for
from tests.engine.harness import apply_writes
from tests.engine.test_light_path import ack
from tests.support.waha import text_message

CHAT = "5511987650071@c.us"
TOKEN = f"default|{CHAT}"


async def queued_reply(aredis, prefix: str, *, history_gone: bool):
    keys = engine_keys_for("default", CHAT, 1, prefix)
    entry = new_entry(CHAT, "Olá!")
    await apply_writes(aredis, outbox_writes(keys, [entry], retention_seconds=600, now_ms=5))
    if history_gone:  # expired (or erased) while the reply waited in the outbox
        await aredis.delete(keys.history_meta, keys.history)
    return keys, entry


async def test_a_reply_sent_after_its_history_expired_leaves_no_meta(aredis, key_prefix) -> None:
    keys, entry = await queued_reply(aredis, key_prefix, history_gone=True)
    sent_keys = [keys.outbox, keys.history_meta, keys.outbox_pending]
    assert await OUTBOX_SENT(aredis, sent_keys, [entry.mid, "true_x_AAA", "AAA", TOKEN]) == 1
    assert await aredis.llen(keys.outbox) == 0  # the reply still leaves the outbox
    assert await aredis.exists(keys.history_meta) == 0


async def test_a_reply_sent_records_its_id_in_a_living_history(aredis, key_prefix) -> None:
    keys, entry = await queued_reply(aredis, key_prefix, history_gone=False)
    ttl = await aredis.ttl(keys.history_meta)
    sent_keys = [keys.outbox, keys.history_meta, keys.outbox_pending]
    assert await OUTBOX_SENT(aredis, sent_keys, [entry.mid, "true_x_AAA", "AAA", TOKEN]) == 1
    meta = await aredis.hgetall(keys.history_meta)
    assert meta[f"{entry.mid}:status".encode()] == b"sent" and meta[b"w:AAA"] == entry.mid.encode()
    assert 0 < await aredis.ttl(keys.history_meta) <= ttl


async def test_a_dead_reply_after_its_history_expired_is_kept_without_meta(
    aredis, key_prefix
) -> None:
    keys, entry = await queued_reply(aredis, key_prefix, history_gone=True)
    reason = orjson.dumps({"status": 400, "answer": "bad", "error": "x"})
    assert await outbox_dead(aredis, keys, TOKEN, entry.mid, reason, 7) is True
    assert await aredis.llen(keys.outbox_dlq) == 1  # the letter is kept for the operator
    assert await aredis.exists(keys.history_meta) == 0


async def test_a_failed_reply_after_its_history_expired_leaves_no_meta(aredis, key_prefix) -> None:
    keys, entry = await queued_reply(aredis, key_prefix, history_gone=True)
    failed_keys = [keys.outbox, keys.history_meta, keys.outbox_pending]
    assert await OUTBOX_FAILED(aredis, failed_keys, [entry.mid, TOKEN, "Core", 9]) == 1
    assert await aredis.llen(keys.outbox) == 0
    assert await aredis.exists(keys.history_meta) == 0


async def test_an_ack_parked_where_no_history_is_expires(aredis, key_prefix, make_harness) -> None:
    """An ack for a message this conversation's history does not hold, with no history at all:
    it is parked (the sender may record the id next), in a hash that expires."""
    with respx.mock(assert_all_called=False):
        harness = make_harness()
        assert await harness.webhook(ack(CHAT, "true_5511987650071@c.us_UNKNOWN1", 3))
        await harness.drain()
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert await aredis.hget(keys.history_meta, "w:UNKNOWN1:ack") == b"read"
    retention = harness.settings.history_retention_seconds
    assert 0 < await aredis.ttl(keys.history_meta) <= retention


async def test_an_ack_parked_in_a_living_history_keeps_its_expiry(
    aredis, key_prefix, make_harness
) -> None:
    with respx.mock(assert_all_called=False):
        harness = make_harness()
        assert await harness.webhook(text_message(CHAT, "oi", message_id="IN71"))
        await harness.drain(deliver=False)
        keys = engine_keys_for("default", CHAT, 1, key_prefix)
        await aredis.expire(keys.history_meta, 1000)  # stands for an older append's expiry
        assert await harness.webhook(ack(CHAT, "true_5511987650071@c.us_UNKNOWN2", 2))
        await harness.drain(deliver=False)
    assert await aredis.hget(keys.history_meta, "w:UNKNOWN2:ack") == b"device"
    assert 990 < await aredis.ttl(keys.history_meta) <= 1000  # NX: not moved by the ack
