"""reclaim_stale_claims.lua: a token a dead worker left in `claimed` goes back to the front of
the line after two reaper passes."""

from __future__ import annotations

from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import keys_of, lease_chat, queue_chat, ready_order, state


async def test_token_left_in_claimed_is_handed_back_on_the_second_pass(queue: Queue) -> None:
    chat = chat_id(1)
    await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    keys = keys_of(queue, chat)
    shard = keys.shard_keys
    assert await consumer.pop_ready(shard) == keys.token  # ... and the worker dies here
    await queue.client.lpush(shard.ready, "someone|else")
    reaper = queue.reaper()

    assert (await reaper.run_pass(shard)).reclaimed == 0
    assert await queue.client.lrange(shard.claimed, 0, -1) == [keys.token.encode()]
    assert (await reaper.run_pass(shard)).reclaimed == 1

    assert await queue.client.llen(shard.claimed) == 0
    assert await ready_order(queue, chat) == [keys.token, "someone|else"]
    assert await state(queue, chat) == "ready"
    assert await consumer.claim(shard, keys.token, "the-dead-worker") is None
    lease = await lease_chat(queue, consumer, chat)
    assert lease.fence == 1


async def test_tokens_claimed_between_passes_are_left_alone(queue: Queue) -> None:
    chat = chat_id(2)
    await queue_chat(queue, chat, ["a"])
    keys = keys_of(queue, chat)
    reaper = queue.reaper()
    assert (await reaper.run_pass(keys.shard_keys)).reclaimed == 0
    lease = await lease_chat(queue, queue.consumer(), chat)
    assert (await reaper.run_pass(keys.shard_keys)).reclaimed == 0
    assert (await reaper.run_pass(keys.shard_keys)).reclaimed == 0
    assert await state(queue, chat) == "leased"
    assert await ready_order(queue, chat) == []
    del lease
