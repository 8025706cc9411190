"""`/metrics` (the engine's gauges, read from Redis at each scrape) and `/healthz`. Open, not
under /api: Prometheus and the container's health check reach them on the internal network.

A scrape costs a fixed number of round trips and a bounded number of commands, however many
conversations there are: the gauges are read with a few pipelines, and `wsm_outbox_pending`
reads the length of at most OUTBOXES_READ_PER_SHARD outboxes per queue shard.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api.deps import ApiParts, Parts
from engine.metrics import EngineSnapshot
from engine.state import State
from shared.keys import all_shards, engine_keys_for, outbox_pending_key, split_conversation_token
from shared.redis_client import RedisClient
from shared.text import as_text

router = APIRouter(include_in_schema=False)

# `wsm_outbox_pending` counts replies: the lengths of the outboxes of the shard's pending set
# (the conversations with something to send), soonest due first. Beyond this many per shard,
# each further pending conversation counts as one reply, the least it holds: the gauge is
# exact in ordinary operation and a lower bound in a backlog (still > 0, which is what the
# WsmOutboxStuck alert asks), and a scrape never walks a backlog.
OUTBOXES_READ_PER_SHARD = 100


async def outbox_pending(redis: RedisClient, *, prefix: str, shards: int) -> int:
    pending_keys = [outbox_pending_key(shard) for shard in all_shards(shards, prefix)]
    pipe = redis.pipeline(transaction=False)
    for key in pending_keys:
        pipe.zcard(key)
        pipe.zrange(key, 0, OUTBOXES_READ_PER_SHARD - 1)
    counts_and_members = await pipe.execute()
    unread = 0
    pipe = redis.pipeline(transaction=False)
    lengths = 0
    for n in range(len(pending_keys)):
        count, members = counts_and_members[2 * n : 2 * n + 2]
        unread += max(0, int(count) - len(members))
        for member in members:
            session, chat_id = split_conversation_token(as_text(member))
            pipe.llen(engine_keys_for(session, chat_id, shards, prefix).outbox)
            lengths += 1
    read = sum(int(length) for length in await pipe.execute()) if lengths else 0
    return read + unread


async def snapshot(parts: ApiParts) -> EngineSnapshot:
    redis, index, line = parts.redis, parts.index, parts.coordinator.line
    pending = await outbox_pending(redis, prefix=parts.prefix, shards=parts.shards)
    sessions = await line.sessions()
    pipe = redis.pipeline(transaction=False)
    for name in sessions:
        pipe.zcard(line.keys.waiting(name))
    for state in State:
        pipe.scard(index.in_state(state.value))
    pipe.hgetall(index.sessions)
    replies = await pipe.execute()
    lines = {
        name: int(length) for name, length in zip(sessions, replies[: len(sessions)], strict=True)
    }
    counts = replies[len(sessions) : len(sessions) + len(State)]
    conversations = {s.value: int(c) for s, c in zip(State, counts, strict=True)}
    up = {as_text(k): orjson.loads(v).get("status") == "WORKING" for k, v in replies[-1].items()}
    return EngineSnapshot(pending, lines, conversations, up)


@router.get("/metrics")
async def metrics(parts: Parts) -> Response:
    parts.collector.snapshot = await snapshot(parts)
    return Response(generate_latest(parts.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz(parts: Parts) -> dict[str, str]:
    await parts.redis.ping()
    return {"status": "ok"}
