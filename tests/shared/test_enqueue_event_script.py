"""enqueue_event.lua and the producer around it, against a real Redis."""

from __future__ import annotations

import orjson
import pytest

from shared.enqueue import (
    DUPLICATE,
    ENQUEUE_EVENT,
    QUEUED,
    SETTLED,
    EnqueueRequest,
    enqueue,
    enqueue_many,
)
from shared.envelope import decode_record
from shared.events import route_event
from shared.keys import ShardKeys, conversation_token, engine_keys_for, shard_of
from shared.redis_client import connect
from tests.support.waha import compact, from_me, load_fixture, text_message


def request_for(document: dict, prefix: str, shards: int = 1) -> tuple[EnqueueRequest, bytes]:
    body = compact(document)
    routed = route_event(orjson.loads(body), body)
    assert routed is not None
    return (
        EnqueueRequest.for_event(
            routed, body, received_at_ms=1, shards=shards, dedupe_ttl_seconds=60, prefix=prefix
        ),
        body,
    )


async def test_queues_in_fifo_order_and_marks_conversation_ready_once(aredis, key_prefix):
    chat = "5511999990001@c.us"
    for n in range(3):
        request, _ = request_for(text_message(chat, f"m{n}"), key_prefix)
        assert await enqueue(aredis, request) is True

    shard = ShardKeys(0, key_prefix)
    conv = shard.conversation(conversation_token("default", chat))
    ids = await aredis.lrange(conv.messages, 0, -1)
    # Oldest at the right: RPOP/LMOVE RIGHT takes messages in arrival order.
    bodies = [decode_record(await aredis.hget(conv.bodies, i)).document() for i in reversed(ids)]
    assert [b["payload"]["body"] for b in bodies] == ["m0", "m1", "m2"]
    assert await aredis.lrange(shard.ready, 0, -1) == [conversation_token("default", chat).encode()]
    assert await aredis.hget(conv.meta, "state") == b"ready"
    assert int(await aredis.hget(shard.stats, "waiting")) == 3


async def test_same_envelope_id_is_a_duplicate(aredis, key_prefix):
    document = text_message("5511999990002@c.us", "oi")
    request, _ = request_for(document, key_prefix)
    assert await enqueue(aredis, request) is True
    assert await enqueue(aredis, request) is False
    shard = ShardKeys(0, key_prefix)
    assert int(await aredis.hget(shard.stats, "waiting")) == 1


async def test_same_message_under_new_envelope_id_is_a_duplicate(aredis, key_prefix):
    first = text_message("5511999990003@c.us", "oi", message_id="ABC", event_id="evt_one")
    second = dict(first, id="evt_two")
    assert await enqueue(aredis, request_for(first, key_prefix)[0]) is True
    assert await enqueue(aredis, request_for(second, key_prefix)[0]) is False


async def test_read_ack_after_device_ack_is_not_a_duplicate(aredis, key_prefix):
    from tests.support.waha import load_fixture

    device = load_fixture("message-ack.json") | {"id": "evt_ack_2"}
    device["payload"] = dict(device["payload"], ack=2, ackName="DEVICE")
    read = load_fixture("message-ack.json")
    assert await enqueue(aredis, request_for(device, key_prefix)[0]) is True
    assert await enqueue(aredis, request_for(read, key_prefix)[0]) is True


async def test_enqueue_many_is_one_pipeline_with_per_event_answers(aredis, key_prefix):
    a = request_for(text_message("5511999990004@c.us", "a"), key_prefix)[0]
    b = request_for(text_message("5511999990005@c.us", "b"), key_prefix)[0]
    assert await enqueue_many(aredis, [a, b, a]) == [True, True, False]


async def test_reloads_script_after_script_flush(aredis, key_prefix):
    await aredis.script_flush()
    request, _ = request_for(text_message("5511999990006@c.us", "x"), key_prefix)
    assert await enqueue_many(aredis, [request]) == [True]
    await aredis.script_flush()
    request2, _ = request_for(text_message("5511999990006@c.us", "y"), key_prefix)
    assert await enqueue(aredis, request2) is True


@pytest.mark.parametrize("shards", [1, 7])
async def test_every_key_of_a_call_shares_one_hash_tag(shards, key_prefix):
    document = text_message("5511999990007@c.us", "oi")
    request, _ = request_for(document, key_prefix, shards=shards)
    token = conversation_token("default", "5511999990007@c.us")
    tag = f"{{q{shard_of(token, shards)}}}"
    assert all(tag in key for key in request.keys)


async def test_a_repeat_after_its_markers_expired_is_a_duplicate_while_still_queued(
    aredis, key_prefix
):
    """A backlog older than the dedupe window: WAHA (or a spool replay) sends an event again
    after its dedupe markers expired, while the first copy still waits in the queue. Without
    the "still queued" check it would be queued a second time and handled twice."""
    chat = "5511999990008@c.us"
    document = text_message(chat, "oi", message_id="STILLQUEUED1", event_id="evt_still_queued")
    request, _ = request_for(document, key_prefix)
    assert await enqueue(aredis, request) is True

    seen_event, seen_message = request.keys[0], request.keys[1]
    assert seen_event != seen_message
    # What their TTL does once the dedupe window is over.
    assert await aredis.delete(seen_event, seen_message) == 2

    assert await enqueue(aredis, request) is False
    shard = ShardKeys(0, key_prefix)
    conv = shard.conversation(conversation_token("default", chat))
    assert await aredis.lrange(conv.messages, 0, -1) == [b"evt_still_queued"]
    assert await aredis.lrange(shard.ready, 0, -1) == [conversation_token("default", chat).encode()]
    assert int(await aredis.hget(shard.stats, "waiting")) == 1


async def test_a_repeat_after_the_first_copy_was_handled_and_markers_expired_is_queued(
    aredis, key_prefix
):
    """The other side of the guard: once the first copy left the queue (handled) and the
    window is over, the event is new again (documented: dedupe holds within the window)."""
    chat = "5511999990009@c.us"
    request, _ = request_for(text_message(chat, "oi", event_id="evt_window_over"), key_prefix)
    assert await enqueue(aredis, request) is True
    shard = ShardKeys(0, key_prefix)
    conv = shard.conversation(conversation_token("default", chat))
    # As the worker's ack does: the message and its record leave the queue.
    await aredis.lrem(conv.messages, 0, "evt_window_over")
    await aredis.hdel(conv.bodies, "evt_window_over")
    await aredis.delete(request.keys[0], request.keys[1])
    assert await enqueue(aredis, request) is True


# --- delivery receipts: recorded at the door when their message is in the history ----------

RECEIPT_CHAT = "5511999990010@c.us"


def receipt(short_id: str, ack: object, event_id: str, chat: str = RECEIPT_CHAT) -> dict:
    """A `message.ack` for one of the business's messages in `chat` (WAHA's shape)."""
    document = load_fixture("message-ack.json") | {"id": event_id}
    document["payload"] = dict(
        document["payload"], id=f"true_{chat}_{short_id}", **{"from": chat}, ack=ack
    )
    return document


async def recorded(aredis, prefix: str, short_id: str, mid: str, status: str) -> str:
    """A message the history knows by its WhatsApp id (as outbox_sent.lua records a reply);
    the key of its history meta."""
    meta = engine_keys_for("default", RECEIPT_CHAT, 1, prefix).history_meta
    await aredis.hset(meta, mapping={f"w:{short_id}": mid, f"{mid}:status": status})
    return meta


async def nothing_queued(aredis, prefix: str) -> None:
    shard = ShardKeys(0, prefix)
    conv = shard.conversation(conversation_token("default", RECEIPT_CHAT))
    assert await aredis.exists(conv.messages, conv.bodies, conv.meta, shard.ready) == 0
    assert await aredis.hget(shard.stats, "waiting") is None


async def test_a_receipt_for_a_recorded_message_moves_its_status_and_queues_nothing(
    aredis, key_prefix
):
    meta = await recorded(aredis, key_prefix, "3EB0AAA", "m-1", "sent")
    request, _ = request_for(receipt("3EB0AAA", 2, "evt_device"), key_prefix)
    assert len(request.keys) == 8
    assert await ENQUEUE_EVENT(aredis, request.keys, request.args) == SETTLED
    assert await aredis.hget(meta, "m-1:status") == b"device"
    await nothing_queued(aredis, key_prefix)
    # Its markers are set like a queued event's: the same delivery again is a duplicate.
    assert await aredis.exists(request.keys[0], request.keys[1]) == 2
    await aredis.hset(meta, "m-1:status", "sent")
    assert await enqueue(aredis, request) is False
    assert await aredis.hget(meta, "m-1:status") == b"sent"
    # The READ that follows is news, recorded too; `enqueue` answers True (durable).
    assert await enqueue(aredis, request_for(receipt("3EB0AAA", 3, "evt_read"), key_prefix)[0])
    assert await aredis.hget(meta, "m-1:status") == b"read"
    await nothing_queued(aredis, key_prefix)


@pytest.mark.parametrize(
    ("had", "ack", "ends"),
    [("read", 2, "read"), ("failed", 3, "failed"), ("played", 3, "played"), ("device", -1, "error"),
     ("received", 3, "read")],
)  # fmt: skip
async def test_a_receipt_at_the_door_never_moves_a_status_back(
    had: str, ack: int, ends: str, aredis, key_prefix
):
    meta = await recorded(aredis, key_prefix, "3EB0BBB", "m-2", had)
    request, _ = request_for(receipt("3EB0BBB", ack, f"evt_{had}_{ack}"), key_prefix)
    assert await ENQUEUE_EVENT(aredis, request.keys, request.args) == SETTLED
    assert await aredis.hget(meta, "m-2:status") == ends.encode()
    await nothing_queued(aredis, key_prefix)


async def test_a_receipt_for_a_message_not_recorded_yet_is_queued_and_touches_no_history(
    aredis, key_prefix
):
    """Its message may be the business phone's, still queued ahead of it, or our reply whose
    send the sender has not recorded yet: the engine's turn handles it in order (it parks it
    for the sender)."""
    meta = engine_keys_for("default", RECEIPT_CHAT, 1, key_prefix).history_meta
    await aredis.hset(meta, "w:3EB0OTHER", "m-9")  # another message is recorded
    request, _ = request_for(receipt("3EB0CCC", 3, "evt_early"), key_prefix)
    assert await ENQUEUE_EVENT(aredis, request.keys, request.args) == QUEUED
    assert await aredis.hgetall(meta) == {b"w:3EB0OTHER": b"m-9"}
    shard = ShardKeys(0, key_prefix)
    conv = shard.conversation(conversation_token("default", RECEIPT_CHAT))
    [queued_id] = await aredis.lrange(conv.messages, 0, -1)
    record = decode_record(await aredis.hget(conv.bodies, queued_id))
    assert (record.event, record.document()["payload"]["ack"]) == ("message.ack", 3)
    assert int(await aredis.hget(shard.stats, "waiting")) == 1


@pytest.mark.parametrize("ack", [None, "READ", 9, True])
async def test_an_ack_without_a_known_level_is_queued_as_before(ack, aredis, key_prefix):
    """No status to record: the engine's turn acks it as it is."""
    meta = await recorded(aredis, key_prefix, "3EB0DDD", "m-4", "sent")
    request, _ = request_for(receipt("3EB0DDD", ack, f"evt_bad_{ack}"), key_prefix)
    assert len(request.keys) == 7
    assert await ENQUEUE_EVENT(aredis, request.keys, request.args) == QUEUED
    assert await aredis.hget(meta, "m-4:status") == b"sent"


async def test_a_receipt_still_queued_from_before_is_a_duplicate_at_the_door_too(
    aredis, key_prefix
):
    """Queued while its message was not recorded, repeated after the dedupe window once it is:
    the copy in the queue stays the only one, and the door records nothing."""
    request, _ = request_for(receipt("3EB0EEE", 3, "evt_twice"), key_prefix)
    assert await ENQUEUE_EVENT(aredis, request.keys, request.args) == QUEUED
    meta = await recorded(aredis, key_prefix, "3EB0EEE", "m-5", "sent")
    await aredis.delete(request.keys[0], request.keys[1])  # the markers' window is over
    assert await ENQUEUE_EVENT(aredis, request.keys, request.args) == DUPLICATE
    assert await aredis.hget(meta, "m-5:status") == b"sent"


@pytest.mark.parametrize("shards", [1, 7])
async def test_every_key_of_a_receipt_shares_one_hash_tag(shards, key_prefix):
    request, _ = request_for(receipt("3EB0FFF", 2, "evt_tag"), key_prefix, shards=shards)
    assert len(request.keys) == 8
    token = conversation_token("default", RECEIPT_CHAT)
    tag = f"{{q{shard_of(token, shards)}}}"
    assert all(tag in key for key in request.keys)


def echo(short_id: str, event: str, event_id: str, chat: str = RECEIPT_CHAT) -> dict:
    """Our own message told back (`fromMe`), as `message.any` or its `message` twin."""
    return from_me(chat, "Olá!", short_id) | {"id": event_id, "event": event}


@pytest.mark.parametrize("event", ["message.any", "message"])
async def test_the_echo_of_a_recorded_message_is_settled_at_the_door(event, aredis, key_prefix):
    """It changes nothing (the engine's turn would find the message known and do nothing): not
    queued, the history untouched, and its twin marker set, so the other twin is a duplicate."""
    meta = await recorded(aredis, key_prefix, "3EB0ECHO", "m-6", "device")
    request, _ = request_for(echo("3EB0ECHO", event, "evt_echo"), key_prefix)
    assert (len(request.keys), request.args[-1]) == (8, "")
    assert await ENQUEUE_EVENT(aredis, request.keys, request.args) == SETTLED
    assert await aredis.hgetall(meta) == {b"w:3EB0ECHO": b"m-6", b"m-6:status": b"device"}
    await nothing_queued(aredis, key_prefix)
    other = "message" if event == "message.any" else "message.any"
    twin, _ = request_for(echo("3EB0ECHO", other, "evt_echo_twin"), key_prefix)
    assert await enqueue(aredis, twin) is False


async def test_the_echo_of_a_message_not_recorded_yet_is_queued(aredis, key_prefix):
    """The sender may not have recorded WhatsApp's id yet, or may have died before it: the
    engine's turn settles the send from the echo (engine/sender.py, settle_echo)."""
    request, _ = request_for(echo("3EB0UNSEEN", "message.any", "evt_echo_early"), key_prefix)
    assert await ENQUEUE_EVENT(aredis, request.keys, request.args) == QUEUED
    shard = ShardKeys(0, key_prefix)
    conv = shard.conversation(conversation_token("default", RECEIPT_CHAT))
    assert await aredis.lrange(conv.messages, 0, -1) == [b"evt_echo_early"]


async def test_a_customers_message_carries_no_receipt(aredis, key_prefix):
    """Only the business's own messages (`fromMe`) are settled at the door: a customer's is
    always a turn, even when its id is known (the engine then drops the repeat itself)."""
    meta = engine_keys_for("default", RECEIPT_CHAT, 1, key_prefix).history_meta
    await aredis.hset(meta, "w:3EB0CUST", "3EB0CUST")
    for event in ("message", "message.any"):
        document = text_message(RECEIPT_CHAT, "oi", message_id="3EB0CUST", event=event)
        request, _ = request_for(document | {"id": f"evt_c_{event}"}, key_prefix)
        assert len(request.keys) == 7


async def test_receipts_are_settled_at_the_door_on_a_cluster(redis_cluster_url, key_prefix):
    """The gateway's pipeline over conversations on six shards of a three-master cluster: a
    receipt's history meta carries its queue shard's hash tag, so each script call stays in one
    slot; recorded messages move forward, an unknown one is queued on its own shard."""
    shards = 6
    client = connect(redis_cluster_url)
    try:
        by_shard: dict[int, list[str]] = {}
        for n in range(1000):
            chat = f"5511{n:08d}@c.us"
            by_shard.setdefault(shard_of(conversation_token("default", chat), shards), []).append(
                chat
            )
        chats = [chat for shard in range(shards) for chat in by_shard[shard][:2]]
        requests = []
        for n, chat in enumerate(chats):
            meta = engine_keys_for("default", chat, shards, key_prefix).history_meta
            await client.hset(meta, mapping={f"w:3EB0C{n}": f"m{n}", f"m{n}:status": "sent"})
            document = receipt(f"3EB0C{n}", 3, f"evt_c{n}", chat=chat)
            requests.append(request_for(document, key_prefix, shards=shards)[0])
        unknown = receipt("3EB0NONE", 3, "evt_none", chat=chats[0])
        requests.append(request_for(unknown, key_prefix, shards=shards)[0])

        assert await enqueue_many(client, requests) == [SETTLED] * len(chats) + [QUEUED]
        for n, chat in enumerate(chats):
            meta = engine_keys_for("default", chat, shards, key_prefix).history_meta
            assert await client.hget(meta, f"m{n}:status") == b"read"
        token = conversation_token("default", chats[0])
        conv = ShardKeys(shard_of(token, shards), key_prefix).conversation(token)
        assert await client.lrange(conv.messages, 0, -1) == [b"evt_none"]
    finally:
        await client.aclose()
