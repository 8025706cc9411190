"""promote_delayed.lua (through a reaper pass): a retry whose backoff is over goes to the front."""

from __future__ import annotations

from tests.worker.conftest import Queue
from tests.worker.support import protocol
from tests.worker.support.fleet import chat_id


async def test_delayed_conversation_returns_to_the_front_once_due(queue: Queue) -> None:
    chat = chat_id(1)
    ids = await protocol.queue_chat(queue, chat, ["a"])
    consumer = queue.consumer(backoff_ms=100, backoff_max_ms=100)
    lease = await protocol.lease_chat(queue, consumer, chat)
    await consumer.fail(lease, ids[0], "boom")
    keys = protocol.keys_of(queue, chat)
    await queue.client.lpush(keys.shard_keys.ready, "someone|else")
    due = int(await queue.client.zscore(keys.shard_keys.delayed, keys.token))
    reaper = queue.reaper()

    assert (await reaper.run_pass(keys.shard_keys)).promoted == 0
    assert await protocol.state(queue, chat) == "delayed"
    await protocol.wait_past(due)
    assert (await reaper.run_pass(keys.shard_keys)).promoted == 1

    assert await protocol.state(queue, chat) == "ready"
    assert await protocol.ready_order(queue, chat) == [keys.token, "someone|else"]
    assert await queue.client.zcard(keys.shard_keys.delayed) == 0
    again = await protocol.lease_chat(queue, consumer, chat)
    assert [(m.id, m.attempts) for m in again.messages] == [(ids[0], 1)]


async def test_promotion_is_done_once(queue: Queue) -> None:
    chat = chat_id(2)
    keys = protocol.keys_of(queue, chat)
    await protocol.queue_chat(queue, chat, ["a"])
    await queue.client.lrem(keys.shard_keys.ready, 1, keys.token)
    await queue.client.hset(keys.meta, "state", "delayed")
    await queue.client.zadd(keys.shard_keys.delayed, {keys.token: 1})
    reaper = queue.reaper()
    assert (await reaper.run_pass(keys.shard_keys)).promoted == 1
    assert (await reaper.run_pass(keys.shard_keys)).promoted == 0
    assert await protocol.ready_order(queue, chat) == [keys.token]
