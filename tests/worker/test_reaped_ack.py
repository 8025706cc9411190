"""A retried ack behind a reaping: the reaper keeps the lease's last ack for its holder
(`ConversationKeys.reaped_ack`, lib/ack.lua), so committed work is reported committed even when
the meta that recorded it is gone (no message was left) or was overwritten (the next holder
committed since). Each test's first ack lands and the second is the retry whose first answer
was lost (docs/architecture.md, "Ack is the commit")."""

from __future__ import annotations

import pytest

from shared.keys import ConversationKeys
from shared.queue_consumer import ACK_MESSAGES
from shared.queue_errors import LeaseLost
from shared.queue_reaper import REAPED_ACK_MS
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import hold, lease_chat, message_ids, wait_past


async def reap(queue: Queue, keys: ConversationKeys) -> None:
    assert (await queue.reaper().run_pass(keys.shard_keys)).reaped == 1


async def test_a_retry_after_the_reaper_let_the_conversation_go_idle_reports_the_commit(
    queue: Queue,
) -> None:
    """The commit took the last message: the reaper finds none left and deletes the meta,
    `last_ack` with it. Before the reaper kept it, this retry raised LeaseLost."""
    ids, consumer, lease, keys = await hold(queue, chat_id(1), ["a"], lease_ms=300)
    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "x")])
    await wait_past(lease.until_ms)
    await reap(queue, keys)
    assert await queue.client.exists(keys.meta) == 0

    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "x")])  # the retry

    assert lease.ran_out is True
    assert await queue.client.lrange(keys.handled, 0, -1) == [b"x"]  # applied once
    assert await message_ids(queue, chat_id(1)) == []
    assert await queue.client.get(keys.reaped_ack) == f"{lease.fence}:{ids[0]}".encode()
    assert 0 < await queue.client.pttl(keys.reaped_ack) <= REAPED_ACK_MS


async def test_a_retry_after_the_next_holder_committed_reports_the_commit(queue: Queue) -> None:
    """The reaper kept the meta (a message was left), but the next holder's commit overwrote
    its `last_ack` before the old holder's retry arrived."""
    chat = chat_id(2)
    ids, consumer, lease, keys = await hold(queue, chat, ["a", "b"], lease_ms=300)
    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "a")])
    await wait_past(lease.until_ms)
    await reap(queue, keys)
    next_consumer = queue.consumer()
    next_lease = await lease_chat(queue, next_consumer, chat, owner="next")
    await next_consumer.ack(next_lease, ids[1], [("RPUSH", keys.handled, "b")])

    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "a")])  # the retry

    assert lease.ran_out is True
    assert await queue.client.lrange(keys.handled, 0, -1) == [b"a", b"b"]
    assert await message_ids(queue, chat) == []
    assert next_lease.ran_out is False


async def test_acks_riding_with_a_commit_behind_a_reaping_are_all_reported_landed(
    queue: Queue,
) -> None:
    """Two acks rode with the commit of a third message, in one pipeline whose answer was lost.
    Only the last (the commit's) is on record after the reaping; the two before it landed as
    surely, since acks go head first, in order."""
    chat = chat_id(3)
    ids, consumer, lease, keys = await hold(queue, chat, ["a", "b", "c", "d"], lease_ms=300)
    consumer.ack_later(lease, ids[0])
    consumer.ack_later(lease, ids[1])
    await consumer.ack(lease, ids[2], [("RPUSH", keys.handled, "c")])
    await wait_past(lease.until_ms)
    await reap(queue, keys)

    consumer.ack_later(lease, ids[0])  # the pipeline again, as its retry sends it
    consumer.ack_later(lease, ids[1])
    await consumer.ack(lease, ids[2], [("RPUSH", keys.handled, "c")])

    assert lease.ran_out is True
    assert await queue.client.lrange(keys.handled, 0, -1) == [b"c"]
    assert await message_ids(queue, chat) == [ids[3]]


async def test_a_batch_of_acks_goes_on_past_a_fenced_out_one_to_the_kept_last_ack(
    queue: Queue,
) -> None:
    """ack_messages.lua: the batch's first ack is refused for its fence (its own mark is gone),
    the second is the reaped lease's last ack; the worker reads both as landed."""
    chat = chat_id(4)
    ids, consumer, lease, keys = await hold(queue, chat, ["a", "b", "c"], lease_ms=300)
    args = [lease.fence, ids[0], ids[1]]
    assert await ACK_MESSAGES(queue.client, lease._ack_keys, args) == [1, 1]
    await wait_past(lease.until_ms)
    await reap(queue, keys)

    assert await ACK_MESSAGES(queue.client, lease._ack_keys, args) == [0, 3]  # the retry
    assert await message_ids(queue, chat) == [ids[2]]
    consumer.ack_later(lease, ids[0])
    consumer.ack_later(lease, ids[1])
    assert await consumer.release(lease) is False  # the reaper has it; the acks stand
    assert await message_ids(queue, chat) == [ids[2]]


async def test_an_ack_that_never_landed_is_still_refused_behind_a_reaping(queue: Queue) -> None:
    """The kept mark is the lease's last ack only: a commit that did not land before the
    reaping is lost, its writes not applied, its message still queued for the next holder."""
    chat = chat_id(5)
    ids, consumer, lease, keys = await hold(queue, chat, ["a", "b"], lease_ms=300)
    await consumer.ack(lease, ids[0])
    await wait_past(lease.until_ms)
    await reap(queue, keys)

    with pytest.raises(LeaseLost):
        await consumer.ack(lease, ids[1], [("RPUSH", keys.handled, "b")])

    assert await queue.client.exists(keys.handled) == 0
    assert await message_ids(queue, chat) == [ids[1]]


async def test_a_retry_of_an_ack_before_the_last_in_a_later_turn_is_refused(
    queue: Queue,
) -> None:
    """Behind a reaping, the old holder retries the ack of a message it handled after its last
    landed ack: that one did not land (else it would be the last), so it is refused, although
    another holder has handled it since and its body is gone."""
    chat = chat_id(6)
    ids, consumer, lease, keys = await hold(queue, chat, ["a", "b"], lease_ms=300)
    await consumer.ack(lease, ids[0])
    await wait_past(lease.until_ms)
    await reap(queue, keys)
    next_consumer = queue.consumer()
    next_lease = await lease_chat(queue, next_consumer, chat, owner="next")
    await next_consumer.ack(next_lease, ids[1])

    with pytest.raises(LeaseLost):
        await consumer.ack(lease, ids[1])
    assert lease.ran_out is False


async def test_a_reaping_with_no_ack_under_the_lease_keeps_nothing(queue: Queue) -> None:
    ids, consumer, lease, keys = await hold(queue, chat_id(7), ["a"], lease_ms=300)
    await wait_past(lease.until_ms)
    await reap(queue, keys)
    assert await queue.client.exists(keys.reaped_ack) == 0
    with pytest.raises(LeaseLost):
        await consumer.ack(lease, ids[0])
