"""A conversation's queue meta exists only while it has something queued or leased, and its
fence never goes back: fences come from the shard's counter (`P:{qn}:fence`), which deleting
the meta (idle, or erased) cannot lower."""

from __future__ import annotations

import pytest

from shared.queue_consumer import FailOutcome
from shared.queue_errors import LeaseLost
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import keys_of, lease_chat, queue_chat, ready_order, wait_past


async def meta_keys(queue: Queue) -> list[bytes]:
    found: list[bytes] = []
    for node_client in getattr(queue.client, "get_primaries", lambda: [None])():
        if node_client is None:
            found += [k async for k in queue.client.scan_iter(match=f"{queue.prefix}:*:meta")]
        else:
            found += [
                k
                async for k in queue.client.scan_iter(
                    match=f"{queue.prefix}:*:meta", target_nodes=node_client
                )
            ]
    return found


async def test_no_meta_is_left_once_conversations_are_done(queue: Queue) -> None:
    """Every way a turn ends with nothing queued leaves no meta behind: release, a dead letter,
    a reaped lease, a claim that found nothing."""
    consumer = queue.consumer(max_attempts=1)
    released, dead, reaped, empty = (chat_id(n) for n in (1, 2, 3, 4))
    for chat in (released, dead, reaped, empty):
        await queue_chat(queue, chat, ["a"])

    lease = await lease_chat(queue, consumer, released)
    await consumer.ack(lease, lease.messages[0].id)
    assert await consumer.release(lease) is True

    lease = await lease_chat(queue, consumer, dead)
    result = await consumer.fail(lease, lease.messages[0].id, "boom")
    assert result.outcome is FailOutcome.DEAD

    lease = await lease_chat(queue, queue.consumer(lease_ms=50), reaped)
    await wait_past(lease.until_ms)
    await queue.reaper(max_attempts=1).run_pass(keys_of(queue, reaped).shard_keys)

    keys = keys_of(queue, empty)
    await queue.client.delete(keys.messages)  # as if its messages had gone meanwhile
    token = await consumer.pop_ready(keys.shard_keys)
    assert token == keys.token
    assert await consumer.claim(keys.shard_keys, token, "w") is None  # nothing to lease

    assert await meta_keys(queue) == []
    for chat in (released, dead, reaped, empty):
        assert await ready_order(queue, chat) == []


async def test_the_fence_keeps_growing_across_idle_periods(queue: Queue) -> None:
    chat = chat_id(5)
    consumer = queue.consumer()
    fences = []
    for text in ("a", "b", "c"):
        await queue_chat(queue, chat, [text])
        lease = await lease_chat(queue, consumer, chat)
        fences.append(lease.fence)
        await consumer.ack(lease, lease.messages[0].id)
        await consumer.release(lease)
        assert await queue.client.exists(keys_of(queue, chat).meta) == 0
    assert fences == sorted(set(fences))


async def test_a_zombie_is_still_fenced_out_after_the_meta_was_deleted(queue: Queue) -> None:
    """A holder paused past its lease, whose conversation was reaped, emptied and its meta
    deleted (idle, or erased), must not find its old fence valid on the next lease."""
    chat = chat_id(6)
    keys = keys_of(queue, chat)
    await queue_chat(queue, chat, ["a"])
    zombie = await lease_chat(queue, queue.consumer(lease_ms=50), chat, owner="zombie")
    await wait_past(zombie.until_ms)
    await queue.reaper(max_attempts=5).run_pass(keys.shard_keys)
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    await consumer.ack(lease, lease.messages[0].id)
    await consumer.release(lease)
    await queue.client.delete(keys.meta)  # what an erase does, too

    for _ in range(3):  # new leases of the conversation, each with a new message
        await queue_chat(queue, chat, ["b"])
        current = await lease_chat(queue, consumer, chat)
        assert current.fence > zombie.fence
        zombie.until_ms = current.until_ms
        assert await consumer.release(zombie) is False
        with pytest.raises(LeaseLost):
            await consumer.extend(zombie)
        assert await queue.client.hget(keys.meta, "state") == b"leased"
        await consumer.ack(current, current.messages[0].id)
        await consumer.release(current)


async def test_a_fence_written_before_the_counter_existed_is_carried_over(queue: Queue) -> None:
    """A meta left by an older version holds its own fence and the shard has no counter yet:
    the next lease's fence is still above it, and so is the counter once the meta is gone."""
    chat = chat_id(7)
    keys = keys_of(queue, chat)
    await queue_chat(queue, chat, ["a"])
    await queue.client.hset(keys.meta, "fence", 57)
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    assert lease.fence == 58
    await consumer.ack(lease, lease.messages[0].id)
    await consumer.release(lease)
    assert int(await queue.client.get(keys.shard_keys.fence)) >= 58
    await queue_chat(queue, chat, ["b"])
    assert (await lease_chat(queue, consumer, chat)).fence > 58
