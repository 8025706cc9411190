"""Slots parked in BLMOVE do not take the connections commits need: the blocking claims have a
pool of their own (worker/process.py; docs/architecture.md, "The fleet", "Connections").

In-process slots on a real Redis, with a deliberately tiny shared pool (2 connections, giving up
after a short wait) and 6 slots: with the claims on the shared pool, the parked slots hold both
connections and the others' claims and commits find none ("redis unreachable" pauses).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from shared.keys import all_shards
from shared.queue_consumer import QueueConsumer
from shared.redis_client import connect
from tests.worker.support.fleet import chat_id, enqueue_texts, wait_all_handled
from worker.consumer_slot import ConsumerSlot
from worker.handlers.recording import record

SLOTS = 6


async def test_parked_claims_leave_the_shared_pool_to_commits(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    shared = connect(redis_url, max_connections=2, pool_timeout=0.2)
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
        # Let every slot park in BLMOVE first, then queue the work.
        await asyncio.sleep(0.3)
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
