"""ack_message.lua: the fenced commit of one handled message, with the handler's writes."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from shared.queue_consumer import ACK_MESSAGE
from shared.queue_errors import LeaseLost, NotHead
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import (
    fence_out,
    hold,
    keys_of,
    lease_chat,
    message_ids,
    queue_chat,
    ready_order,
    wait_past,
)


async def waiting(queue: Queue, chat: str) -> int:
    return int(await queue.client.hget(keys_of(queue, chat).shard_keys.stats, "waiting"))


async def test_ack_removes_the_head_and_applies_the_writes(queue: Queue) -> None:
    chat = chat_id(1)
    ids = await queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)
    state_key = f"{keys.shard_keys.tag}:c:{keys.token}:state"
    history_key = f"{keys.shard_keys.tag}:c:{keys.token}:hist"
    await queue.client.hset(keys.attempts, ids[0], 2)

    await consumer.ack(
        lease,
        ids[0],
        [
            ("HSET", state_key, "step", "menu", "name", "Ana"),
            ("XADD", history_key, "*", "text", "a"),
            ("SET", f"{keys.shard_keys.tag}:c:{keys.token}:lock", "1", "PX", 60000),
        ],
    )

    assert await message_ids(queue, chat) == [ids[1]]
    assert await queue.client.hexists(keys.bodies, ids[0]) == 0
    assert await queue.client.hexists(keys.attempts, ids[0]) == 0
    assert await waiting(queue, chat) == 1
    assert await queue.client.hgetall(state_key) == {b"step": b"menu", b"name": b"Ana"}
    assert await queue.client.xlen(history_key) == 1


async def test_repeated_ack_after_a_lost_answer_is_a_no_op(queue: Queue) -> None:
    chat = chat_id(2)
    ids = await queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    list_key = keys_of(queue, chat).handled
    await consumer.ack(lease, ids[0], [("RPUSH", list_key, "x")])
    await consumer.ack(lease, ids[0], [("RPUSH", list_key, "x")])
    assert await message_ids(queue, chat) == [ids[1]]
    assert await waiting(queue, chat) == 1
    assert await queue.client.lrange(list_key, 0, -1) == [b"x"]


async def test_ack_of_a_message_that_is_not_the_head_is_refused(queue: Queue) -> None:
    chat = chat_id(3)
    ids = await queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    with pytest.raises(NotHead):
        await consumer.ack(lease, ids[1], [("RPUSH", keys_of(queue, chat).handled, "x")])
    assert await message_ids(queue, chat) == ids
    assert await queue.client.exists(keys_of(queue, chat).handled) == 0


async def test_fenced_out_holder_cannot_ack_or_write(queue: Queue) -> None:
    chat = chat_id(4)
    ids, consumer, lease, keys = await hold(queue, chat, ["a"])
    await fence_out(queue, keys)

    with pytest.raises(LeaseLost):
        await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "x")])
    assert await message_ids(queue, chat) == ids
    assert await queue.client.exists(keys.handled) == 0
    assert await waiting(queue, chat) == 1


async def test_holder_past_its_deadline_cannot_ack(queue: Queue) -> None:
    chat = chat_id(5)
    ids = await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer(lease_ms=50)
    lease = await lease_chat(queue, consumer, chat)
    await wait_past(lease.until_ms)
    with pytest.raises(LeaseLost, match="ran out"):
        await consumer.ack(lease, ids[0], [("RPUSH", keys_of(queue, chat).handled, "x")])
    assert await message_ids(queue, chat) == ids
    assert await queue.client.exists(keys_of(queue, chat).handled) == 0


@pytest.mark.parametrize(
    "write",
    [
        ["EVAL", "7", "2", "return 1", "0"],  # not an allowed command
        ["RPUSH", "3", "1", "x"],  # a protocol key (bodies) by index
        ["RPUSH", "6", "1", "x"],  # a protocol key (the reaped lease's last ack) by index
        ["RPUSH", "9", "1", "x"],  # an index past KEYS
        ["RPUSH", "7", "5", "x"],  # more arguments announced than given
    ],
)
async def test_script_refuses_malformed_writes_before_any_effect(
    queue: Queue, write: list[str]
) -> None:
    """Python validates first; the script checks again because Redis never rolls back."""
    chat = chat_id(6)
    ids = await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)
    good = ["RPUSH", "7", "1", "y"]
    with pytest.raises(ResponseError, match="invalid commit write"):
        await ACK_MESSAGE(
            queue.client,
            [
                keys.meta,
                keys.messages,
                keys.bodies,
                keys.attempts,
                keys.shard_keys.stats,
                keys.reaped_ack,
                keys.handled,
            ],
            [lease.fence, ids[0], *good, *write],
        )
    assert await message_ids(queue, chat) == ids
    assert await queue.client.exists(keys.handled) == 0


async def test_a_retried_ack_after_the_lease_ran_out_reports_the_commit(queue: Queue) -> None:
    """The first ack went through but its answer was lost; the retry arrives after the lease's
    deadline. It must say "committed" (not LeaseLost), apply nothing twice, and tell the holder
    to end its turn; the holder's hand-back then costs the next message nothing."""
    chat = chat_id(7)
    ids, consumer, lease, keys = await hold(queue, chat, ["a", "b"], lease_ms=300)
    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "x")])
    await wait_past(lease.until_ms)

    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "x")])  # the retry

    assert lease.ran_out is True
    assert await queue.client.lrange(keys.handled, 0, -1) == [b"x"]
    assert await message_ids(queue, chat) == [ids[1]]
    assert await waiting(queue, chat) == 1
    assert await consumer.release(lease, to_front=True) is True
    assert await ready_order(queue, chat) == [keys.token]
    assert await queue.client.hget(keys.attempts, ids[1]) is None


async def test_a_retried_ack_after_the_lease_was_reaped_reports_the_commit(queue: Queue) -> None:
    """The same, with the reaper taking the conversation back before the retry: the retry still
    learns its work is committed, and the reaper charges no attempt to the next message, which
    the holder never started."""
    chat = chat_id(8)
    ids, consumer, lease, keys = await hold(queue, chat, ["a", "b"], lease_ms=300)
    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "x")])
    await wait_past(lease.until_ms)
    assert (await queue.reaper().run_pass(keys.shard_keys)).reaped == 1

    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "x")])  # the retry

    assert lease.ran_out is True
    assert await queue.client.lrange(keys.handled, 0, -1) == [b"x"]
    assert await message_ids(queue, chat) == [ids[1]]
    assert await queue.client.hget(keys.attempts, ids[1]) is None  # never started: not charged
    assert await ready_order(queue, chat) == [keys.token]
    assert await consumer.release(lease) is False  # the reaper has it: nothing changes
    next_lease = await lease_chat(queue, queue.consumer(), chat)
    assert [(m.id, m.attempts) for m in next_lease.messages] == [(ids[1], 0)]


async def test_a_retried_ack_under_a_live_lease_lets_the_turn_go_on(queue: Queue) -> None:
    chat = chat_id(9)
    ids = await queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    await consumer.ack(lease, ids[0])
    await consumer.ack(lease, ids[0])
    assert lease.ran_out is False
    await consumer.ack(lease, ids[1])
    assert await message_ids(queue, chat) == []


async def test_a_fenced_out_holder_that_never_acked_is_still_refused(queue: Queue) -> None:
    """An "already acked" answer needs this holder's own ack on record: another holder's ack of
    the same message (after a reaping) is not ours, and a stale holder is refused as before."""
    chat = chat_id(10)
    ids = await queue_chat(queue, chat, ["a", "b"])
    stale = await lease_chat(queue, queue.consumer(lease_ms=200), chat, owner="stale")
    keys = keys_of(queue, chat)
    await wait_past(stale.until_ms)
    await queue.reaper().run_pass(keys.shard_keys)
    consumer = queue.consumer()
    current = await lease_chat(queue, consumer, chat, owner="current")
    await consumer.ack(current, ids[0], [("RPUSH", keys.handled, "current")])

    with pytest.raises(LeaseLost):
        await consumer.ack(stale, ids[0], [("RPUSH", keys.handled, "stale")])
    assert stale.ran_out is False
    assert await queue.client.lrange(keys.handled, 0, -1) == [b"current"]
    assert await message_ids(queue, chat) == [ids[1]]
