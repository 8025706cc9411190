"""One consumer slot run in the test's own process against a real Redis (the worker's loop
without its process): tests/worker/test_consumer_slot.py and its mutants' tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from shared.commit_writes import Write
from shared.envelope import QueuedEvent
from shared.keys import all_shards
from shared.queue_consumer import Lease, QueueConsumer
from shared.queue_reaper import QueueReaper
from tests.support.polling import async_wait_until
from worker.consumer_slot import ConsumerSlot
from worker.handler import HandlerContext
from worker.handlers.recording import record

Handler = Callable[[QueuedEvent, HandlerContext], Awaitable[None]]


def start_slot(
    consumer: QueueConsumer, prefix: str, handler: Any = record, shards: int = 1, **options: Any
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """The slot (new_slot) running as a task; setting the event stops it."""
    slot = new_slot(consumer, prefix, handler, shards, **options)
    return asyncio.create_task(slot.run()), slot.stopping


def new_slot(
    consumer: QueueConsumer,
    prefix: str,
    handler: Any = record,
    shards: int = 1,
    *,
    handler_timeout: float = 5.0,
) -> ConsumerSlot:
    """A slot, home shard 0 of `shards`, not started; setting its `stopping` stops it."""
    return ConsumerSlot(
        consumer=consumer,
        handler=handler,
        shards=all_shards(shards, prefix),
        home=0,
        owner="test",
        stopping=asyncio.Event(),
        handler_timeout=handler_timeout,
    )


async def stop_slot(task: asyncio.Task[None], stopping: asyncio.Event) -> None:
    """Stop a slot started by start_slot. One stuck where it should have given up (a mutant's,
    retrying for ever) is cancelled, so that its test fails on its assertions rather than
    hanging in its cleanup."""
    stopping.set()
    await asyncio.wait({task}, timeout=10)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_slot(
    client: Any,
    prefix: str,
    handler: Handler,
    until: Callable[[], Awaitable[bool]],
    *,
    batch: int = 10,
    handler_timeout: float = 5.0,
    backoff_ms: int = 60_000,
    reaper: bool = False,
) -> None:
    """Run one slot until `until()`; with `reaper`, a reaper pass runs alongside every 50 ms
    (promotes due retries, takes back expired leases), as a worker process's reaper would."""
    consumer = QueueConsumer(
        client,
        lease_ms=10_000,
        batch=batch,
        max_attempts=3,
        backoff_ms=backoff_ms,
        backoff_max_ms=backoff_ms,
    )
    task, stopping = start_slot(consumer, prefix, handler, handler_timeout=handler_timeout)
    reaping = asyncio.create_task(reap_until(client, prefix, stopping)) if reaper else None
    try:
        await async_wait_until(until, timeout=20, what="the slot to get there")
    finally:
        stopping.set()
        await task
        if reaping is not None:
            await reaping


async def reap_until(client: Any, prefix: str, stopping: asyncio.Event) -> None:
    reaper = QueueReaper(client, max_attempts=3, lock_ms=10)
    while not stopping.is_set():
        for shard in all_shards(1, prefix):
            await reaper.run_pass(shard)
        await asyncio.sleep(0.05)


async def commit_after_the_lease_ran_out(
    consumer: QueueConsumer, client: Any, ctx: HandlerContext, writes: list[Write]
) -> None:
    """A handler's commit whose first call reaches Redis (applying `writes`) and whose answer
    never reaches the worker, which retries after the lease's deadline (a stall, a long
    reconnect)."""
    keys = ctx.conversation
    await consumer.ack(Lease(keys, ctx.fence, 0, []), ctx.message_id, writes)
    await client.hset(keys.meta, "lease_until", 1)
    await client.zadd(keys.shard_keys.leases, {keys.token: 1})
    # The retry (explicit: a handler that returns without committing is acked with the
    # turn's next call, QueueConsumer.ack_later).
    await ctx.commit()
