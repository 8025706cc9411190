"""Heartbeats of a fleet in Redis: a key per worker process and one for the supervisor, each
rewritten every WSM_HEARTBEAT_INTERVAL and expiring after three intervals. A key that is gone
means its writer stopped: the process died, or its event loop is stuck (the beat is written
from the same loop that runs the handlers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from shared.periodic import run_every
from shared.redis_client import RedisClient
from shared.redis_errors import REDIS_UNAVAILABLE

log = logging.getLogger("wsm.worker.heartbeat")

# A beat lives this many intervals: one late or lost write is not yet a death.
TTL_INTERVALS = 3


async def write_beat(
    client: RedisClient, key: str, interval: float, document: dict[str, Any]
) -> None:
    await client.set(key, orjson.dumps(document), px=int(interval * TTL_INTERVALS * 1000))


async def beat_forever(
    client: RedisClient,
    key: str,
    interval: float,
    document: Callable[[], dict[str, Any]],
    stop: asyncio.Event,
) -> None:
    """Write `document()` under `key` now and every `interval` seconds, until `stop` is set."""
    unreachable = False

    async def beat() -> None:
        nonlocal unreachable
        try:
            await write_beat(client, key, interval, document())
            unreachable = False
        except REDIS_UNAVAILABLE as exc:
            if not unreachable:  # once per outage, not once per beat
                log.warning("heartbeat not written: redis unreachable", extra={"error": str(exc)})
            unreachable = True

    await run_every(interval, beat, stop, what="heartbeat", logger=log)
