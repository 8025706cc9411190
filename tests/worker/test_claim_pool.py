"""Slots parked in BLMOVE do not take the connections commits need: the blocking claims have a
pool of their own (worker/process.py; docs/architecture.md, "The fleet", "Connections").

In-process slots on a real Redis, with a deliberately tiny shared pool (2 connections) and 6
slots. With the claims on the shared pool, the parked slots would hold both of its connections
for up to a second each: the check while they are parked sees that directly, and the commits
and claims left waiting for the pool would pause ("redis unreachable").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from shared.keys import all_shards
from shared.queue_consumer import QueueConsumer
from shared.redis_client import connect
from tests.support.polling import async_wait_until
from tests.worker.support.fleet import chat_id, enqueue_texts, wait_all_handled
from worker.consumer_slot import BLOCK_SECONDS, ConsumerSlot
from worker.handlers.recording import record

SLOTS = 6

# Below one parked BLMOVE, so that claims on the shared pool would make its waiters give up;
# well above what waiting behind the other slots' round trips takes on a loaded CI machine
# (0.2 s was not: CI once logged four pauses with the claims on their own pool).
SHARED_POOL_TIMEOUT = 0.8 * BLOCK_SECONDS


def in_use(client: Any) -> int:
    return len(client.connection_pool._in_use_connections)


async def test_parked_claims_leave_the_shared_pool_to_commits(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    shared = connect(redis_url, max_connections=2, pool_timeout=SHARED_POOL_TIMEOUT)
    claims = connect(redis_url, max_connections=SLOTS + 1)
    consumer = QueueConsumer(
        shared, lease_ms=30_000, batch=10, max_attempts=3, backoff_ms=1000,
        backoff_max_ms=1000, blocking_client=claims,
    )  # fmt: skip
    stopping = asyncio.Event()
    slots = [
        ConsumerSlot(
            consumer=consumer,
            handler=record,
            shards=all_shards(1, key_prefix),
            home=0,
            owner=f"test:{n}",
            stopping=stopping,
            handler_timeout=5.0,
        )
        for n in range(SLOTS)
    ]
    caplog.set_level(logging.WARNING, logger="wsm.worker")
    tasks = [asyncio.create_task(slot.run()) for slot in slots]
    try:
        # Every slot parks in BLMOVE first, each on a claims connection, none on the shared pool
        # (an idle slot on one shard does nothing else between its BLMOVEs).
        async def parked() -> bool:
            return in_use(claims) == SLOTS

        await async_wait_until(parked, timeout=5, what="every slot parked on the claims pool")
        assert in_use(shared) == 0
        texts = {chat_id(n): [f"m{i}" for i in range(5)] for n in range(1, 9)}
        sent = await enqueue_texts(shared, key_prefix, texts)
        handled = await wait_all_handled(shared, sent, key_prefix)
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
        await claims.aclose()
        await shared.aclose()
    assert handled == sent  # every message once, in order
    pauses = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert pauses == []
