"""release_conversation.lua: ending a turn — back of the line, front, or idle; and
release_and_take.lua: the same release, then the front of the line taken into `claimed`."""

from __future__ import annotations

from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import keys_of, lease_chat, queue_chat, ready_order, state


async def two_chats_on_one_shard(queue: Queue) -> tuple[str, str]:
    first = chat_id(1)
    shard = keys_of(queue, first).shard_keys
    n = 2
    while keys_of(queue, chat_id(n)).shard_keys != shard:
        n += 1
    return first, chat_id(n)


async def test_release_with_messages_left_goes_to_the_back_of_the_line(queue: Queue) -> None:
    busy, other = await two_chats_on_one_shard(queue)
    await queue_chat(queue, busy, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, busy)
    await queue_chat(queue, other, ["x"])

    assert await consumer.release(lease) is True

    keys = keys_of(queue, busy)
    assert await ready_order(queue, busy) == [keys_of(queue, other).token, keys.token]
    assert await state(queue, busy) == "ready"
    assert await queue.client.zcard(keys.shard_keys.leases) == 0
    assert await queue.client.hmget(keys.meta, "owner", "lease_until") == [None, None]


async def test_release_to_the_front_is_claimed_next(queue: Queue) -> None:
    busy, other = await two_chats_on_one_shard(queue)
    await queue_chat(queue, busy, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, busy)
    await queue_chat(queue, other, ["x"])

    assert await consumer.release(lease, to_front=True) is True
    assert await ready_order(queue, busy) == [
        keys_of(queue, busy).token,
        keys_of(queue, other).token,
    ]


async def test_release_of_an_empty_conversation_makes_it_idle_until_its_next_message(
    queue: Queue,
) -> None:
    chat = chat_id(3)
    ids = await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    await consumer.ack(lease, ids[0])

    assert await consumer.release(lease) is True
    assert await queue.client.exists(keys_of(queue, chat).meta) == 0  # idle: no meta
    assert await ready_order(queue, chat) == []

    await queue_chat(queue, chat, ["b"])  # the enqueue side makes an idle chat ready
    assert await ready_order(queue, chat) == [keys_of(queue, chat).token]


async def test_repeated_or_fenced_release_changes_nothing(queue: Queue) -> None:
    chat = chat_id(4)
    await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    assert await consumer.release(lease) is True
    assert await consumer.release(lease) is False  # a retry after a lost answer
    assert await ready_order(queue, chat) == [keys_of(queue, chat).token]

    second = await lease_chat(queue, consumer, chat)
    assert await consumer.release(lease) is False  # the first holder, fenced out
    assert await state(queue, chat) == "leased"
    assert await consumer.release(second) is True


async def claimed(queue: Queue, chat: str) -> list[str]:
    shard = keys_of(queue, chat).shard_keys
    return [t.decode() for t in await queue.client.lrange(shard.claimed, 0, -1)]


async def test_release_and_take_releases_then_takes_the_front_of_the_line(queue: Queue) -> None:
    busy, other = await two_chats_on_one_shard(queue)
    await queue_chat(queue, busy, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, busy)
    await queue_chat(queue, other, ["x"])

    assert await consumer.release_and_take(lease) == (True, keys_of(queue, other).token)

    # Released to the back as release() does; the other taken as a BLMOVE would, and claimable.
    assert await ready_order(queue, busy) == [keys_of(queue, busy).token]
    assert await state(queue, busy) == "ready"
    assert await claimed(queue, busy) == [keys_of(queue, other).token]
    shard = keys_of(queue, other).shard_keys
    taken = await consumer.claim(shard, keys_of(queue, other).token, "test:next")
    assert taken is not None and [m.record is not None for m in taken.messages] == [True]


async def test_release_and_take_with_an_empty_line_takes_nothing(queue: Queue) -> None:
    chat = chat_id(5)
    ids = await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    await consumer.ack(lease, ids[0])

    assert await consumer.release_and_take(lease) == (True, None)
    assert await queue.client.exists(keys_of(queue, chat).meta) == 0  # idle, as after release
    assert await claimed(queue, chat) == []


async def test_release_and_take_of_the_only_conversation_takes_it_back(queue: Queue) -> None:
    """Its own conversation, with messages left and nobody else waiting, is the next one."""
    chat = chat_id(6)
    await queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)

    assert await consumer.release_and_take(lease) == (True, keys_of(queue, chat).token)
    assert await ready_order(queue, chat) == []
    assert await state(queue, chat) == "ready"  # not leased until the slot claims it


async def test_a_fenced_out_release_and_take_changes_nothing_of_the_lease_but_still_takes(
    queue: Queue,
) -> None:
    """Whether or not the release was still ours, the slot is free: it takes the next one."""
    busy, other = await two_chats_on_one_shard(queue)
    await queue_chat(queue, busy, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, busy)
    assert await consumer.release(lease) is True
    second = await lease_chat(queue, consumer, busy)
    await queue_chat(queue, other, ["x"])

    assert await consumer.release_and_take(lease) == (False, keys_of(queue, other).token)
    assert await state(queue, busy) == "leased"  # the second holder's, untouched
    assert await consumer.release(second) is True
