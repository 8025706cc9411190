"""enqueue_event.lua and the producer around it, against a real Redis."""

from __future__ import annotations

import orjson
import pytest

from shared.enqueue import EnqueueRequest, enqueue, enqueue_many
from shared.envelope import decode_record
from shared.events import route_event
from shared.keys import ShardKeys, conversation_token, shard_of
from tests.support.waha import compact, text_message


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
