"""A commit's prelude (QueueConsumer.ack, HandlerContext.commit): idempotent commands on any
keys that must land before the commit, such as the engine's indexes of a conversation whose
state the commit writes (engine/turn/frame.py). On one Redis they ride in the commit's round
trip, ahead of it; on a cluster, whose pipeline runs each node's share apart, in a round trip
of their own just before it.

Run on a real Redis and on a Redis Cluster (the `queue` fixture), through the client of
tests/worker/test_ack_later.py that counts round trips. Nothing is timed: the counts and the
order are the point.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.envelope import QueuedEvent
from shared.queue_consumer import Lease, QueueConsumer
from shared.queue_errors import LeaseLost
from tests.worker.conftest import Queue
from tests.worker.test_ack_later import one_turn, queued
from worker.handler import HandlerContext


def index_key(queue: Queue, name: str) -> str:
    # Another hash tag than the conversation's: on a cluster, another slot.
    return f"{queue.prefix}:{{idx}}:{name}"


async def test_a_prelude_lands_with_the_commit_and_before_it(queue: Queue) -> None:
    aredis, chat, ids, keys = await queued(queue, 21, ["a"])
    listed = index_key(queue, "listed")

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        await ctx.commit(
            [("RPUSH", keys.handled, ctx.message_id)],
            prelude=lambda pipe: pipe.zadd(listed, {chat: 1}),
        )

    trips, _ = await one_turn(queue, chat, handler)
    assert await aredis.zscore(listed, chat) == 1
    assert await aredis.lrange(keys.handled, 0, -1) == [ids[0].encode()]
    assert await aredis.llen(keys.messages) == 0
    # One Redis: prelude + commit, then the release. A cluster: the prelude on its own first.
    assert trips.count == (2 if queue.shards == 1 else 3)


async def test_a_prelude_goes_ahead_of_the_commit_in_order(queue: Queue) -> None:
    """A prelude that the commit's own writes overwrite: what is left is the commit's, so the
    prelude ran first (in the pipeline on one Redis, in its round trip before on a cluster)."""
    aredis, chat, _, keys = await queued(queue, 22, ["a"])
    marker = f"{keys.handled}:marker"  # the conversation's slot: the commit may write it

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        def prelude(pipe: Any) -> None:
            pipe.set(marker, "prelude")

        await ctx.commit([("SET", marker, "commit")], prelude=prelude)

    await one_turn(queue, chat, handler)
    assert await aredis.get(marker) == b"commit"


async def test_a_refused_commit_writes_nothing_of_its_own(queue: Queue) -> None:
    """A lost lease: the commit's writes and its ack are refused. The prelude may have landed:
    it is the kind of write that is safe ahead of nothing (an index re-checked by its readers)."""
    aredis, chat, ids, keys = await queued(queue, 23, ["a"])
    listed = index_key(queue, "refused")
    raised: list[type[BaseException]] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        await aredis.hincrby(keys.meta, "fence", 1)  # someone else's lease now
        try:
            await ctx.commit(
                [("RPUSH", keys.handled, ctx.message_id)],
                prelude=lambda pipe: pipe.zadd(listed, {chat: 1}),
            )
        except LeaseLost as exc:
            raised.append(type(exc))
            raise

    await one_turn(queue, chat, handler)
    assert raised == [LeaseLost]
    assert await aredis.llen(keys.handled) == 0
    assert await aredis.lrange(keys.messages, 0, -1) == [ids[0].encode()]


async def test_a_prelude_with_pending_acks_rides_in_their_round_trip(queue: Queue) -> None:
    """Earlier messages' acks wait for the turn's next call (ack_later); a commit with a
    prelude takes them along: prelude, pending acks, commit, one round trip on one Redis."""
    aredis, chat, ids, keys = await queued(queue, 24, ["a", "b"])
    listed = index_key(queue, "pending")

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        if ctx.message_id == ids[1]:
            await ctx.commit(
                [("RPUSH", keys.handled, ctx.message_id)],
                prelude=lambda pipe: pipe.zadd(listed, {chat: 2}),
            )

    trips, lease = await one_turn(queue, chat, handler)
    assert lease.unacked == []
    assert await aredis.zscore(listed, chat) == 2
    assert await aredis.lrange(keys.handled, 0, -1) == [ids[1].encode()]
    assert await aredis.llen(keys.messages) == 0
    assert trips.count == (2 if queue.shards == 1 else 3)


async def test_a_prelude_survives_a_redis_that_forgot_the_scripts(queue: Queue) -> None:
    """NOSCRIPT (a restarted Redis): the pipeline is sent again with the scripts loaded; the
    prelude is repeated, which is why it must be safe to repeat."""
    aredis, chat, ids, keys = await queued(queue, 25, ["a"])
    listed = index_key(queue, "noscript")
    consumer = QueueConsumer(
        aredis, lease_ms=10_000, batch=10, max_attempts=3, backoff_ms=60_000,
        backoff_max_ms=60_000,
    )  # fmt: skip
    shard = keys.shard_keys
    token = await consumer.pop_ready(shard)
    lease: Lease | None = await consumer.claim(shard, token, "test:prelude")
    assert lease is not None
    await aredis.script_flush()
    await consumer.ack(
        lease,
        ids[0],
        [("RPUSH", keys.handled, ids[0])],
        prelude=lambda pipe: pipe.zincrby(listed, 1, chat),
    )
    assert await aredis.lrange(keys.handled, 0, -1) == [ids[0].encode()]
    assert await aredis.zscore(listed, chat) in (1, 2)  # once or, with NOSCRIPT, twice


@pytest.mark.parametrize("with_prelude", [False, True])
async def test_round_trips_of_a_commit(queue: Queue, with_prelude: bool) -> None:
    """The count the engine's turn relies on: a prelude costs no round trip on one Redis."""
    _, chat, _, keys = await queued(queue, 26 + with_prelude, ["a"])
    listed = index_key(queue, "count")

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        prelude = (lambda pipe: pipe.zadd(listed, {chat: 3})) if with_prelude else None
        await ctx.commit([("RPUSH", keys.handled, ctx.message_id)], prelude=prelude)

    trips, _ = await one_turn(queue, chat, handler)
    extra = 1 if with_prelude and queue.shards > 1 else 0
    assert trips.count == 2 + extra
