"""Waiting until the product has nothing left to do: no message queued, leased or waiting to
be retried, no reply waiting to be sent, and no webhook the simulator still has to deliver.
Only then are the engine's history and the simulator's chats final records to compare."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import redis.asyncio as aioredis

from shared.keys import all_shards, outbox_dlq_key, outbox_pending_key
from wsm.load.customers import SimClient


async def busy(
    client: Any, sim: SimClient, *, shards: int, prefix: str, outbox: bool = True
) -> int:
    """How many things are still under way (0: quiet); `outbox=False` leaves out replies
    waiting to be sent (the inbound side only)."""
    count = 0
    for shard in all_shards(shards, prefix):
        pipe = client.pipeline(transaction=False)
        pipe.llen(shard.ready)
        pipe.zcard(shard.leases)
        pipe.zcard(shard.delayed)
        if outbox:
            pipe.zcard(outbox_pending_key(shard))
        count += sum(int(n) for n in await pipe.execute())
    stats = await sim.get("/_sim/webhooks")
    count += int(stats["pending"]) + int(stats["in_flight"]) + int(stats["held"])
    return count


async def wait_quiet(
    redis_url: str,
    sim_url: str,
    *,
    timeout: float,
    shards: int = 1,
    prefix: str = "wsm",
    quiet_reads: int = 3,
    interval: float = 0.3,
    outbox: bool = True,
) -> bool:
    """True once `quiet_reads` reads in a row found nothing under way; False at the deadline.
    Several reads: a webhook delivered between two looks starts new work."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    sim = SimClient(sim_url, connections=2)
    deadline = time.monotonic() + timeout
    in_a_row = 0
    try:
        while in_a_row < quiet_reads:
            if time.monotonic() > deadline:
                return False
            under_way = await busy(client, sim, shards=shards, prefix=prefix, outbox=outbox)
            in_a_row = in_a_row + 1 if under_way == 0 else 0
            await asyncio.sleep(interval)
        return True
    finally:
        await client.aclose()
        await sim.aclose()


async def dead_letters(redis_url: str, *, shards: int = 1, prefix: str = "wsm") -> dict[str, int]:
    """Messages the fleet gave up on, and replies the sender gave up on."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    found = {"queue": 0, "outbox": 0}
    try:
        for shard in all_shards(shards, prefix):
            found["queue"] += int(await client.llen(shard.dlq))
            found["outbox"] += int(await client.llen(outbox_dlq_key(shard)))
    finally:
        await client.aclose()
    return found


async def gateway_answers(gateway_url: str) -> dict[str, dict[str, float]]:
    """How the gateway answered webhooks (by outcome: queued, duplicate, spooled, ...) and what
    its spool replayed, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"wsm_webhook_requests": "outcome", "wsm_spool_replayed": "result"}
    found: dict[str, dict[str, float]] = {name: {} for name in wanted}
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{gateway_url}/metrics")).text
    for family in text_string_to_metric_families(text):
        label = wanted.get(family.name)
        if label is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                found[family.name][key] = found[family.name].get(key, 0) + sample.value
    return found
