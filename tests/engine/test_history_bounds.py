"""What a conversation keeps is bounded: its history by the retention and a length cap (the meta
hash shrinking with the stream), and the engine's indexes by the retention of the states."""

from __future__ import annotations

from typing import Any

import engine.service
from engine.history import TRIM_BATCH, HistoryEntry, append_writes, read_page, trim, trim_many
from engine.outbox import history_keys
from engine.state import INDEX_PRUNE, State
from shared.keys import EngineIndexKeys, engine_keys_for
from tests.engine.harness import Harness
from tests.support.waha import text_message

ANA = "5511900000001@c.us"
BIA = "5511900000002@c.us"
DAY_MS = 24 * 3600 * 1000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def meta_owners(redis: Any, harness: Harness, chat: str) -> tuple[set[str], set[str]]:
    """(mids in the stream, mids and WhatsApp ids the meta hash has fields for)."""
    keys = engine_keys_for("default", chat, 1, harness.settings.key_prefix)
    stream = {_text(v[b"mid"]) for _, v in await redis.xrange(keys.history)}
    owners = set()
    for field in await redis.hkeys(keys.history_meta):
        name = _text(field)
        if name.startswith("w:"):
            owners.add(_text(await redis.hget(keys.history_meta, name)))
        else:
            owners.add(name.rsplit(":", 1)[0])
    return stream, owners


async def ack(harness: Harness, chat: str, waha_id: str, level: int = 3) -> None:
    document = text_message(chat, "", event="message.ack")
    document["payload"] = {"id": waha_id, "from": chat, "fromMe": True, "ack": level,
                           "ackName": "READ", "participant": None, "to": None}  # fmt: skip
    await harness.webhook(document)


async def test_length_cap_trims_the_stream_with_its_meta_and_counts_the_drop(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness(history_max_messages=6)
    for n in range(10):
        await harness.webhook(text_message(ANA, f"mensagem {n}", message_id=f"IN{n}"))
        await harness.drain()
    for waha_id in waha.ids:  # every reply read: a status field each
        await ack(harness, ANA, waha_id)
    await harness.drain()
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    before = await aredis.xlen(keys.history)
    assert before > 6
    done = await harness.service.maintenance_once(force=True)
    assert await aredis.xlen(keys.history) == 6
    assert done["trimmed"] == done["dropped"] == before - 6
    assert int(await aredis.hget(EngineIndexKeys(key_prefix).dropped, "history_entries")) == (
        before - 6
    )
    stream, owners = await meta_owners(aredis, harness, ANA)
    assert owners == stream  # no field of a trimmed message is left
    # What is kept reads as before, the newest messages, with their facts.
    page, _ = await read_page(aredis, history_keys(keys), limit=100)
    assert page[-1].text != "" and all(e.status for e in page)
    # The first message is gone from the lookup too: a replay of it is a new message now,
    # and nothing of it lingers.
    assert await aredis.hget(keys.history_meta, "w:IN0") is None


async def test_retention_trims_old_entries_and_their_meta_without_counting_a_loss(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness()
    await harness.webhook(text_message(ANA, "oi", message_id="OLD0"))
    await harness.drain()
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    retention_ms = harness.settings.history_retention_days * DAY_MS
    now = await trim(aredis, history_keys(keys), retention_seconds=retention_ms // 1000,
                     max_entries=0)  # fmt: skip
    assert now.entries == 0  # nothing is old yet
    assert await aredis.hlen(keys.history_meta) > 0
    future = (await aredis.time())[0] * 1000 + retention_ms + 1000
    done = await trim(
        aredis, history_keys(keys), retention_seconds=retention_ms // 1000, max_entries=0,
        now_ms=future,
    )  # fmt: skip
    assert done.entries > 0 and done.by_length == 0
    assert await aredis.xlen(keys.history) == 0
    assert await aredis.hlen(keys.history_meta) == 0


async def test_orphan_meta_fields_are_compacted(aredis, key_prefix, waha, make_harness) -> None:
    """Acks for messages this history never recorded are parked under their WhatsApp id; they
    used to stay as long as the conversation was active."""
    harness = make_harness()
    await harness.say(ANA, "oi")
    for n in range(120):
        await ack(harness, ANA, f"true_{ANA}_NEVER{n:04d}", level=2)
    await harness.drain()
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    assert await aredis.hlen(keys.history_meta) > 120
    done = await harness.service.maintenance_once(force=True)
    assert done["compacted"] >= 120
    stream, owners = await meta_owners(aredis, harness, ANA)
    assert owners == stream and await aredis.xlen(keys.history) == len(stream)


async def test_expired_conversations_leave_the_indexes(
    aredis, key_prefix, waha, make_harness, monkeypatch
) -> None:
    """Ana's state expired after the retention (its key is gone); Bia's is still there (a state
    lives as long as its conversation is active). Past the retention, the maintenance forgets Ana
    in `convs`, the state sets and the timers, and keeps Bia."""
    harness = make_harness()
    for chat in (ANA, BIA):
        await harness.webhook(text_message(chat, "oi"))
    await harness.drain()
    index = EngineIndexKeys(key_prefix)
    ana, bia = f"default|{ANA}", f"default|{BIA}"
    await aredis.delete(engine_keys_for("default", ANA, 1, key_prefix).state)  # expired
    retention_ms = harness.settings.history_retention_days * DAY_MS
    real_now = engine.service.now_ms
    monkeypatch.setattr(engine.service, "now_ms", lambda: real_now() + retention_ms + 1000)
    done = await harness.service.maintenance_once(force=True)
    assert done["forgotten"] == 1
    assert await aredis.zscore(index.conversations, ana) is None
    assert await aredis.zscore(index.timers, ana) is None
    for state in State:
        assert not await aredis.sismember(index.in_state(state.value), ana)
    assert await aredis.zscore(index.conversations, bia) is not None
    assert await aredis.sismember(index.in_state(State.BOT.value), bia)


async def test_a_conversation_that_came_back_is_not_forgotten(
    aredis, key_prefix, waha, make_harness
) -> None:
    """The prune saw Ana's state gone under an old score; Ana wrote again before its script ran
    (re-indexed with a new score before her commit): she keeps her place in the indexes."""
    harness = make_harness()
    await harness.say(ANA, "oi")
    index = EngineIndexKeys(key_prefix)
    ana = f"default|{ANA}"
    old = await aredis.zscore(index.conversations, ana)
    await aredis.zadd(index.conversations, {ana: old + 1})  # her new turn's index step
    keys = [index.conversations, index.timers, *[index.in_state(s.value) for s in State]]
    assert await INDEX_PRUNE(aredis, keys, [ana, repr(old)]) == 0
    assert await aredis.zscore(index.conversations, ana) == old + 1
    assert await aredis.sismember(index.in_state(State.BOT.value), ana)
    # With the score it saw still there, it is forgotten.
    assert await INDEX_PRUNE(aredis, keys, [ana, repr(old + 1)]) == 1
    assert await aredis.zscore(index.conversations, ana) is None


async def test_a_long_backlog_is_trimmed_past_one_script_batch(aredis, key_prefix) -> None:
    """More to trim than one script call takes (TRIM_BATCH): the pipelined pass finishes it
    conversation by conversation, and a conversation with nothing to trim is left alone."""
    long_keys = history_keys(engine_keys_for("default", ANA, 1, key_prefix))
    short_keys = history_keys(engine_keys_for("default", BIA, 1, key_prefix))
    for keys, count in ((long_keys, TRIM_BATCH + 200), (short_keys, 3)):
        pipe = aredis.pipeline(transaction=False)
        for n in range(count):
            entry = HistoryEntry(mid=f"M{n}", direction="in", text=f"m{n}", at=n,
                                 author="customer", waha_id=f"false_{ANA}_M{n}")  # fmt: skip
            for item in append_writes(keys, entry, retention_seconds=3600):
                pipe.execute_command(*item)
        await pipe.execute()
    done = await trim_many(aredis, [long_keys, short_keys], retention_seconds=3600, max_entries=100)
    assert done.entries == done.by_length == TRIM_BATCH + 100
    assert await aredis.xlen(long_keys.stream) == 100
    assert await aredis.hlen(long_keys.meta) == 100 * 3  # status, waha_id, w:<id> each
    assert await aredis.xlen(short_keys.stream) == 3
