"""ack_message.lua: the fenced commit of one handled message, with the handler's writes."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from shared.queue_consumer import ACK_MESSAGE
from shared.queue_errors import LeaseLost, NotHead
from tests.worker.conftest import Queue
from tests.worker.protocol import keys_of, lease_chat, message_ids, queue_chat, wait_past
from tests.worker.support import chat_id


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
    ids = await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)
    await queue.client.hincrby(keys.meta, "fence", 1)  # as the reaper does on taking it back

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
        ["EVAL", "6", "2", "return 1", "0"],  # not an allowed command
        ["RPUSH", "3", "1", "x"],  # a protocol key (bodies) by index
        ["RPUSH", "9", "1", "x"],  # an index past KEYS
        ["RPUSH", "6", "5", "x"],  # more arguments announced than given
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
    good = ["RPUSH", "6", "1", "y"]
    with pytest.raises(ResponseError, match="invalid commit write"):
        await ACK_MESSAGE(
            queue.client,
            [
                keys.meta,
                keys.messages,
                keys.bodies,
                keys.attempts,
                keys.shard_keys.stats,
                keys.handled,
            ],
            [lease.fence, ids[0], *good, *write],
        )
    assert await message_ids(queue, chat) == ids
    assert await queue.client.exists(keys.handled) == 0
