"""replay_dead_letter.lua and drop: a dead letter back at the head of its chat, or gone."""

from __future__ import annotations

from shared.dead_letters import (
    ReplayResult,
    drop_dead_letter,
    list_dead_letters,
    replay_dead_letters,
)
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import (
    dead_letter_first_message,
    keys_of,
    lease_chat,
    message_ids,
    ready_order,
    state,
)


async def test_replay_puts_it_back_first_with_fresh_attempts(queue: Queue) -> None:
    chat = chat_id(1)
    ids = await dead_letter_first_message(queue, chat, ["a"])
    keys = keys_of(queue, chat)
    assert await queue.client.exists(keys.meta) == 0  # idle
    (letter,) = await list_dead_letters(queue.client, queue.shards, queue.prefix)

    assert await replay_dead_letters(queue.client, [letter]) == [ReplayResult.REPLAYED]

    assert await list_dead_letters(queue.client, queue.shards, queue.prefix) == []
    assert await message_ids(queue, chat) == ids
    assert await queue.client.hget(keys.bodies, ids[0]) == letter.record
    assert await queue.client.hget(keys.attempts, ids[0]) is None
    assert int(await queue.client.hget(keys.shard_keys.stats, "waiting")) == 1
    assert await ready_order(queue, chat) == [keys.token]
    lease = await lease_chat(queue, queue.consumer(), chat)
    assert [(m.id, m.attempts) for m in lease.messages] == [(ids[0], 0)]

    assert await replay_dead_letters(queue.client, [letter]) == [ReplayResult.GONE]


async def test_replay_goes_before_messages_still_queued(queue: Queue) -> None:
    chat = chat_id(2)
    ids = await dead_letter_first_message(queue, chat, ["a", "b"])
    (letter,) = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert await state(queue, chat) == "ready"
    assert await replay_dead_letters(queue.client, [letter]) == [ReplayResult.REPLAYED]
    assert await message_ids(queue, chat) == ids
    assert await ready_order(queue, chat) == [keys_of(queue, chat).token]  # still once


async def test_replay_waits_while_the_conversation_is_leased(queue: Queue) -> None:
    chat = chat_id(3)
    ids = await dead_letter_first_message(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    (letter,) = await list_dead_letters(queue.client, queue.shards, queue.prefix)

    assert await replay_dead_letters(queue.client, [letter]) == [ReplayResult.BUSY]
    assert len(await list_dead_letters(queue.client, queue.shards, queue.prefix)) == 1
    assert await message_ids(queue, chat) == ids[1:]

    await consumer.release(lease)
    assert await replay_dead_letters(queue.client, [letter]) == [ReplayResult.REPLAYED]


async def test_drop_deletes_it_for_good(queue: Queue) -> None:
    chat = chat_id(4)
    await dead_letter_first_message(queue, chat, ["a"])
    (letter,) = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert await drop_dead_letter(queue.client, letter) is True
    assert await drop_dead_letter(queue.client, letter) is False
    assert await list_dead_letters(queue.client, queue.shards, queue.prefix) == []
    assert await message_ids(queue, chat) == []


async def test_a_chats_dead_letters_go_back_together_in_their_order(queue: Queue) -> None:
    """Two dead letters of one chat, replayed: the older is handled first, then the newer, then
    what was still queued. One by one, each went to the head in turn and the newer came first
    (found by an audit of `wsm dlq replay --all`)."""
    chat = chat_id(5)
    ids = await dead_letter_first_message(queue, chat, ["a", "b", "c"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    assert lease.messages[0].id == ids[1]
    await consumer.fail(lease, ids[1], "boom again", terminal=True)
    letters = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert [letter.id for letter in letters] == ids[:2]  # oldest first

    replayed = await replay_dead_letters(queue.client, letters)

    assert replayed == [ReplayResult.REPLAYED, ReplayResult.REPLAYED]
    assert await message_ids(queue, chat) == ids
    lease = await lease_chat(queue, queue.consumer(), chat)
    assert [m.id for m in lease.messages] == ids
    assert await list_dead_letters(queue.client, queue.shards, queue.prefix) == []
