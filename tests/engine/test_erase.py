"""The LGPD erase on a real Redis, driven through the real queue and engine: exact (nothing of
another customer changes, byte for byte, even when their id contains the erased one), atomic
(refused with nothing deleted while the conversation is handled; a message that arrives during
the erase is kept and handled), fenced (a stale worker stays out) and complete."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
import redis
import redis.cluster

import engine.erase
from engine.erase import erase_customer, message_key_names_chat
from engine.identity import Conversation
from engine.sender import ECHO_WAIT_MS
from shared.keys import (
    WahaSessionKeys,
    engine_keys_for,
    hash_tag_of,
    keys_for_conversation,
)
from shared.lua import LuaScript
from shared.queue_errors import ConversationBusy, LeaseLost
from shared.redis_client import connect
from tests.conftest import keys_with_prefix
from tests.engine.erase_support import (
    assert_left_as,
    booking_store,
    live_a_life,
    now_ms,
    snapshot,
    values_of,
)
from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.support.waha import text_message

ERASED = Conversation("default", "1@c.us")
# Every one of these contains the erased id (or shares its chat id in another session).
OTHERS = [
    Conversation("default", "5511987650001@c.us"),
    Conversation("default", "11@c.us"),
    Conversation("other", "1@c.us"),
]
NAMES = {ERASED: "Ana Souza", OTHERS[0]: "Bia Lima", OTHERS[1]: "Caio Reis", OTHERS[2]: "Duda"}


@pytest.fixture
def harness(make_harness) -> Harness:
    return make_harness(queue_shards=3, conversations_per_agent=1)


async def test_erasing_one_customer_leaves_every_other_key_byte_for_byte(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix
) -> None:
    await erase_exactly(harness, waha, sync_redis, key_prefix)


async def test_the_erase_runs_unchanged_on_a_redis_cluster(
    redis_cluster_url: str, redis_url: str, waha: FakeWaha, key_prefix: str
) -> None:
    """The same erase, exact to the byte, on a three-master Redis Cluster: every script's keys
    share a hash tag, and the scans reach every master."""
    client = connect(redis_cluster_url)
    sync_client = redis.cluster.RedisCluster.from_url(
        "redis://" + redis_cluster_url.removeprefix("redis+cluster://")
    )
    harness = Harness(
        client, settings_for(key_prefix, redis_url, queue_shards=3, conversations_per_agent=1)
    )
    try:
        await erase_exactly(harness, waha, sync_client, key_prefix)
    finally:
        await harness.aclose()
        await client.aclose()
        sync_client.close()


async def erase_exactly(harness: Harness, waha: FakeWaha, sync_redis: Any, key_prefix: str) -> None:
    await harness.service.coordinator.line.set_online("maria", "Maria", now_ms())
    await harness.service.coordinator.line.set_online("joao", "João", now_ms())
    store = booking_store(harness)
    bookings = {}
    for n, who in enumerate([OTHERS[0], ERASED, *OTHERS[1:]]):
        bookings[who] = await live_a_life(harness, waha, who, NAMES[who], store, n)
        # A lease the reaper took back left its last ack for the holder's retry (lib/ack.lua).
        queue_keys = keys_for_conversation(who.session, who.chat_id, 3, key_prefix)
        await harness.redis.set(queue_keys.reaped_ack, f"7:m{n}", px=600_000)
    erased_booking = bookings[ERASED].encode()
    before = snapshot(sync_redis, key_prefix)
    token = ERASED.token.encode()

    def erased_element(kind: bytes, element: Any) -> bool:
        """An entry of a shared key that is the erased customer's (exact, by structure)."""
        if element in (token, erased_booking):  # indexes, the line, a day's slots
            return True
        if kind == b"stream":  # the console's events: a field holds the token
            return token in element[1].values()
        if kind != b"list":
            return False
        header = element.partition(b"\n")[0]
        document = orjson.loads(header)
        customer = (document.get("body") or {}).get("customer") or {}
        return document.get("conversation") == ERASED.token or (
            customer.get("session"),
            customer.get("chat_id"),
        ) == (ERASED.session, ERASED.chat_id)

    # The erased customer is in every shared family the test checks below.
    shared_families = [
        b":dlq", b":outbox:dlq", b":hooks:dead", b":{eng}:convs", b":{line}:joined",
        b":{console}:events", b":{console}:read:maria", b":w:default:t:financeiro",
    ]  # fmt: skip
    for family in shared_families:
        holders = [k for k in before if k.endswith(family)]
        assert any(erased_element(before[k][1], e) for k in holders for e in before[k][2]), family

    removed = await erase_customer(
        harness.redis, prefix=key_prefix, shards=harness.settings.queue_shards,
        session=ERASED.session, chat_id=ERASED.chat_id,
        also=lambda: store.erase_customer(ERASED.token),
    )  # fmt: skip
    assert removed > 0
    after = snapshot(sync_redis, key_prefix)

    def is_erased_key(key: bytes) -> bool:
        """Keys that belong to the erased customer alone (the test's own rule, by name)."""
        text = key.decode()
        session_tag = f"{key_prefix}:{{s:default}}:"
        return (
            f":c:{ERASED.token}:" in text
            or text == f"{session_tag}inflight:{ERASED.chat_id}"
            or (text.startswith(f"{session_tag}lid:") and before[key][2] == b"1")
            or (":seen:default:m:" in text and f"_{ERASED.chat_id}_" in text)
            or text.endswith(f":{ERASED.token}")  # the calendar's index of their bookings
            or text.endswith(f":b:{bookings[ERASED]}")
        )

    # The erased customer had a key in every family of their own (a marker, a lid, ...).
    erased_keys = [k.decode() for k in before if is_erased_key(k)]
    own_families = (":seen:default:m:", ":lid:", ":inflight:", ":hist", ":state", ":custall:")
    for family in (*own_families, ":reaped"):
        assert any(family in k for k in erased_keys), family
    assert set(after) <= set(before), set(after) - set(before)
    changed_shared = []
    erased_shard = keys_for_conversation(ERASED.session, ERASED.chat_id, 3, key_prefix).shard_keys
    for key, (dump, kind, value) in before.items():
        if is_erased_key(key):
            assert key not in after, key
            continue
        if key == erased_shard.fence.encode():  # the erase took a lease: its counter grew
            assert int(after[key][2]) > int(value)
            continue
        if kind in (b"list", b"set"):
            expected: Any = [e for e in value if not erased_element(kind, e)]
            if kind == b"set":
                expected = set(expected)
        elif kind == b"zset":
            expected = {m: s for m, s in value.items() if m != token}
        elif kind == b"stream":
            expected = [(i, f) for i, f in value if token not in f.values()]
        elif kind == b"hash":
            expected = {f: v for f, v in value.items() if f != token and v != erased_booking}
        else:
            expected = value
        assert_left_as(key, (dump, kind, value), expected, after)
        if expected and expected != value:
            changed_shared.append(key)
    assert len(changed_shared) >= len(shared_families)
    # And nothing names the erased conversation any more.
    for key, (_, kind, value) in after.items():
        assert not is_erased_key(key)
        for element in values_of(kind, value):
            assert token not in element, (key, element)
            if kind == b"list":
                assert not erased_element(kind, element), (key, element)


def test_a_marker_names_a_chat_only_exactly() -> None:
    assert message_key_names_chat("message:false_1@c.us_3EB0AA", "1@c.us")
    assert message_key_names_chat("message.ack:true_1@c.us_3EB0AA:3", "1@c.us")
    assert not message_key_names_chat("message:false_5511987650001@c.us_3EB0AA", "1@c.us")
    assert not message_key_names_chat("message:false_1@c.us.br_3EB0AA", "1@c.us")
    # A group message whose participant is the customer is the group's, not this chat's.
    assert not message_key_names_chat("message:false_123@g.us_3EB0AA_1@c.us", "1@c.us")


# --- atomicity --------------------------------------------------------------------------------


async def _busy(harness: Harness, state: str) -> None:
    """Leave ERASED's conversation ready, leased or delayed."""
    assert await harness.webhook(text_message(ERASED.chat_id, "oi"))
    if state == "ready":
        return
    shard = keys_for_conversation(
        ERASED.session, ERASED.chat_id, harness.settings.queue_shards, harness.settings.key_prefix
    ).shard_keys
    token = await harness.consumer.pop_ready(shard)
    lease = await harness.consumer.claim(shard, token or "", uuid.uuid4().hex)
    assert lease is not None
    if state == "delayed":
        await harness.consumer.fail(lease, lease.messages[0].id, "try later")


@pytest.mark.parametrize("state", ["ready", "leased", "delayed", "sending", "attempted"])
async def test_a_busy_conversation_is_refused_with_nothing_deleted(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix, state: str
) -> None:
    for text in ("oi", "Ana Souza"):
        await harness.webhook(text_message(ERASED.chat_id, text))
    await harness.drain()
    conversation = engine_keys_for(ERASED.session, ERASED.chat_id, 3, key_prefix)
    if state == "sending":
        # A sender holds the delivery lock: a reply is on its way to WAHA.
        await harness.redis.set(conversation.sending, "sender-1", px=60_000)
    elif state == "attempted":
        # A sender stopped between WAHA's 201 and recording it: no lock any more, but the
        # head reply carries its attempt until the echo records it (found by an audit: the
        # erase went on, and the late echo brought the conversation back, paused).
        await harness.redis.rpush(
            conversation.outbox,
            orjson.dumps({"mid": "r1", "text": "Olá", "try": {"lock": "s1", "at": now_ms()}}),
        )
    else:
        await _busy(harness, state)
    meta = keys_for_conversation(ERASED.session, ERASED.chat_id, 3, key_prefix).meta
    assert state in ("sending", "attempted") or sync_redis.hget(meta, "state") == state.encode()
    before = snapshot(sync_redis, key_prefix)
    with pytest.raises(ConversationBusy):
        await erase_customer(
            harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
        )
    assert snapshot(sync_redis, key_prefix) == before


async def test_an_attempt_older_than_the_echo_wait_does_not_hold_the_erase(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix
) -> None:
    """Its echo can no longer come (the sender sends it again then): the erase goes on."""
    for text in ("oi", "Ana Souza"):
        await harness.webhook(text_message(ERASED.chat_id, text))
    await harness.drain()
    conversation = engine_keys_for(ERASED.session, ERASED.chat_id, 3, key_prefix)
    long_ago = now_ms() - 2 * ECHO_WAIT_MS
    await harness.redis.rpush(
        conversation.outbox,
        orjson.dumps({"mid": "r1", "text": "Olá", "try": {"lock": "s1", "at": long_ago}}),
    )
    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
    )
    assert not sync_redis.exists(conversation.outbox, conversation.state)


async def test_a_message_that_arrives_during_the_erase_is_kept_and_handled(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix, monkeypatch
) -> None:
    for text in ("oi", "Ana Souza"):
        await harness.webhook(text_message(ERASED.chat_id, text))
    await harness.drain()
    arrived: list[dict[str, Any]] = []
    real_markers = engine.erase._markers

    async def message_arrives_then_scan(*args: Any) -> list[str]:
        # WAHA delivers a message while the erase runs: right before its marker scan, so the
        # scan sees this message's marker and must leave it alone.
        document = text_message(ERASED.chat_id, "cheguei agora")
        assert await harness.webhook(document)  # the gateway told WAHA `queued`
        arrived.append(document)
        return await real_markers(*args)

    async def another_arrives() -> int:
        # ... and one while the erase clears the other tags.
        document = text_message(ERASED.chat_id, "e mais esta")
        assert await harness.webhook(document)
        arrived.append(document)
        return 0

    monkeypatch.setattr(engine.erase, "_markers", message_arrives_then_scan)
    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id,
        also=another_arrives,
    )  # fmt: skip
    # Both wait in the queue; a repeat of either is still a duplicate (markers kept).
    for document in arrived:
        assert not await harness.webhook(document)
    sent_before = len(waha.to(ERASED.chat_id))
    await harness.drain()
    # Handled from scratch: the bot greets a new customer, and the history holds only them.
    assert len(waha.to(ERASED.chat_id)) > sent_before
    history = engine_keys_for(ERASED.session, ERASED.chat_id, 3, key_prefix).history
    stream = str(sync_redis.xrange(history))
    assert "Ana Souza" not in stream
    assert "cheguei agora" in stream and "e mais esta" in stream


async def test_a_stale_worker_stays_fenced_out_after_the_erase(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix
) -> None:
    """Today's DEL reset the fence to 1, so the old holder's fence matched the next lease."""
    consumer = harness.consumer
    shard = keys_for_conversation(ERASED.session, ERASED.chat_id, 3, key_prefix).shard_keys
    document = text_message(ERASED.chat_id, "oi")
    assert await harness.webhook(document)
    stale = await consumer.claim(shard, await consumer.pop_ready(shard) or "", "worker-a")
    assert stale is not None
    await consumer.ack(stale, stale.messages[0].id)
    await consumer.release(stale)
    # The worker stalls here (GC pause, partition) still holding `stale`.
    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
    )
    # The customer writes again (WAHA redelivers the same event after the dedupe window).
    sync_redis.delete(*[k for k in keys_with_prefix(sync_redis, key_prefix) if b":seen:" in k])
    assert await harness.webhook(document)
    fresh = await consumer.claim(shard, await consumer.pop_ready(shard) or "", "worker-b")
    assert fresh is not None and fresh.fence > stale.fence
    before = snapshot(sync_redis, key_prefix)
    state = engine_keys_for(ERASED.session, ERASED.chat_id, 3, key_prefix).state
    with pytest.raises(LeaseLost):
        await consumer.ack(stale, fresh.messages[0].id, [("HSET", state, "state", "zombie")])
    with pytest.raises(LeaseLost):
        await consumer.extend(stale)
    assert not await consumer.release(stale)
    assert snapshot(sync_redis, key_prefix) == before
    await consumer.ack(fresh, fresh.messages[0].id)


async def test_every_script_of_the_erase_touches_one_hash_tag(
    harness: Harness, waha: FakeWaha, key_prefix, monkeypatch
) -> None:
    """Redis Cluster runs a script only when all its keys are in one slot: each call of the
    erase declares keys of a single hash tag (so it runs unchanged on a cluster)."""
    await harness.service.coordinator.line.set_online("maria", "Maria", now_ms())
    await live_a_life(harness, waha, ERASED, "Ana Souza", booking_store(harness), 0)
    calls: list[tuple[str, set[str]]] = []
    real_call = LuaScript.__call__

    async def recording(self: LuaScript, client: Any, keys: Any, args: Any) -> Any:
        calls.append(
            (self.name, {hash_tag_of(k if isinstance(k, str) else k.decode()) for k in keys})
        )
        return await real_call(self, client, keys, args)

    monkeypatch.setattr(LuaScript, "__call__", recording)
    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
    )
    names = {name for name, _ in calls}
    assert {"erase_conversation", "erase_markers", "erase_line", "erase_index"} <= names
    assert {"erase_session", "erase_calendar", "erase_console", "release_conversation"} <= names
    for name, tags in calls:
        assert len(tags) == 1, (name, tags)


async def test_erasing_a_lid_chat_forgets_its_number_everywhere_in_the_lid_cache(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix
) -> None:
    """A `@lid` chat's own cached lookup goes, and so does every other lid of the session that
    maps to the same number; a number that merely contains it, and "unknown" answers, stay."""
    lids = WahaSessionKeys("default", key_prefix)
    await harness.redis.set(lids.lid("777@lid"), "5511900000077")
    await harness.redis.set(lids.lid("778@lid"), "5511900000077")  # the same person, older lid
    await harness.redis.set(lids.lid("779@lid"), "55119000000770")
    await harness.redis.set(lids.lid("780@lid"), "-")
    await harness.redis.set(WahaSessionKeys("other", key_prefix).lid("781@lid"), "5511900000077")
    assert await harness.webhook(text_message("777@lid", "oi"))
    await harness.drain()
    before = snapshot(sync_redis, key_prefix)
    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id="777@lid"
    )
    after = snapshot(sync_redis, key_prefix)
    assert lids.lid("777@lid").encode() not in after
    assert lids.lid("778@lid").encode() not in after
    for kept in (lids.lid("779@lid"), lids.lid("780@lid")):
        assert after[kept.encode()][0] == before[kept.encode()][0]
    # Another WAHA session is another business line: its cache is its own.
    other = WahaSessionKeys("other", key_prefix).lid("781@lid").encode()
    assert after[other][0] == before[other][0]
    assert not [key for key in after if b"777@lid" in key]
