"""The LGPD erase where the mutation run found it untested (docs/testing.md, "Mutation
testing"): customers with more cached lookups, dedupe markers and console entries than one of
the erase's batches, a lid chat whose number is cached as unknown ("-"), and WAHA session names
holding glob characters (the erase finds keys by SCAN patterns).

Each test drives real customers through the real engine on a real Redis, then searches every
key, name and content, for the erased customer's phone number, chat id and name: nothing may
hold them afterwards, and every other key is unchanged byte for byte."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest

import engine.erase
from engine.erase import BATCH, erase_customer
from engine.identity import Conversation
from engine.media.store import DirectoryStore, MediaLibrary
from shared.events import message_key_of
from shared.keys import (
    ConsoleKeys,
    LineKeys,
    MediaKeys,
    WahaSessionKeys,
    keys_for_conversation,
)
from shared.lua import LuaScript
from shared.queue_errors import ConversationBusy
from tests.engine.erase_support import (
    assert_erased_exactly,
    booking_store,
    live_a_life,
    now_ms,
    snapshot,
    values_of,
)
from tests.engine.harness import FakeWaha, Harness
from tests.support.waha import text_message

PHONE = "5511912340000"
NAME = "Zuleica Prado"
ERASED = Conversation("default", f"{PHONE}@c.us")
OTHER = Conversation("default", "5521955550000@c.us")
# More than two batches of each: the last batch is a partial one.
MANY = 2 * BATCH + 100


@pytest.fixture
def harness(make_harness) -> Harness:
    return make_harness(queue_shards=3, conversations_per_agent=1)


def needles(*extra: str) -> list[bytes]:
    return [x.encode() for x in (PHONE, ERASED.chat_id, NAME, *extra)]


def fence_of(who: Conversation, key_prefix: str) -> bytes:
    return keys_for_conversation(who.session, who.chat_id, 3, key_prefix).shard_keys.fence.encode()


async def crowd(harness: Harness, key_prefix: str) -> None:
    """What a busy session holds beside the two customers' lives: MANY cached lid lookups (every
    other one the erased customer's number: lids they used, spread over every batch of the
    lookup's reads and of the session script's calls; the rest other people's), MANY dedupe
    markers of the erased customer's messages and a few of the other's, and MANY per-agent
    console keys (half as many agents, each with a read mark and a handled list of both)."""
    lids = WahaSessionKeys(ERASED.session, key_prefix)
    console = ConsoleKeys(key_prefix)
    pipe = harness.redis.pipeline(transaction=False)
    for n in range(2 * MANY):
        pipe.set(lids.lid(f"3000000{n:05d}@lid"), PHONE if n % 2 else f"552195555{n:04d}")
    for who, count in ((ERASED, MANY), (OTHER, 20)):
        shard = keys_for_conversation(who.session, who.chat_id, 3, key_prefix).shard_keys
        for n in range(count):
            key = f"message:false_{who.chat_id}_3EB0{n:016X}"
            pipe.set(shard.seen_message(who.session, key), "1", ex=3600)
    for n in range(MANY // 2):
        agent = f"agent-{n:04d}"
        pipe.hset(console.read(agent), mapping={ERASED.token: "1-0", OTHER.token: "1-0"})
        pipe.zadd(console.handled(agent), {ERASED.token: now_ms(), OTHER.token: now_ms()})
    await pipe.execute()


def of_bookings(key: bytes) -> bool:
    """The calendar's keys but its dead webhooks: the bookings, which `also` erases and counts
    its own way (a booking, not each of its keys)."""
    return b":{cal}:" in key and not key.endswith(b":hooks:dead")


def tally(before: dict[bytes, Any], after: dict[bytes, Any]) -> int:
    """What went: each key, and each entry taken from a key that stayed (but the bookings)."""
    went = 0
    for key, (_, kind, value) in before.items():
        if of_bookings(key):
            continue
        if key not in after:
            went += 1
        elif kind != b"string":
            went += len(values_of(kind, value)) - len(values_of(kind, after[key][2]))
    return went


async def test_an_erase_reaches_every_key_of_a_customer_past_each_batch(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix, tmp_path: Path, monkeypatch
) -> None:
    """Kills, in erase.py: the lid lookup's reads in batches (`range`, the slice, the value
    compared), the marker and session scripts' batches, the console's per-agent batches (each
    would leave some of the customer's keys behind), the session's own line left out of the
    line's step, the media files forgotten for no one, the count the API answers
    (`removed += ...` -> `=` or `-=` at each step), and the batches' step dropped (a call per
    key: the same outcome, at a round trip and a script run of up to BATCH keys per key)."""
    await harness.service.coordinator.line.set_online("maria", "Maria", now_ms())
    store = booking_store(harness)
    booking = await live_a_life(harness, waha, ERASED, NAME, store, 0)
    await live_a_life(harness, waha, OTHER, "Otavio Nunes", store, 1)
    # Both wait in the session's own line too (live_a_life puts them in a team's).
    waiting = LineKeys(key_prefix).waiting(ERASED.session)
    await harness.redis.zadd(waiting, {ERASED.token: 1, OTHER.token: 2})
    await crowd(harness, key_prefix)
    media = MediaLibrary(
        harness.redis, MediaKeys(key_prefix), DirectoryStore(tmp_path), retention_seconds=3600
    )
    for who in (ERASED, OTHER):
        await media.save(who.token, b"photo of " + who.chat_id.encode(), "image/jpeg", None)
    before = snapshot(sync_redis, key_prefix)
    # The erased customer's keys of each kind outnumber a batch.
    for family in (b":lid:", b":seen:default:m:", b":{console}:read:"):
        holding = [
            k
            for k, (_, _, value) in before.items()
            if family in k and any(n in k or n in repr(value).encode() for n in needles())
        ]
        assert len(holding) > BATCH, family
    bookings_erased: list[int] = []

    async def also() -> int:
        bookings_erased.append(await store.erase_customer(ERASED.token))
        return bookings_erased[-1]

    calls: collections.Counter[str] = collections.Counter()
    real_call, real_mget = LuaScript.__call__, harness.redis.mget

    async def counted(self: LuaScript, client: Any, keys: Any, args: Any) -> Any:
        calls[self.name] += 1
        return await real_call(self, client, keys, args)

    async def counted_mget(keys: Any, *args: Any) -> Any:
        calls["mget"] += 1
        return await real_mget(keys, *args)

    monkeypatch.setattr(LuaScript, "__call__", counted)
    monkeypatch.setattr(harness.redis, "mget", counted_mget)

    removed = await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session=ERASED.session,
        chat_id=ERASED.chat_id, also=also, media=media,
    )  # fmt: skip

    after = snapshot(sync_redis, key_prefix)
    assert_erased_exactly(before, after, needles(booking), counters=(fence_of(ERASED, key_prefix),))
    files = sorted(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())  # noqa: ASYNC240
    assert files == [b"photo of " + OTHER.chat_id.encode()]
    # Everything counted once: the keys and entries that went, the bookings as `also` counts
    # them, and the one stored file.
    assert bookings_erased[0] > 0
    assert removed == tally(before, after) + bookings_erased[0] + 1
    # In batches of BATCH, not one call per key found, nor a call per every lid of the session:
    # over 2,200 lids read, over 1,100 of each kind to delete.
    assert calls["mget"] == 5
    for script in ("erase_markers", "erase_session", "erase_console"):
        assert calls[script] == 3, script


async def test_a_lid_chat_whose_number_is_unknown_leaves_other_unknown_lids_alone(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix
) -> None:
    """A lid chat whose lookup is cached as unknown ("-"): its own entry goes, and the other
    chats' "-" entries stay (they are other people's). Kills: the `!= "-"` of the cached
    lookup changed (the erase then takes "-" for the customer's number and deletes every
    unknown lookup of the session)."""
    chat = "777@lid"
    lids = WahaSessionKeys("default", key_prefix)
    await harness.redis.set(lids.lid(chat), "-")
    for other in ("778@lid", "779@lid"):
        await harness.redis.set(lids.lid(other), "-")
    for text in ("oi", NAME):
        assert await harness.webhook(text_message(chat, text))
    await harness.drain()
    before = snapshot(sync_redis, key_prefix)

    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=chat
    )

    after = snapshot(sync_redis, key_prefix)
    erased = Conversation("default", chat)
    assert_erased_exactly(
        before, after, [chat.encode(), NAME.encode()], counters=(fence_of(erased, key_prefix),)
    )
    for other in ("778@lid", "779@lid"):
        assert after[lids.lid(other).encode()][2] == b"-"


@pytest.mark.parametrize("session", ["s*", "s?", "s[x]", "s\\x"])
async def test_a_session_name_with_glob_characters_erases_its_own_keys_only(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix, session: str
) -> None:
    """WAHA session names hold no glob characters today (the API refuses them), but the erase
    finds keys by SCAN patterns built from the name. Each session here, read as a pattern,
    matches the session "sx", whose lid cache maps a lid to the same person's number and whose
    dedupe markers name the same chat: another business line's data, which must stay. Kills:
    `_glob_escape` not escaping (its character test negated or emptied, its escape changed)."""
    erased = Conversation(session, ERASED.chat_id)
    await harness.service.coordinator.line.set_online("maria", "Maria", now_ms())
    store = booking_store(harness)
    booking = await live_a_life(harness, waha, erased, NAME, store, 0)
    await live_a_life(harness, waha, OTHER, "Otavio Nunes", store, 1)
    neighbour = WahaSessionKeys("sx", key_prefix).lid("900000001@lid")
    await harness.redis.set(neighbour, PHONE)
    shard = keys_for_conversation(session, erased.chat_id, 3, key_prefix).shard_keys
    marker = shard.seen_message("sx", f"message:false_{erased.chat_id}_3EB0{1:016X}")
    await harness.redis.set(marker, "1", ex=3600)
    before = snapshot(sync_redis, key_prefix)

    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session=session, chat_id=erased.chat_id,
        also=lambda: store.erase_customer(erased.token),
    )  # fmt: skip

    after = snapshot(sync_redis, key_prefix)
    assert_erased_exactly(
        before, after, needles(booking), counters=(fence_of(erased, key_prefix),),
        kept=(neighbour.encode(), marker.encode()),
    )  # fmt: skip


async def test_markers_that_expire_during_the_erase_do_not_fail_it(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix, monkeypatch
) -> None:
    """Dedupe markers live for the dedupe window: one found by the scan may be gone by the time
    the erase deletes it. That is not a lost lease. Kills: `gone < 0` -> `<= 0` / `< 1` (the
    erase refused as "lost its lease", every time the customer's markers happen to expire)."""
    for text in ("oi", NAME):
        assert await harness.webhook(text_message(ERASED.chat_id, text))
    await harness.drain()
    real_markers = engine.erase._markers

    async def expired_meanwhile(*args: Any) -> list[str]:
        found = await real_markers(*args)
        assert found
        await harness.redis.delete(*found)
        return found

    monkeypatch.setattr(engine.erase, "_markers", expired_meanwhile)
    before = snapshot(sync_redis, key_prefix)

    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
    )

    after = snapshot(sync_redis, key_prefix)
    assert_erased_exactly(before, after, needles(), counters=(fence_of(ERASED, key_prefix),))


async def test_the_marker_of_a_message_queued_during_the_erase_is_kept(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix, monkeypatch
) -> None:
    """A message that arrives while the erase runs is a new one: it stays queued, and so does
    its marker, so WAHA delivering it again (under another event id: `message` and
    `message.any`, or a redelivery) is still a duplicate. Kills, in _markers: the queued
    bodies' payload or event not read (`payload = None`, `.get(...)` changed,
    `message_key_of(None, ...)`), the marker to keep named wrongly (`discard(None)`,
    `seen_message(None, ...)`, `seen_message(session, None)`)."""
    for text in ("oi", NAME):
        assert await harness.webhook(text_message(ERASED.chat_id, text))
    await harness.drain()
    arrived = text_message(ERASED.chat_id, "cheguei agora")
    real_markers = engine.erase._markers

    async def message_arrives_then_scan(*args: Any) -> list[str]:
        assert await harness.webhook(arrived)
        return await real_markers(*args)

    monkeypatch.setattr(engine.erase, "_markers", message_arrives_then_scan)
    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
    )

    shard = keys_for_conversation(ERASED.session, ERASED.chat_id, 3, key_prefix).shard_keys
    kept = message_key_of(arrived["event"], arrived["payload"])
    assert kept and await harness.redis.exists(shard.seen_message(ERASED.session, kept))
    again = {**arrived, "id": "evt_" + "0" * 26, "event": "message.any"}
    assert not await harness.webhook(again)
    # Every other marker of the customer went.
    markers = list(sync_redis.scan_iter(match=f"{key_prefix}:*:seen:*_{ERASED.chat_id}_*"))
    assert markers == [shard.seen_message(ERASED.session, kept).encode()]


async def test_an_erase_that_loses_its_lease_stops_and_says_so(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix, monkeypatch
) -> None:
    """The erase holds the conversation's lease while it deletes the dedupe markers. Were it
    too slow, its lease reaped and the conversation handed to a worker (a new fence), then a
    message may be queued and handled meanwhile, and its marker is what keeps WAHA's repeat of
    it out. The erase then deletes no marker and stops with ConversationBusy ("erase again"),
    instead of going on as if it had erased everything. Kills: `if gone < 0` in erase_customer
    dropped or changed (`< -1`)."""
    for text in ("oi", NAME):
        assert await harness.webhook(text_message(ERASED.chat_id, text))
    await harness.drain()
    meta = keys_for_conversation(ERASED.session, ERASED.chat_id, 3, key_prefix).meta
    real_markers = engine.erase._markers
    found: list[str] = []

    async def reaped_meanwhile(*args: Any) -> list[str]:
        found.extend(await real_markers(*args))
        assert found
        await harness.redis.hset(meta, "fence", "999999")  # the reaper's new lease
        return found

    monkeypatch.setattr(engine.erase, "_markers", reaped_meanwhile)
    with pytest.raises(ConversationBusy, match="lost its lease"):
        await erase_customer(
            harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
        )
    assert sync_redis.exists(*found) == len(found)


async def test_a_conversation_with_one_queued_message_and_no_meta_is_not_erased(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix
) -> None:
    """The erase's own guard against a queue it does not understand: one message waiting in
    the conversation's queue while its meta says nothing (lost, say, to an operator's DEL).
    Erasing would delete that message's body and drop it unhandled, so the erase is refused
    and nothing is deleted. Kills: erase_conversation.lua's `LLEN > 0` -> `> 1`."""
    for text in ("oi", NAME):
        assert await harness.webhook(text_message(ERASED.chat_id, text))
    await harness.drain()
    queue = keys_for_conversation(ERASED.session, ERASED.chat_id, 3, key_prefix)
    assert not sync_redis.exists(queue.meta)
    sync_redis.rpush(queue.messages, "m-orphan")
    before = snapshot(sync_redis, key_prefix)
    with pytest.raises(ConversationBusy):
        await erase_customer(
            harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
        )
    assert snapshot(sync_redis, key_prefix) == before
