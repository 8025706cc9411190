"""A consumer slot's decisions, run in this process against a real Redis: what a handler's
outcome does to its message, and the fairness of turns."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from shared.commit_writes import Write
from shared.dead_letters import list_dead_letters
from shared.envelope import QueuedEvent
from shared.queue_consumer import QueueConsumer
from tests.worker.support.fleet import chat_id, conversation, enqueue_texts, handled_ids
from tests.worker.support.slots import commit_after_the_lease_ran_out, run_slot
from worker.consumer_slot import not_the_messages_fault
from worker.handler import HandlerContext
from worker.handlers.recording import record


def text_of(event: QueuedEvent) -> str:
    return str(event.document()["payload"]["body"])


async def test_a_failure_after_the_commit_keeps_the_message_committed_once(
    aredis: Any, key_prefix: str
) -> None:
    chat = chat_id(1)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["raise after commit", "next"]})

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        await record(event, ctx)
        if text_of(event) == "raise after commit":
            raise RuntimeError("after the commit")

    async def both() -> bool:
        return len(await handled_ids(aredis, chat, key_prefix)) == 2

    await run_slot(aredis, key_prefix, handler, both)
    assert await handled_ids(aredis, chat, key_prefix) == sent[chat]
    assert await aredis.hlen(conversation(chat, key_prefix).attempts) == 0
    assert await list_dead_letters(aredis, 1, key_prefix) == []


async def test_a_handler_past_its_timeout_counts_a_failed_attempt(
    aredis: Any, key_prefix: str
) -> None:
    chat = chat_id(2)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["hangs"]})
    keys = conversation(chat, key_prefix)

    async def hangs(event: QueuedEvent, ctx: HandlerContext) -> None:
        await asyncio.sleep(60)

    async def delayed() -> bool:
        return await aredis.hget(keys.meta, "state") == b"delayed"

    await run_slot(aredis, key_prefix, hangs, delayed, handler_timeout=0.1)
    assert await aredis.hget(keys.attempts, sent[chat][0]) == b"1"


async def test_a_handler_is_told_when_its_timeout_cancels_it(aredis: Any, key_prefix: str) -> None:
    """`ctx.deadline` is the handler's start plus its timeout, on time.monotonic()'s clock: what
    the engine fits a customer's media before (engine/media/ingest.py)."""
    chat = chat_id(2)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["a"]})
    seen: list[tuple[float, float | None]] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        seen.append((time.monotonic(), ctx.deadline))
        await record(event, ctx)

    async def handled() -> bool:
        return await handled_ids(aredis, chat, key_prefix) == sent[chat]

    await run_slot(aredis, key_prefix, handler, handled, handler_timeout=7.0)
    [(started, deadline)] = seen
    assert deadline is not None and 0 <= started + 7.0 - deadline < 0.5


async def test_a_handler_that_cannot_reach_redis_costs_no_attempt(
    aredis: Any, key_prefix: str
) -> None:
    chat = chat_id(3)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["a"]})
    calls: list[int] = []
    outage = iter([ConnectionError("redis went away")])  # on the first delivery only

    async def flaky(event: QueuedEvent, ctx: HandlerContext) -> None:
        calls.append(ctx.attempt)
        if error := next(outage, None):
            raise error
        await record(event, ctx)

    async def handled() -> bool:
        return await handled_ids(aredis, chat, key_prefix) == sent[chat]

    await run_slot(aredis, key_prefix, flaky, handled)
    assert calls == [1, 1]  # delivered again at once, and not counted as a failure


async def test_an_undecodable_record_is_dead_lettered_at_once(aredis: Any, key_prefix: str) -> None:
    chat = chat_id(4)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["broken", "fine"]})
    keys = conversation(chat, key_prefix)
    await aredis.hset(keys.bodies, sent[chat][0], b"not a record")

    async def handled() -> bool:
        return await handled_ids(aredis, chat, key_prefix) == sent[chat][1:]

    await run_slot(aredis, key_prefix, record, handled)
    (letter,) = await list_dead_letters(aredis, 1, key_prefix)
    assert (letter.id, letter.reason, letter.attempts) == (sent[chat][0], "invalid", 1)
    assert letter.record == b"not a record"


async def test_a_long_backlog_gets_one_batch_per_turn(aredis: Any, key_prefix: str) -> None:
    busy, quiet = chat_id(5), chat_id(6)
    await enqueue_texts(aredis, key_prefix, {busy: [f"b{n}" for n in range(25)]})
    await enqueue_texts(aredis, key_prefix, {quiet: ["q0"]})
    order: list[str] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        order.append(text_of(event))

    async def all_done() -> bool:
        return len(order) == 26

    await run_slot(aredis, key_prefix, handler, all_done, batch=10)
    # One slot, batch 10: the quiet chat is served after the busy chat's first turn.
    assert order == [f"b{n}" for n in range(10)] + ["q0"] + [f"b{n}" for n in range(10, 25)]


async def test_a_retried_commit_past_the_lease_ends_the_turn_without_charging_the_next(
    aredis: Any, key_prefix: str
) -> None:
    """A commit whose first call went through (its answer lost) and whose retry arrives after
    the lease ran out: the message counts as handled, not lost, and the next message is
    delivered as a first attempt, not charged by the reaper for a delivery it never had."""
    chat = chat_id(7)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["a", "b"]})
    keys = conversation(chat, key_prefix)
    consumer = QueueConsumer(
        aredis, lease_ms=10_000, batch=10, max_attempts=3, backoff_ms=50, backoff_max_ms=50
    )
    deliveries: list[tuple[str, int]] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        deliveries.append((ctx.message_id, ctx.attempt))
        if ctx.message_id == sent[chat][0]:
            writes: list[Write] = [("RPUSH", keys.handled, "a")]
            await commit_after_the_lease_ran_out(consumer, aredis, ctx, writes)
            return
        await ctx.commit([("RPUSH", keys.handled, "b")])

    async def both() -> bool:
        return await aredis.llen(keys.handled) == 2

    await run_slot(aredis, key_prefix, handler, both, reaper=True)
    assert deliveries == [(sent[chat][0], 1), (sent[chat][1], 1)]
    assert await aredis.lrange(keys.handled, 0, -1) == [b"a", b"b"]
    assert await aredis.hlen(keys.attempts) == 0
    assert await list_dead_letters(aredis, 1, key_prefix) == []


async def test_a_redis_error_the_message_causes_counts_attempts_until_the_dead_letters(
    aredis: Any, key_prefix: str
) -> None:
    """WRONGTYPE (a handler's own bug or bad data) is the message's fault: each delivery counts
    an attempt, and after WSM_MAX_ATTEMPTS (3 here) the message is a dead letter."""
    chat = chat_id(8)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["breaks", "fine"]})
    keys = conversation(chat, key_prefix)
    not_a_list = f"{keys.shard_keys.tag}:c:{keys.token}:state"
    await aredis.set(not_a_list, "a string")
    attempts: list[int] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        if text_of(event) == "breaks":
            attempts.append(ctx.attempt)
            await ctx.redis.lpush(not_a_list, "x")  # WRONGTYPE, every time
        await record(event, ctx)

    async def moved_on() -> bool:
        return await handled_ids(aredis, chat, key_prefix) == sent[chat][1:]

    await run_slot(aredis, key_prefix, handler, moved_on, backoff_ms=20, reaper=True)
    assert attempts == [1, 2, 3]
    (letter,) = await list_dead_letters(aredis, 1, key_prefix)
    assert (letter.id, letter.reason, letter.attempts) == (sent[chat][0], "failed", 3)
    assert letter.error.startswith("ResponseError: WRONGTYPE")


async def test_a_message_that_breaks_redis_every_time_still_reaches_the_dead_letters(
    aredis: Any, redis_url: str, key_prefix: str
) -> None:
    """A connection-class error (here a real Redis call that always outlasts its client's
    timeout) is not counted as an attempt at first: it looks like Redis's trouble. But five in
    a row on one message count one attempt, so the message cannot be requeued forever."""
    chat = chat_id(9)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["times out", "fine"]})
    impatient = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.05)
    attempts: list[int] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        if text_of(event) == "times out":
            attempts.append(ctx.attempt)
            await impatient.blpop([f"{key_prefix}:never"], timeout=2)  # redis TimeoutError
        await record(event, ctx)

    async def moved_on() -> bool:
        return await handled_ids(aredis, chat, key_prefix) == sent[chat][1:]

    try:
        await run_slot(aredis, key_prefix, handler, moved_on, backoff_ms=20, reaper=True)
    finally:
        await impatient.aclose()
    assert attempts == [1] * 5 + [2] * 5 + [3] * 5
    (letter,) = await list_dead_letters(aredis, 1, key_prefix)
    assert (letter.id, letter.reason, letter.attempts) == (sent[chat][0], "failed", 3)
    assert "5 Redis errors in a row" in letter.error
    assert await aredis.hgetall(conversation(chat, key_prefix).meta) == {}


async def test_a_script_error_in_the_commit_counts_an_attempt(aredis: Any, key_prefix: str) -> None:
    """A commit the script refuses (its write hits a key of another type) is a ResponseError:
    the message's fault, counted, and nothing acked."""
    chat = chat_id(10)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["a"]})
    keys = conversation(chat, key_prefix)
    not_a_list = f"{keys.shard_keys.tag}:c:{keys.token}:state"
    await aredis.set(not_a_list, "a string")
    raised: list[BaseException] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        try:
            await ctx.commit([("RPUSH", not_a_list, "x")])
        except ResponseError as exc:
            raised.append(exc)
            raise

    async def delayed() -> bool:
        return await aredis.hget(keys.meta, "state") == b"delayed"

    await run_slot(aredis, key_prefix, handler, delayed)
    assert len(raised) == 1
    assert await aredis.hget(keys.attempts, sent[chat][0]) == b"1"
    assert await aredis.lrange(keys.messages, 0, -1) == [sent[chat][0].encode()]


@pytest.mark.parametrize(
    ("error", "redis_trouble"),
    [
        (ConnectionError("Connection closed by server."), True),
        (BusyLoadingError("Redis is loading the dataset in memory"), True),
        (ReadOnlyError("You can't write against a read only replica."), True),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (ResponseError("BUSY Redis is busy running a script."), True),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (ResponseError("ERR user_script:1: Script attempted to access a non local key"), False),
    ],
)
def test_which_redis_errors_are_not_the_messages_fault(
    error: Exception, redis_trouble: bool
) -> None:
    """The classes and prefixes as redis-py raises them for Redis's answers (see its parser's
    EXCEPTION_CLASSES); the two consequences are covered against a real Redis above."""
    assert not_the_messages_fault(error) is redis_trouble
