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

from worker.redis_retry import RETRYABLE_REDIS_ERRORS
from worker.stopping import sleep_unless

log = logging.getLogger("wsm.worker.heartbeat")

# A beat lives this many intervals: one late or lost write is not yet a death.
TTL_INTERVALS = 3


async def write_beat(client: Any, key: str, interval: float, document: dict[str, Any]) -> None:
    await client.set(key, orjson.dumps(document), px=int(interval * TTL_INTERVALS * 1000))


async def beat_forever(
    client: Any,
    key: str,
    interval: float,
    document: Callable[[], dict[str, Any]],
    stop: asyncio.Event,
) -> None:
    """Write `document()` under `key` now and every `interval` seconds, until `stop` is set."""
    unreachable = False
    while not stop.is_set():
        try:
            await write_beat(client, key, interval, document())
            unreachable = False
        except RETRYABLE_REDIS_ERRORS as exc:
            if not unreachable:  # once per outage, not once per beat
                log.warning("heartbeat not written: redis unreachable", extra={"error": str(exc)})
            unreachable = True
        await sleep_unless(stop, interval)
