"""A snapshot of the queue for the fleet's metrics (read by the supervisor, not per process,
so N processes do not report N copies of one queue), and of Redis's memory beside it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, ResponseError

from shared.keys import all_shards, outbox_dlq_key
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
    # Replies in the outbox dead-letter lists (`wsm dlq outbox list`), all shards.
    outbox_dead_letters: int = 0
    # Redis's INFO memory: `used_memory` and `maxmemory` (0: no limit, or INFO not readable).
    # On a cluster, the primary closest to its limit.
    redis_memory_used_bytes: int = 0
    redis_memory_max_bytes: int = 0


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
    waiting = ready = redeliveries = dead = dead_dropped = outbox_dropped = outbox_dead = 0
    oldest_ms: int | None = None
    for shard in all_shards(shards, prefix):
        pipe = client.pipeline(transaction=False)
        pipe.hmget(shard.stats, "waiting", "redeliveries", "dead_dropped", "outbox_dead_dropped")
        pipe.llen(shard.ready)
        pipe.llen(shard.dlq)
        pipe.llen(outbox_dlq_key(shard))
        pipe.lrange(shard.ready, -FRONT_SAMPLE, -1)
        pipe.zrange(shard.leases, 0, LEASED_SAMPLE - 1)
        pipe.zrange(shard.delayed, 0, FRONT_SAMPLE - 1)
        counters, ready_len, dlq_len, outbox_dlq_len, front, leased, delayed = await pipe.execute()
        waiting += int(counters[0] or 0)
        redeliveries += int(counters[1] or 0)
        dead_dropped += int(counters[2] or 0)
        outbox_dropped += int(counters[3] or 0)
        ready += int(ready_len)
        dead += int(dlq_len)
        outbox_dead += int(outbox_dlq_len)

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
    used, limit = await read_redis_memory(client)
    return QueueSnapshot(
        waiting=max(waiting, 0),
        chats_ready=ready,
        oldest_age_seconds=age,
        redeliveries=redeliveries,
        dead_letters=dead,
        dead_dropped=dead_dropped,
        outbox_dead_dropped=outbox_dropped,
        outbox_dead_letters=outbox_dead,
        redis_memory_used_bytes=used,
        redis_memory_max_bytes=limit,
    )


async def read_redis_memory(client: RedisClient) -> tuple[int, int]:
    """`used_memory` and `maxmemory` from INFO memory, one round trip (one per primary on a
    cluster, where the primary nearest its limit is the one that refuses writes first).

    (0, 0) when INFO is refused (an ACL without `+info`, a renamed command) or not routable:
    the queue's figures are still worth a scrape. Connection errors are not caught: the queue
    could not be read either, and the supervisor shows the last snapshot."""
    try:
        if isinstance(client, RedisCluster):
            answer = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        else:
            answer = await client.info("memory")
    except (ResponseError, RedisClusterException):
        return 0, 0
    if not isinstance(answer, dict):
        return 0, 0
    nodes = [answer] if "used_memory" in answer else list(answer.values())
    figures = [
        (int(node.get("used_memory") or 0), int(node.get("maxmemory") or 0))
        for node in nodes
        if isinstance(node, dict)
    ]
    if not figures:
        return 0, 0
    return max(figures, key=lambda f: (f[0] / f[1] if f[1] else 0.0, f[0]))
