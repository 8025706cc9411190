"""fail_message.lua: a failed attempt — backoff and retry, or the dead letters at the limit."""

from __future__ import annotations

import time

import pytest

from shared.dead_letters import list_dead_letters
from shared.queue_consumer import FailOutcome
from shared.queue_errors import NotHead
from tests.worker.conftest import Queue
from tests.worker.support import protocol
from tests.worker.support.fleet import chat_id


async def test_failure_below_the_limit_delays_the_conversation(queue: Queue) -> None:
    chat = chat_id(1)
    ids = await protocol.queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer(backoff_ms=1000, backoff_max_ms=60_000)
    lease = await protocol.lease_chat(queue, consumer, chat)
    before = time.time() * 1000

    result = await consumer.fail(lease, ids[0], "RuntimeError: boom")

    assert (result.outcome, result.attempts) == (FailOutcome.RETRY, 1)
    keys = protocol.keys_of(queue, chat)
    due = await queue.client.zscore(keys.shard_keys.delayed, keys.token)
    assert before + 1000 - 50 <= due <= time.time() * 1000 + 1000 + 50
    assert await protocol.state(queue, chat) == "delayed"
    assert await protocol.message_ids(queue, chat) == ids
    assert int(await queue.client.hget(keys.attempts, ids[0])) == 1
    assert await queue.client.zcard(keys.shard_keys.leases) == 0
    assert await protocol.ready_order(queue, chat) == []


async def test_backoff_doubles_per_attempt_up_to_its_cap(queue: Queue) -> None:
    chat = chat_id(2)
    ids = await protocol.queue_chat(queue, chat, ["a"])
    consumer = queue.consumer(max_attempts=10, backoff_ms=1000, backoff_max_ms=3000)
    keys = protocol.keys_of(queue, chat)
    delays = []
    for attempt in range(3):
        await queue.client.hset(keys.attempts, ids[0], attempt)
        await queue.client.hset(keys.meta, "state", "ready")
        await queue.client.zrem(keys.shard_keys.delayed, keys.token)
        await queue.client.lpush(keys.shard_keys.ready, keys.token)
        lease = await protocol.lease_chat(queue, consumer, chat)
        now = time.time() * 1000
        await consumer.fail(lease, ids[0], "boom")
        delays.append(await queue.client.zscore(keys.shard_keys.delayed, keys.token) - now)
    assert [round(d, -3) for d in delays] == [1000, 2000, 3000]


async def test_failure_at_the_limit_dead_letters_and_the_chat_goes_on(queue: Queue) -> None:
    chat = chat_id(3)
    ids = await protocol.queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer(max_attempts=3)
    keys = protocol.keys_of(queue, chat)
    record = await queue.client.hget(keys.bodies, ids[0])
    await queue.client.hset(keys.attempts, ids[0], 2)
    lease = await protocol.lease_chat(queue, consumer, chat)

    result = await consumer.fail(lease, ids[0], "RuntimeError: boom\nline 2")

    assert (result.outcome, result.attempts) == (FailOutcome.DEAD, 3)
    assert await protocol.message_ids(queue, chat) == [ids[1]]
    assert await queue.client.hexists(keys.bodies, ids[0]) == 0
    assert await queue.client.hexists(keys.attempts, ids[0]) == 0
    assert int(await queue.client.hget(keys.shard_keys.stats, "waiting")) == 1
    assert await protocol.state(queue, chat) == "ready"
    assert await protocol.ready_order(queue, chat) == [keys.token]
    (letter,) = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert letter.id == ids[0]
    assert letter.conversation == keys.token
    assert letter.error == "RuntimeError: boom\nline 2"
    assert (letter.attempts, letter.reason) == (3, "failed")
    assert letter.record == record  # byte for byte


async def test_terminal_failure_dead_letters_at_once(queue: Queue) -> None:
    chat = chat_id(4)
    ids = await protocol.queue_chat(queue, chat, ["a"])
    consumer = queue.consumer(max_attempts=5)
    lease = await protocol.lease_chat(queue, consumer, chat)
    result = await consumer.fail(lease, ids[0], "InvalidRecord: x", terminal=True)
    assert (result.outcome, result.attempts) == (FailOutcome.DEAD, 1)
    (letter,) = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert letter.reason == "invalid"
    # Idle: a conversation with nothing queued keeps no meta (its fence is the shard's counter).
    assert await queue.client.exists(protocol.keys_of(queue, chat).meta) == 0


async def test_fenced_out_failure_counts_nothing(queue: Queue) -> None:
    chat = chat_id(5)
    ids, consumer, lease, keys = await protocol.hold(queue, chat, ["a"])
    await protocol.fence_out(queue, keys)
    result = await consumer.fail(lease, ids[0], "boom")
    assert result.outcome is FailOutcome.LOST
    assert await queue.client.hget(keys.attempts, ids[0]) is None
    assert await protocol.state(queue, chat) == "leased"


async def test_failure_of_a_message_that_is_not_the_head_is_refused(queue: Queue) -> None:
    chat = chat_id(6)
    ids = await protocol.queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await protocol.lease_chat(queue, consumer, chat)
    with pytest.raises(NotHead):
        await consumer.fail(lease, ids[1], "boom")
    assert await queue.client.hget(protocol.keys_of(queue, chat).attempts, ids[1]) is None


async def test_redis_errors_count_strikes_until_the_cap_makes_one_attempt(queue: Queue) -> None:
    chat = chat_id(7)
    ids = await protocol.queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer(max_attempts=5)
    consumer.redis_errors_per_attempt = 3
    keys = protocol.keys_of(queue, chat)

    for strike in (1, 2):
        lease = await protocol.lease_chat(queue, consumer, chat)
        result = await consumer.fail(lease, ids[0], "redis: TimeoutError", redis_error=True)
        assert result.outcome is FailOutcome.REQUEUED, strike
        assert await queue.client.hget(keys.attempts, ids[0]) is None  # no attempt counted
        assert await protocol.state(queue, chat) == "ready"
        assert await protocol.ready_order(queue, chat) == [keys.token]  # front of the line, at once
        assert await queue.client.zcard(keys.shard_keys.leases) == 0

    lease = await protocol.lease_chat(queue, consumer, chat)
    result = await consumer.fail(lease, ids[0], "redis: TimeoutError", redis_error=True)
    assert (result.outcome, result.attempts) == (FailOutcome.RETRY, 1)
    assert await protocol.state(queue, chat) == "delayed"
    assert await queue.client.hmget(keys.meta, "strike", "strikes") == [None, None]
    assert await protocol.message_ids(queue, chat) == ids


async def test_a_counted_failure_starts_the_strikes_again(queue: Queue) -> None:
    chat = chat_id(8)
    ids = await protocol.queue_chat(queue, chat, ["a"])
    consumer = queue.consumer(max_attempts=5)
    consumer.redis_errors_per_attempt = 2
    keys = protocol.keys_of(queue, chat)
    lease = await protocol.lease_chat(queue, consumer, chat)
    assert (await consumer.fail(lease, ids[0], "x", redis_error=True)).outcome is (
        FailOutcome.REQUEUED
    )
    lease = await protocol.lease_chat(queue, consumer, chat)
    assert (await consumer.fail(lease, ids[0], "RuntimeError")).outcome is FailOutcome.RETRY
    await queue.client.zrem(keys.shard_keys.delayed, keys.token)
    await queue.client.hset(keys.meta, "state", "ready")
    await queue.client.rpush(keys.shard_keys.ready, keys.token)
    lease = await protocol.lease_chat(queue, consumer, chat)
    # One strike after the counted failure: not yet an attempt.
    assert (await consumer.fail(lease, ids[0], "x", redis_error=True)).outcome is (
        FailOutcome.REQUEUED
    )
    assert await queue.client.hget(keys.attempts, ids[0]) == b"1"


async def test_fenced_out_redis_error_counts_no_strike(queue: Queue) -> None:
    chat = chat_id(9)
    ids, consumer, lease, keys = await protocol.hold(queue, chat, ["a"])
    await protocol.fence_out(queue, keys)
    result = await consumer.fail(lease, ids[0], "x", redis_error=True)
    assert result.outcome is FailOutcome.LOST
    assert await queue.client.hmget(keys.meta, "strike", "strikes") == [None, None]
    assert await protocol.ready_order(queue, chat) == []
