"""A consumer slot's decisions, run in this process against a real Redis: what a handler's
outcome does to its message, and the fairness of turns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ConnectionError

from shared.dead_letters import list_dead_letters
from shared.envelope import QueuedEvent
from shared.keys import all_shards
from shared.queue_consumer import QueueConsumer
from tests.support.polling import async_wait_until
from tests.worker.support import chat_id, conversation, enqueue_texts, handled_ids
from worker.consumer_slot import ConsumerSlot
from worker.handler import HandlerContext
from worker.handlers.recording import record

Handler = Callable[[QueuedEvent, HandlerContext], Awaitable[None]]


async def run_slot(
    client: Any,
    prefix: str,
    handler: Handler,
    until: Callable[[], Awaitable[bool]],
    *,
    batch: int = 10,
    handler_timeout: float = 5.0,
) -> None:
    consumer = QueueConsumer(
        client,
        lease_ms=10_000,
        batch=batch,
        max_attempts=3,
        backoff_ms=60_000,
        backoff_max_ms=60_000,
    )
    stopping = asyncio.Event()
    slot = ConsumerSlot(
        consumer=consumer,
        handler=handler,
        shards=all_shards(1, prefix),
        home=0,
        owner="test",
        stopping=stopping,
        handler_timeout=handler_timeout,
    )
    task = asyncio.create_task(slot.run())
    try:
        await async_wait_until(until, timeout=20, what="the slot to get there")
    finally:
        stopping.set()
        await task


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


async def test_a_handler_that_cannot_reach_redis_costs_no_attempt(
    aredis: Any, key_prefix: str
) -> None:
    chat = chat_id(3)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["a"]})
    calls: list[int] = []

    async def flaky(event: QueuedEvent, ctx: HandlerContext) -> None:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise ConnectionError("redis went away")
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
