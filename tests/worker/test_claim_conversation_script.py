"""claim_conversation.lua: taking the lease and reading the head messages."""

from __future__ import annotations

import time

from shared.lua import LuaScript
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import keys_of, lease_chat, queue_chat, state, texts_of


async def test_claim_leases_and_reads_oldest_first(queue: Queue) -> None:
    chat = chat_id(1)
    ids = await queue_chat(queue, chat, ["a", "b", "c"])
    consumer = queue.consumer(lease_ms=5000)
    before = time.time() * 1000

    lease = await lease_chat(queue, consumer, chat, owner="w1")

    assert [m.id for m in lease.messages] == ids
    assert texts_of(lease) == ["a", "b", "c"]
    assert [m.attempts for m in lease.messages] == [0, 0, 0]
    assert lease.fence == 1
    assert before + 5000 - 50 <= lease.until_ms <= time.time() * 1000 + 5000 + 50
    keys = keys_of(queue, chat)
    assert await state(queue, chat) == "leased"
    assert await queue.client.hget(keys.meta, "owner") == b"w1"
    assert int(await queue.client.zscore(keys.shard_keys.leases, keys.token)) == lease.until_ms
    assert await queue.client.llen(keys.shard_keys.claimed) == 0
    assert await queue.client.llen(keys.messages) == 3  # reading is not removing


async def test_claim_reads_at_most_a_batch(queue: Queue) -> None:
    chat = chat_id(2)
    await queue_chat(queue, chat, [f"m{n}" for n in range(12)])
    lease = await lease_chat(queue, queue.consumer(batch=10), chat)
    assert texts_of(lease) == [f"m{n}" for n in range(10)]


async def test_token_taken_back_by_the_reaper_is_not_claimed(queue: Queue) -> None:
    chat = chat_id(3)
    await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    keys = keys_of(queue, chat)
    token = await consumer.pop_ready(keys.shard_keys)
    assert token == keys.token
    # What reclaim_stale_claims does: the token leaves `claimed` for the front of the line.
    await queue.client.lrem(keys.shard_keys.claimed, 1, token)
    await queue.client.rpush(keys.shard_keys.ready, token)

    assert await consumer.claim(keys.shard_keys, token, "slow-worker") is None
    assert await state(queue, chat) == "ready"
    assert await queue.client.hget(keys.meta, "fence") is None
    assert await queue.client.zcard(keys.shard_keys.leases) == 0


async def test_retried_claim_finds_its_own_lease_and_no_one_elses(queue: Queue) -> None:
    chat = chat_id(4)
    await queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat, owner="w1:7")
    keys = keys_of(queue, chat)

    again = await consumer.claim(keys.shard_keys, keys.token, "w1:7")
    assert again is not None
    assert (again.fence, again.until_ms) == (lease.fence, lease.until_ms)
    assert [m.id for m in again.messages] == [m.id for m in lease.messages]
    assert await consumer.claim(keys.shard_keys, keys.token, "w2:1") is None
    assert int(await queue.client.hget(keys.meta, "fence")) == 1


async def test_claimed_conversation_without_messages_goes_idle(queue: Queue) -> None:
    chat = chat_id(5)
    keys = keys_of(queue, chat)
    shard = keys.shard_keys
    await queue.client.hset(keys.meta, "state", "ready")
    await queue.client.lpush(shard.claimed, keys.token)

    assert await queue.consumer().claim(shard, keys.token, "w") is None
    assert await queue.client.exists(keys.meta) == 0  # idle: no meta
    assert await queue.client.zcard(shard.leases) == 0


async def test_script_starts_with_a_shebang_and_names_its_keys() -> None:
    source = LuaScript.named("claim_conversation").source
    assert source.startswith("#!lua\n")
    assert "local claimed_key = KEYS[1]" in source
