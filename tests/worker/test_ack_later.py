"""Messages whose handler commits nothing are acked with the turn's next call, in its round trip
(QueueConsumer.ack_later; docs/architecture.md, "Acks that carry nothing").

Each test runs one turn of a real ConsumerSlot on a real Redis and on a Redis Cluster (the
`queue` fixture), through a client that counts round trips (a single call or a pipeline's
execute). Nothing is timed: the counts are the point.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.envelope import QueuedEvent
from shared.keys import ConversationKeys
from shared.queue_consumer import (
    ACK_MESSAGE,
    ACK_MESSAGES,
    FAIL_MESSAGE,
    RELEASE_AND_TAKE,
    RELEASE_CONVERSATION,
    Lease,
    Prelude,
    QueueConsumer,
)
from shared.queue_errors import InvalidWrite, LeaseLost
from shared.redis_client import one_node
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id, conversation, enqueue_texts
from worker.consumer_slot import ConsumerSlot
from worker.handler import AlreadyCommitted, Handler, HandlerContext


class RoundTrips:
    """The client, counting the round trips the consumer makes (EVALSHA or a pipeline)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def evalsha(self, *args: Any) -> Any:
        self.count += 1
        return await self.client.evalsha(*args)

    def pipeline(self, **options: Any) -> Any:
        pipe = self.client.pipeline(**options)
        execute = pipe.execute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await execute(*args, **kwargs)

        pipe.execute = counted
        return pipe


async def queued(
    queue: Queue, n: int, texts: list[str]
) -> tuple[Any, str, list[str], ConversationKeys]:
    """A chat of the test's own with `texts` queued: the client, the chat, the message ids
    (oldest first) and the conversation's keys."""
    chat = chat_id(n)
    sent = await enqueue_texts(queue.client, queue.prefix, {chat: texts}, queue.shards)
    return queue.client, chat, sent[chat], conversation(chat, queue.prefix, queue.shards)


async def one_turn(queue: Queue, chat: str, handler: Handler) -> tuple[RoundTrips, Lease]:
    """Claim the chat's conversation and run one turn; round trips counted after the claim."""
    aredis = queue.client
    counting = RoundTrips(aredis)
    consumer = QueueConsumer(
        counting, lease_ms=10_000, batch=10, max_attempts=3, backoff_ms=60_000,
        backoff_max_ms=60_000,
    )  # fmt: skip
    keys = conversation(chat, queue.prefix, queue.shards)
    shard = keys.shard_keys
    token = await consumer.pop_ready(shard)
    assert token == keys.token
    lease = await consumer.claim(shard, token, "test:0")
    assert lease is not None
    slot = ConsumerSlot(
        consumer=consumer, handler=handler, shards=[shard], home=0, owner="test",
        stopping=asyncio.Event(), handler_timeout=5.0,
    )  # fmt: skip
    for script in (ACK_MESSAGES, ACK_MESSAGE, RELEASE_CONVERSATION, RELEASE_AND_TAKE, FAIL_MESSAGE):
        await script.load(aredis)  # a first NOSCRIPT would cost a round trip more
    counting.count = 0
    await slot.run_turn(lease)
    return counting, lease


async def test_a_turn_of_handlers_that_commit_nothing_costs_one_round_trip(queue: Queue) -> None:
    aredis, chat, ids, keys = await queued(queue, 1, ["a", "b", "c", "d", "e"])
    seen: list[str] = []

    async def noop(event: QueuedEvent, ctx: HandlerContext) -> None:
        seen.append(ctx.message_id)

    trips, _ = await one_turn(queue, chat, noop)
    assert seen == ids  # each once, in order
    # Five acks and the release in one pipeline (before: one round trip each, six).
    assert trips.count == 1
    assert await aredis.llen(keys.messages) == 0
    assert not await aredis.exists(keys.meta)  # released, idle
    assert int(await aredis.hget(keys.shard_keys.stats, "waiting")) == 0


async def test_pending_acks_land_before_a_commit_with_writes(queue: Queue) -> None:
    aredis, chat, ids, keys = await queued(queue, 2, ["a", "b", "c"])
    heads: list[list[bytes]] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        if ctx.message_id == ids[1]:
            await ctx.commit([("RPUSH", keys.handled, ctx.message_id)])
            # Its commit took the pending ack of "a" with it: only "c" is left.
            heads.append(await aredis.lrange(keys.messages, 0, -1))

    trips, _ = await one_turn(queue, chat, handler)
    assert heads == [[ids[2].encode()]]
    assert await aredis.lrange(keys.handled, 0, -1) == [ids[1].encode()]
    assert trips.count == 2  # ack a + commit b; ack c + release
    assert await aredis.llen(keys.messages) == 0
    assert not await aredis.exists(keys.meta)


async def test_a_failure_after_pending_acks_charges_only_the_failed_message(queue: Queue) -> None:
    aredis, chat, ids, keys = await queued(queue, 3, ["a", "b", "c"])

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        if ctx.message_id == ids[1]:
            raise RuntimeError("boom")

    trips, _ = await one_turn(queue, chat, handler)
    assert trips.count == 1  # ack a + fail b
    # "a" is gone; "b" waits for its retry at the head, one attempt charged; "c" untouched.
    assert await aredis.lrange(keys.messages, 0, -1) == [m.encode() for m in ids[:0:-1]]
    assert await aredis.hgetall(keys.attempts) == {ids[1].encode(): b"1"}
    assert await aredis.hget(keys.meta, "state") == b"delayed"


async def test_pending_acks_refused_with_a_lost_lease_leave_their_messages_queued(
    queue: Queue,
) -> None:
    """At least once: the lease is taken over before the turn ends; the acks that waited for
    the release are refused with it, so those messages are delivered again, not lost."""
    aredis, chat, ids, keys = await queued(queue, 4, ["a", "b"])

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        if ctx.message_id == ids[1]:
            await aredis.hincrby(keys.meta, "fence", 1)  # someone else's lease now

    trips, lease = await one_turn(queue, chat, handler)
    assert trips.count == 1
    assert lease.unacked == []
    assert await aredis.lrange(keys.messages, 0, -1) == [m.encode() for m in reversed(ids)]
    assert await aredis.hget(keys.meta, "state") == b"leased"  # the new holder's, untouched


# --- a commit that ends the turn rides with the release (HandlerContext.commit_later) --------


async def test_the_last_messages_commit_rides_with_the_release(queue: Queue) -> None:
    """An ack of our reply at the end of a turn: its writes and its ack go with the release, one
    round trip for the earlier message's pending ack, the commit and the release (issue 19)."""
    aredis, chat, ids, keys = await queued(queue, 7, ["a", "b"])

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        await ctx.commit_later([("RPUSH", keys.handled, ctx.message_id)])

    trips, lease = await one_turn(queue, chat, handler)
    # "a" is not the last: its writes commit at once (the next handler must see them); "b"'s
    # commit and the release share one pipeline.
    assert trips.count == 2
    assert await aredis.lrange(keys.handled, 0, -1) == [m.encode() for m in ids]
    assert await aredis.llen(keys.messages) == 0
    assert not await aredis.exists(keys.meta)  # released, idle
    assert int(await aredis.hget(keys.shard_keys.stats, "waiting")) == 0
    assert lease.unacked == [] and lease.unacked_writes == {}


async def test_pending_acks_then_the_last_commit_then_the_release_in_one_round_trip(
    queue: Queue,
) -> None:
    aredis, chat, ids, keys = await queued(queue, 11, ["a", "b", "c"])
    last = ids[-1]

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        await ctx.commit_later(
            [("RPUSH", keys.handled, ctx.message_id)] if ctx.message_id == last else []
        )

    trips, _ = await one_turn(queue, chat, handler)
    assert trips.count == 1  # ack a + ack b (one call), commit c, release
    assert await aredis.lrange(keys.handled, 0, -1) == [last.encode()]
    assert await aredis.llen(keys.messages) == 0
    assert not await aredis.exists(keys.meta)
    assert int(await aredis.hget(keys.shard_keys.stats, "waiting")) == 0


async def test_a_commit_later_before_another_message_is_seen_by_its_handler(
    queue: Queue,
) -> None:
    aredis, chat, ids, keys = await queued(queue, 8, ["a", "b", "c"])
    seen: list[list[bytes]] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        seen.append(await aredis.lrange(keys.handled, 0, -1))
        if ctx.message_id == ids[0]:
            await ctx.commit_later([("RPUSH", keys.handled, ctx.message_id)])
        else:
            await ctx.commit_later()  # nothing to write: rides with the next call

    trips, _ = await one_turn(queue, chat, handler)
    assert seen == [[], [ids[0].encode()], [ids[0].encode()]]
    assert trips.count == 2  # commit a; ack b + ack c + release
    assert await aredis.llen(keys.messages) == 0
    assert not await aredis.exists(keys.meta)


async def test_a_commit_riding_with_a_refused_release_writes_nothing(queue: Queue) -> None:
    """Exactly once: the lease is taken over before the release; the commit that waited for it
    is refused with it, its writes are not applied, and its message is delivered again."""
    aredis, chat, ids, keys = await queued(queue, 9, ["a"])

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        await ctx.commit_later([("RPUSH", keys.handled, ctx.message_id)])
        await aredis.hincrby(keys.meta, "fence", 1)  # someone else's lease now

    trips, lease = await one_turn(queue, chat, handler)
    assert trips.count == 1
    assert lease.unacked == [] and lease.unacked_writes == {}
    assert await aredis.llen(keys.handled) == 0
    assert await aredis.lrange(keys.messages, 0, -1) == [ids[0].encode()]
    assert await aredis.hget(keys.meta, "state") == b"leased"  # the new holder's, untouched


async def test_a_bad_write_handed_to_commit_later_is_refused_before_anything_is_sent(
    queue: Queue,
) -> None:
    aredis, chat, ids, keys = await queued(queue, 10, ["a"])
    errors: list[Exception] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        try:
            await ctx.commit_later([("EVAL", keys.handled, "return 1")])
        except InvalidWrite as exc:
            errors.append(exc)
            raise

    _, lease = await one_turn(queue, chat, handler)
    assert len(errors) == 1 and lease.unacked == []
    assert await aredis.exists(keys.handled) == 0
    # Counted as a failed attempt: still queued, one attempt charged.
    assert await aredis.lrange(keys.messages, 0, -1) == [ids[0].encode()]
    assert await aredis.hgetall(keys.attempts) == {ids[0].encode(): b"1"}


# --- ack_messages.lua on its own ------------------------------------------------------------


async def claimed(queue: Queue, chat: str) -> tuple[QueueConsumer, Lease]:
    consumer = queue.consumer()
    keys = conversation(chat, queue.prefix, queue.shards)
    assert await consumer.pop_ready(keys.shard_keys) == keys.token
    lease = await consumer.claim(keys.shard_keys, keys.token, "test:1")
    assert lease is not None
    return consumer, lease


async def test_a_repeated_batch_of_acks_is_reported_done_and_removes_nothing_more(
    queue: Queue,
) -> None:
    aredis, chat, ids, keys = await queued(queue, 5, ["a", "b", "c"])
    _, lease = await claimed(queue, chat)
    acked = ids[:2]
    args = [lease.fence, *acked]
    assert await ACK_MESSAGES(aredis, lease._ack_keys, args) == [1, 1]
    # The answer was lost; the retry learns both are done, and nothing else moves.
    assert await ACK_MESSAGES(aredis, lease._ack_keys, args) == [2, 2]
    assert await aredis.lrange(keys.messages, 0, -1) == [ids[2].encode()]
    assert int(await aredis.hget(keys.shard_keys.stats, "waiting")) == 1
    assert await aredis.hget(keys.meta, "last_ack") == f"{lease.fence}:{acked[1]}".encode()


async def test_a_batch_of_acks_stops_at_the_first_refusal(queue: Queue) -> None:
    aredis, chat, ids, keys = await queued(queue, 6, ["a", "b", "c"])
    _, lease = await claimed(queue, chat)
    a, b, c = ids
    # Out of order: "c" is not the head once "a" is gone, so "c" and what follows stay queued.
    assert await ACK_MESSAGES(aredis, lease._ack_keys, [lease.fence, a, c, b]) == [1, -2]
    assert await aredis.lrange(keys.messages, 0, -1) == [c.encode(), b.encode()]
    # Someone else's fence: refused at once, nothing removed.
    assert await ACK_MESSAGES(aredis, lease._ack_keys, [lease.fence + 1, b]) == [0]
    assert await aredis.lrange(keys.messages, 0, -1) == [c.encode(), b.encode()]
    assert int(await aredis.hget(keys.shard_keys.stats, "waiting")) == 2


# --- pending acks with writes, at the queue's level ------------------------------------------


def recorded(keys: Any, message_id: str) -> list[tuple[str, str, str]]:
    return [("RPUSH", keys.handled, message_id)]


async def test_pending_acks_in_any_order_then_an_ack_all_land_in_order(queue: Queue) -> None:
    """The queue takes pending acks with and without writes in any order (a run, one with
    writes, a run again) and sends them, in order, before the next commit."""
    aredis, chat, ids, keys = await queued(queue, 12, list("abcde"))
    consumer, lease = await claimed(queue, chat)
    a, b, c, d, e = ids
    consumer.ack_later(lease, a)
    consumer.ack_later(lease, b, recorded(keys, b))
    consumer.ack_later(lease, c)
    consumer.ack_later(lease, d, recorded(keys, d))
    await consumer.ack(lease, e, recorded(keys, e))
    assert await aredis.lrange(keys.handled, 0, -1) == [b.encode(), d.encode(), e.encode()]
    assert await aredis.llen(keys.messages) == 0
    assert lease.unacked == [] and lease.unacked_writes == {}
    assert await consumer.release(lease) is True


async def test_a_pending_commit_under_a_lost_lease_fails_the_ack_behind_it(queue: Queue) -> None:
    aredis, chat, ids, keys = await queued(queue, 13, ["a", "b"])
    consumer, lease = await claimed(queue, chat)
    a, b = ids
    consumer.ack_later(lease, a, recorded(keys, a))
    await aredis.hincrby(keys.meta, "fence", 1)  # someone else's lease now
    with pytest.raises(LeaseLost):
        await consumer.ack(lease, b, recorded(keys, b))
    assert await aredis.exists(keys.handled) == 0
    assert await aredis.lrange(keys.messages, 0, -1) == [b.encode(), a.encode()]
    assert lease.unacked == [] and lease.unacked_writes == {}


async def test_a_release_behind_a_refused_pending_commit_says_not_everything_landed(
    queue: Queue,
) -> None:
    """A pending commit refused (here: its message is not the head) while the release behind
    it goes through: the release answers False, and nothing of the commit was written."""
    aredis, chat, ids, keys = await queued(queue, 16, ["a", "b"])
    consumer, lease = await claimed(queue, chat)
    a, b = ids
    consumer.ack_later(lease, b, recorded(keys, b))
    assert await consumer.release(lease) is False
    assert await aredis.exists(keys.handled) == 0
    assert await aredis.lrange(keys.messages, 0, -1) == [b.encode(), a.encode()]
    assert await aredis.hget(keys.meta, "state") == b"ready"  # released: back in line


async def test_pending_commits_survive_a_redis_that_lost_its_scripts(queue: Queue) -> None:
    """After SCRIPT FLUSH (a restart, a failover) every call answers NOSCRIPT: the pipeline is
    loaded and sent again whole, and each message is acked once."""
    aredis, chat, ids, keys = await queued(queue, 14, ["a", "b"])
    consumer, lease = await claimed(queue, chat)
    a, b = ids
    consumer.ack_later(lease, a)
    consumer.ack_later(lease, b, recorded(keys, b))
    await consumer.release(lease)  # loads the scripts once
    await enqueue_texts(aredis, queue.prefix, {chat: ["c", "d"]}, queue.shards)
    consumer, lease = await claimed(queue, chat)
    c, d = [m.id for m in lease.messages]
    await aredis.script_flush()
    consumer.ack_later(lease, c)
    consumer.ack_later(lease, d, recorded(keys, d))
    assert await consumer.release(lease) is True
    assert await aredis.lrange(keys.handled, 0, -1) == [b.encode(), d.encode()]
    assert await aredis.llen(keys.messages) == 0
    assert not await aredis.exists(keys.meta)


async def test_the_acks_are_loaded_before_a_release_that_redis_already_knows(
    queue: Queue,
) -> None:
    """Only the release's script is known to Redis: had the pending acks answered NOSCRIPT
    while the release behind them ran, the turn's messages would be released unacked and
    handled again. The consumer loads the ack scripts before its first such pipeline."""
    aredis, chat, ids, keys = await queued(queue, 15, ["a", "b"])
    await aredis.script_flush()
    await RELEASE_CONVERSATION.load(aredis)
    consumer, lease = await claimed(queue, chat)
    a, b = ids
    consumer.ack_later(lease, a)
    consumer.ack_later(lease, b, recorded(keys, b))
    assert await consumer.release(lease) is True
    assert await aredis.lrange(keys.handled, 0, -1) == [b.encode()]
    assert await aredis.llen(keys.messages) == 0
    assert not await aredis.exists(keys.meta)


async def test_a_release_carries_a_run_a_commit_and_a_run(queue: Queue) -> None:
    aredis, chat, ids, keys = await queued(queue, 17, ["a", "b", "c"])
    consumer, lease = await claimed(queue, chat)
    a, b, c = ids
    consumer.ack_later(lease, a)
    consumer.ack_later(lease, b, recorded(keys, b))
    consumer.ack_later(lease, c)
    assert await consumer.release(lease) is True  # every pending ack landed
    assert await aredis.lrange(keys.handled, 0, -1) == [b.encode()]
    assert await aredis.llen(keys.messages) == 0
    assert not await aredis.exists(keys.meta)


async def test_commit_later_twice_is_a_handler_bug(queue: Queue) -> None:
    aredis, chat, ids, keys = await queued(queue, 18, ["a"])
    errors: list[str] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        await ctx.commit_later([("RPUSH", keys.handled, ctx.message_id)])
        try:
            await ctx.commit_later([("RPUSH", keys.handled, ctx.message_id)])
        except AlreadyCommitted as exc:
            errors.append(str(exc))

    await one_turn(queue, chat, handler)
    assert errors == [f"message {ids[0]} is already committed"]
    assert await aredis.lrange(keys.handled, 0, -1) == [ids[0].encode()]  # once


# --- a riding commit's prelude and its `then` (the engine's reply: issue 19) -----------------


def index_prelude(key: str, member: str) -> Prelude:
    """A prelude as the engine's: an index written ahead of what it indexes."""

    def queue_in(pipe: Any) -> None:
        pipe.zadd(key, {member: 1})

    return queue_in


async def test_a_riding_commits_prelude_lands_first_and_its_then_runs_after_the_release(
    queue: Queue,
) -> None:
    aredis, chat, ids, keys = await queued(queue, 19, ["a"])
    index = f"{queue.prefix}test-index"  # another hash tag: another node in a cluster
    trips_at_then: list[int] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        counting: Any = ctx.redis
        await ctx.commit_later(
            [("RPUSH", keys.handled, ctx.message_id)],
            prelude=index_prelude(index, ctx.message_id),
            then=lambda: trips_at_then.append(counting.count),
        )
        assert trips_at_then == []  # not while the commit waits for the release

    trips, lease = await one_turn(queue, chat, handler)
    # One Redis: the prelude, the commit and the release in one pipeline. A cluster runs the
    # prelude in a round trip of its own first (its pipeline keeps no order across nodes).
    assert trips.count == (1 if one_node(aredis.pipeline()) else 2)
    assert trips_at_then == [trips.count]  # once, after the last round trip: the release's
    assert await aredis.zscore(index, ids[0]) == 1
    assert await aredis.lrange(keys.handled, 0, -1) == [ids[0].encode()]
    assert not await aredis.exists(keys.meta)  # released
    assert lease.unacked_preludes == []


async def test_a_riding_commit_refused_with_its_release_never_runs_its_then(queue: Queue) -> None:
    aredis, chat, ids, keys = await queued(queue, 20, ["a"])
    ran: list[str] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        await ctx.commit_later(
            [("RPUSH", keys.handled, ctx.message_id)], then=lambda: ran.append("then")
        )
        await aredis.hincrby(keys.meta, "fence", 1)  # someone else's lease now

    await one_turn(queue, chat, handler)
    assert ran == []
    assert await aredis.llen(keys.handled) == 0  # nothing written
    assert await aredis.lrange(keys.messages, 0, -1) == [ids[0].encode()]  # delivered again


async def test_a_commit_with_a_prelude_before_another_message_lands_at_once_then_its_then(
    queue: Queue,
) -> None:
    aredis, chat, ids, keys = await queued(queue, 21, ["a", "b"])
    index = f"{queue.prefix}test-index"
    seen: list[tuple[str, float | None, list[str]]] = []
    ran: list[str] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        # What the next handler sees: the first message's prelude and its `then` already done.
        seen.append((ctx.message_id, await aredis.zscore(index, ids[0]), list(ran)))
        if ctx.message_id == ids[0]:
            await ctx.commit_later(
                prelude=index_prelude(index, ids[0]), then=lambda: ran.append(ids[0])
            )

    await one_turn(queue, chat, handler)
    assert seen == [(ids[0], None, []), (ids[1], 1, [ids[0]])]
    assert ran == [ids[0]]
    assert await aredis.llen(keys.messages) == 0
