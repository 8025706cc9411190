"""A snapshot of the queue for the fleet's metrics (read by the supervisor, not per process,
so N processes do not report N copies of one queue)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from shared.keys import all_shards
from shared.redis_client import RedisClient

# How many conversations at the front of each shard's line (and of its retry queue) are looked
# at for the oldest waiting message, besides every leased one. The line is FIFO, so the oldest
# waiting message is almost always at its front or in work; reading all of a long line on every
# scrape would cost more than the figure is worth.
FRONT_SAMPLE = 10
LEASED_SAMPLE = 500


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    waiting: int = 0
    chats_ready: int = 0
    oldest_age_seconds: float = 0.0
    redeliveries: int = 0
    dead_letters: int = 0
    # Dead letters dropped by the cap or by age (queue and outbox lists), since the start.
    dead_dropped: int = 0
    outbox_dead_dropped: int = 0


def _received_at_ms(record: bytes | None) -> int | None:
    if not record:
        return None
    header, sep, _ = record.partition(b"\n")
    if not sep:
        return None
    try:
        value = orjson.loads(header).get("at")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) else None


async def read_queue_snapshot(client: RedisClient, shards: int, prefix: str) -> QueueSnapshot:
    waiting = ready = redeliveries = dead = dead_dropped = outbox_dropped = 0
    oldest_ms: int | None = None
    for shard in all_shards(shards, prefix):
        pipe = client.pipeline(transaction=False)
        pipe.hmget(shard.stats, "waiting", "redeliveries", "dead_dropped", "outbox_dead_dropped")
        pipe.llen(shard.ready)
        pipe.llen(shard.dlq)
        pipe.lrange(shard.ready, -FRONT_SAMPLE, -1)
        pipe.zrange(shard.leases, 0, LEASED_SAMPLE - 1)
        pipe.zrange(shard.delayed, 0, FRONT_SAMPLE - 1)
        counters, ready_len, dlq_len, front, leased, delayed = await pipe.execute()
        waiting += int(counters[0] or 0)
        redeliveries += int(counters[1] or 0)
        dead_dropped += int(counters[2] or 0)
        outbox_dropped += int(counters[3] or 0)
        ready += int(ready_len)
        dead += int(dlq_len)

        conversations = [shard.conversation(t.decode()) for t in {*front, *leased, *delayed}]
        if not conversations:
            continue
        pipe = client.pipeline(transaction=False)
        for conversation in conversations:
            pipe.lindex(conversation.messages, -1)
        heads = await pipe.execute()
        pipe = client.pipeline(transaction=False)
        asked = 0
        for conversation, head in zip(conversations, heads, strict=True):
            if head is not None:
                pipe.hget(conversation.bodies, head)
                asked += 1
        if not asked:
            continue
        for record in await pipe.execute():
            at = _received_at_ms(record)
            if at is not None and (oldest_ms is None or at < oldest_ms):
                oldest_ms = at
    age = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
    return QueueSnapshot(
        max(waiting, 0), ready, age, redeliveries, dead, dead_dropped, outbox_dropped
    )
