"""reap_expired_lease.lua (through a reaper pass): a crashed holder's conversation comes back
first in line, its old holder fenced out, the attempt counted."""

from __future__ import annotations

import pytest

from shared.dead_letters import list_dead_letters
from shared.queue_errors import LeaseLost
from tests.worker.conftest import Queue
from tests.worker.support import protocol
from tests.worker.support.fleet import chat_id


async def test_expired_lease_is_taken_back_to_the_front_and_fenced(queue: Queue) -> None:
    chat, other = chat_id(1), chat_id(2)
    ids = await protocol.queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer(lease_ms=80)
    lease = await protocol.lease_chat(queue, consumer, chat)
    keys = protocol.keys_of(queue, chat)
    await queue.client.lpush(keys.shard_keys.ready, "someone|else")

    reaper = queue.reaper(max_attempts=3)
    assert not await reaper.run_pass(keys.shard_keys)  # not expired yet
    await protocol.wait_past(lease.until_ms)
    report = await reaper.run_pass(keys.shard_keys)

    assert (report.reaped, report.dead) == (1, 0)
    assert (await protocol.ready_order(queue, chat))[0] == keys.token  # front of the line
    assert await protocol.state(queue, chat) == "ready"
    assert int(await queue.client.hget(keys.meta, "fence")) == lease.fence + 1
    assert int(await queue.client.hget(keys.attempts, ids[0])) == 1
    assert int(await queue.client.hget(keys.shard_keys.stats, "redeliveries")) == 1
    assert await queue.client.zcard(keys.shard_keys.leases) == 0
    with pytest.raises(LeaseLost):
        await consumer.ack(lease, ids[0])
    assert await protocol.message_ids(queue, chat) == ids
    del other


async def test_a_message_that_keeps_killing_workers_ends_in_the_dead_letters(
    queue: Queue,
) -> None:
    chat = chat_id(3)
    ids = await protocol.queue_chat(queue, chat, ["poison", "next"])
    consumer = queue.consumer(lease_ms=50)
    reaper = queue.reaper(max_attempts=2)
    keys = protocol.keys_of(queue, chat)
    for _ in range(2):
        lease = await protocol.lease_chat(queue, consumer, chat)
        await protocol.wait_past(lease.until_ms)
        await reaper.run_pass(keys.shard_keys)

    assert await protocol.message_ids(queue, chat) == [ids[1]]
    (letter,) = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert (letter.id, letter.attempts, letter.reason) == (ids[0], 2, "lease_expired")
    assert await protocol.state(queue, chat) == "ready"
    assert await protocol.ready_order(queue, chat) == [keys.token]


async def test_two_reapers_reap_once(queue: Queue) -> None:
    chat = chat_id(4)
    await protocol.queue_chat(queue, chat, ["a"])
    lease = await protocol.lease_chat(queue, queue.consumer(lease_ms=50), chat)
    keys = protocol.keys_of(queue, chat)
    await protocol.wait_past(lease.until_ms)
    first = await protocol.reap_script(queue, keys)
    second = await protocol.reap_script(queue, keys)
    assert (first[0], second[0]) == (1, 0)
    assert await protocol.ready_order(queue, chat) == [keys.token]
    assert int(await queue.client.hget(keys.meta, "fence")) == lease.fence + 1


async def test_pass_lock_admits_one_reaper_per_interval(queue: Queue) -> None:
    shard = protocol.keys_of(queue, chat_id(5)).shard_keys
    reaper = queue.reaper()
    assert await reaper.try_lock(shard, "a") is True
    assert await reaper.try_lock(shard, "b") is False
