"""Tests written to kill mutants that survived the mutation runs (docs/testing.md lists each one
and the mutant it kills): the queue protocol's guards, against a real Redis (single and
cluster, like the other protocol tests), and the handler seam."""

from __future__ import annotations

from collections.abc import Awaitable

from shared.queue_consumer import FailOutcome
from shared.settings import Settings
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import (
    keys_of,
    lease_chat,
    message_ids,
    queue_chat,
    ready_order,
    reap_script,
    state,
    wait_past,
)
from worker.handler import Handler, HandlerSetup, load_handler

# --- shared/scripts/ack_message.lua -------------------------------------------------------


async def test_a_retried_ack_after_an_ack_without_marker_is_reported_as_done(queue: Queue) -> None:
    """An ack committed by a version that wrote no `last_ack` marker: the retry, under the same
    live lease, must learn that its work is committed (and write nothing), not be told the
    message is not the head. Kills, in ack_message.lua's "no marker" fallback: `meta[2] ==
    'leased'` flipped, `not acked` dropped, and the head check `~= message_id` flipped."""
    chat = chat_id(1)
    ids = await queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)
    # What the older version's ack left: the head removed with its body, no marker.
    assert await queue.client.rpop(keys.messages) == ids[0].encode()
    await queue.client.hdel(keys.bodies, ids[0])
    assert await queue.client.hget(keys.meta, "last_ack") is None

    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "again")])

    assert not lease.ran_out
    assert await message_ids(queue, chat) == [ids[1]]  # the next message is untouched
    assert await queue.client.exists(keys.handled) == 0  # the retry wrote nothing


# --- shared/scripts/claim_conversation.lua ------------------------------------------------


async def test_a_token_in_claimed_for_a_leased_conversation_is_not_leased_twice(
    queue: Queue,
) -> None:
    """Never two leases: should a leased conversation's token ever sit in `claimed` (it must
    not), a claim refuses it rather than trusting the list, and the holder keeps its lease
    and fence. Kills: the `return nil` of claim_conversation.lua's "already leased" guard."""
    chat = chat_id(3)
    await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat, owner="holder")
    keys = keys_of(queue, chat)
    await queue.client.lpush(keys.shard_keys.claimed, keys.token)

    assert await consumer.claim(keys.shard_keys, keys.token, "intruder") is None
    assert int(await queue.client.hget(keys.meta, "fence")) == lease.fence
    assert await queue.client.hget(keys.meta, "owner") == b"holder"
    assert await queue.client.zscore(keys.shard_keys.leases, keys.token) == lease.until_ms


# --- shared/scripts/fail_message.lua ------------------------------------------------------


async def test_a_failure_reported_after_the_lease_ran_out_is_left_to_the_reaper(
    queue: Queue,
) -> None:
    """A holder whose lease ran out (not reaped yet) reports a failure: it is told the lease
    is lost, counts no attempt and leaves the conversation leased in `leases`, where the
    reaper takes it back and counts the attempt itself (once). Kills: the `return {-1}` of
    fail_message.lua's expiry guard dropped (the late holder would count the attempt and
    move the conversation to `delayed` under a lease that is no longer its own)."""
    chat = chat_id(4)
    ids = await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer(lease_ms=50)
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)
    await wait_past(lease.until_ms)

    result = await consumer.fail(lease, ids[0], "boom")

    assert result.outcome is FailOutcome.LOST
    assert await queue.client.hget(keys.attempts, ids[0]) is None
    assert await state(queue, chat) == "leased"
    assert await queue.client.zscore(keys.shard_keys.leases, keys.token) == lease.until_ms
    assert await message_ids(queue, chat) == ids


# --- shared/scripts/reap_expired_lease.lua ------------------------------------------------


async def test_a_lease_extended_after_the_reaper_listed_it_is_not_taken(queue: Queue) -> None:
    """The reaper lists expired leases, then reaps each in its own script call; meanwhile the
    holder may extend. The script itself must see the live deadline and leave the lease (and
    its fence) alone, so the holder still commits. Kills: the `return {0}` of
    reap_expired_lease.lua's "not expired" guard dropped."""
    chat = chat_id(5)
    ids = await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer(lease_ms=30_000)
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)

    assert await reap_script(queue, keys) == [0]

    assert int(await queue.client.hget(keys.meta, "fence")) == lease.fence
    assert await state(queue, chat) == "leased"
    assert await queue.client.hget(keys.attempts, ids[0]) is None
    await consumer.ack(lease, ids[0])  # the holder's commit still lands
    assert await message_ids(queue, chat) == []


async def test_a_stale_lease_entry_of_a_conversation_no_longer_leased_is_only_dropped(
    queue: Queue,
) -> None:
    """An expired entry in `leases` whose conversation is not leased any more (it was
    released, and is waiting in line): the reaper drops the entry and touches nothing else:
    no fence drawn, no attempt or redelivery counted, not put in line a second time.
    Kills: the `return {0}` of reap_expired_lease.lua's "not leased" guard dropped."""
    chat = chat_id(6)
    ids = await queue_chat(queue, chat, ["a"])
    keys = keys_of(queue, chat)
    shard = keys.shard_keys
    await queue.client.zadd(shard.leases, {keys.token: 1})  # expired long ago
    assert await state(queue, chat) == "ready"

    report = await queue.reaper().run_pass(shard)

    assert report.reaped == 0
    assert await queue.client.zscore(shard.leases, keys.token) is None
    assert await state(queue, chat) == "ready"
    assert await queue.client.hget(keys.meta, "fence") is None
    assert await queue.client.hget(keys.attempts, ids[0]) is None
    assert await queue.client.hget(shard.stats, "redeliveries") is None
    assert await ready_order(queue, chat) == [keys.token]


async def test_a_holder_that_died_between_messages_costs_the_next_one_no_attempt(
    queue: Queue,
) -> None:
    """The reaper counts an attempt on the head only if the dead holder may have been working
    on it: a holder that had just acked a message under its lease (`last_ack` carries its
    fence) died between messages, and the next message is not charged. An ack left by an
    EARLIER lease says nothing about this one: then the attempt is counted.
    Kills: the fence-prefix comparison in reap_expired_lease.lua's `between_messages` flipped."""
    chat = chat_id(7)
    ids = await queue_chat(queue, chat, ["a", "b"])
    # Long enough for the ack to land before the lease runs out on a loaded machine.
    consumer = queue.consumer(lease_ms=1000)
    reaper = queue.reaper(max_attempts=5)
    keys = keys_of(queue, chat)

    first = await lease_chat(queue, consumer, chat, owner="w1")
    await consumer.ack(first, ids[0])  # then the holder dies before touching "b"
    await wait_past(first.until_ms)
    assert (await reaper.run_pass(keys.shard_keys)).reaped == 1
    assert await queue.client.hget(keys.attempts, ids[1]) is None

    second = await lease_chat(queue, consumer, chat, owner="w2")
    assert second.fence > first.fence
    await wait_past(second.until_ms)  # dies while working on "b"
    assert (await reaper.run_pass(keys.shard_keys)).reaped == 1
    assert int(await queue.client.hget(keys.attempts, ids[1])) == 1


# --- shared/scripts/promote_delayed.lua ---------------------------------------------------


async def test_a_stale_retry_time_of_a_leased_conversation_promotes_nothing(
    queue: Queue,
) -> None:
    """A due entry in `delayed` for a conversation that is leased now (the entry outlived its
    backoff): promoting it would put a leased conversation in line, so two workers would
    hold it. The reaper drops the entry and leaves the lease alone.
    Kills: the `return 0` of promote_delayed.lua's "still delayed" guard dropped."""
    chat = chat_id(8)
    await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)
    shard = keys.shard_keys
    await queue.client.zadd(shard.delayed, {keys.token: 1})  # due long ago

    assert (await queue.reaper().run_pass(shard)).promoted == 0

    assert await queue.client.zscore(shard.delayed, keys.token) is None
    assert await state(queue, chat) == "leased"
    assert await ready_order(queue, chat) == []
    assert int(await queue.client.hget(keys.meta, "fence")) == lease.fence


# --- shared/scripts/lib/fence.lua: the shard's fencing counter never goes down -------------


async def _counter(queue: Queue, chat: str) -> int:
    return int(await queue.client.get(keys_of(queue, chat).shard_keys.fence) or 0)


def _in_the_same_shard(queue: Queue, chat: str, start: int) -> str:
    """A chat of the same shard as `chat` (on the cluster, chats spread over six)."""
    shard = keys_of(queue, chat).shard_keys
    n = start
    while keys_of(queue, chat_id(n)).shard_keys != shard:
        n += 1
    return chat_id(n)


async def _handle_all(queue: Queue, chat: str) -> None:
    """Lease `chat`, ack its messages and release it: one ordinary turn, ending idle."""
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    for message in lease.messages:
        await consumer.ack(lease, message.id)
    assert await consumer.release(lease)


async def _pop_into_claimed(queue: Queue, chat: str, meta_fence: int, *, queued: bool) -> None:
    """`chat` popped into `claimed` with a meta fence an older version wrote (below or above
    the shard's counter), with or without messages queued."""
    keys = keys_of(queue, chat)
    if queued:
        await queue_chat(queue, chat, ["a"])
        await queue.client.lrem(keys.shard_keys.ready, 1, keys.token)
    await queue.client.hset(keys.meta, mapping={"state": "ready", "fence": meta_fence})
    await queue.client.lpush(keys.shard_keys.claimed, keys.token)


async def test_a_lease_draws_above_the_counter_even_when_its_meta_fence_is_lower(
    queue: Queue,
) -> None:
    """A conversation whose meta carries a fence below the shard's counter (written by a
    version without the counter) is leased with a fence from the counter, and the counter is
    not lowered to the meta's fence. A lowered counter would hand out again fences some
    worker may still hold. Kills: lib/fence.lua's `fence <= previous` flipped."""
    busy = chat_id(9)
    old = _in_the_same_shard(queue, busy, 10)
    for n in range(3):  # move the counter up with ordinary turns
        await queue_chat(queue, busy, [f"m{n}"])
        await _handle_all(queue, busy)
    before = await _counter(queue, busy)
    assert before >= 3
    await _pop_into_claimed(queue, old, 1, queued=True)
    keys = keys_of(queue, old)

    lease = await queue.consumer().claim(keys.shard_keys, keys.token, "w")

    assert lease is not None
    assert lease.fence > before
    assert await _counter(queue, old) >= lease.fence


async def test_going_idle_carries_a_higher_meta_fence_into_the_counter_never_a_lower_one(
    queue: Queue,
) -> None:
    """A conversation found with nothing queued goes idle (its meta is deleted); a meta fence
    above the counter is carried into it first, one below it never lowers it.
    Kills: lib/fence.lua keep_fence's `fence > counter` flipped."""
    low = chat_id(11)
    high = _in_the_same_shard(queue, low, 100)
    await queue_chat(queue, low, ["x"])
    await _handle_all(queue, low)
    counter = await _counter(queue, low)
    assert counter >= 1

    await _pop_into_claimed(queue, low, 0, queued=False)
    keys = keys_of(queue, low)
    assert await queue.consumer().claim(keys.shard_keys, keys.token, "w") is None
    assert await queue.client.exists(keys.meta) == 0
    assert await _counter(queue, low) == counter

    await _pop_into_claimed(queue, high, counter + 50, queued=False)
    keys = keys_of(queue, high)
    assert await queue.consumer().claim(keys.shard_keys, keys.token, "w") is None
    assert await _counter(queue, high) == counter + 50


# --- worker/handler.py: what `--handler module:attr` may name -----------------------------


class Handlers:
    """A namespace, so a handler spec can name `module:Class.attribute`."""

    @staticmethod
    async def handle(event: object, ctx: object) -> None:
        return None

    @staticmethod
    def build(setup: HandlerSetup) -> Awaitable[Handler]:
        """A factory whose result is awaitable (it sets up asynchronously): awaited for the
        handler. (An `async def` itself would be taken for the handler.)"""

        async def made() -> Handler:
            return Handlers.handle

        return made()


async def test_a_handler_spec_may_name_an_attribute_path_and_an_async_factory() -> None:
    """`--handler tests.worker.test_mutants:Handlers.build`: a dotted path after the colon is
    followed attribute by attribute, and an async factory's result is awaited.
    Kills, in load_handler: `attr_path.split(".")` with another separator, and the
    `isawaitable` check or its `await` dropped (the coroutine would be refused)."""
    setup = HandlerSetup(Settings(_env_file=None), redis=object(), process_index=0, fleet_id="f")  # type: ignore[call-arg]
    handler = await load_handler("tests.worker.test_mutants:Handlers.build", setup)
    assert handler is Handlers.handle
