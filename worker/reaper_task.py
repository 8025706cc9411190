"""Each worker process runs the queue's reaper (shared/queue_reaper.py) in the background.

Every process tries every interval (with jitter); the per-shard lock makes one of them do the
pass, so the reaper keeps running as long as any worker lives, without a singleton to elect.
"""

from __future__ import annotations

import asyncio
import logging
import random

from shared.dead_letters import DEFAULT_DEAD_LETTER_LIMITS, DeadLetterLimits
from shared.keys import ShardKeys
from shared.periodic import run_every
from shared.queue_reaper import QueueReaper
from shared.redis_client import RedisClient
from shared.redis_errors import REDIS_UNAVAILABLE

log = logging.getLogger("wsm.worker.reaper_task")

# The lock lives a bit less than an interval, so the process that took it can take it again on
# its next tick despite jitter; passes stay spaced by most of an interval.
LOCK_FRACTION = 0.8


def make_reaper(
    client: RedisClient,
    *,
    max_attempts: int,
    interval: float,
    dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS,
) -> QueueReaper:
    lock_ms = int(interval * LOCK_FRACTION * 1000)
    return QueueReaper(
        client, max_attempts=max_attempts, lock_ms=lock_ms, dead_letters=dead_letters
    )


async def reap_forever(
    reaper: QueueReaper,
    shards: list[ShardKeys],
    interval: float,
    holder: str,
    stop: asyncio.Event,
) -> None:
    async def one_round() -> None:
        for shard in shards:
            if stop.is_set():
                return
            try:
                if await reaper.try_lock(shard, holder):
                    report = await reaper.run_pass(shard)
                    if report:
                        log.info(
                            "reaper pass",
                            extra={
                                "shard": shard.shard,
                                "reaped": report.reaped,
                                "dead": report.dead,
                                "promoted": report.promoted,
                                "reclaimed": report.reclaimed,
                            },
                        )
            except REDIS_UNAVAILABLE as exc:
                log.warning("reaper pass skipped: redis unreachable", extra={"error": str(exc)})
                return
            except Exception:
                log.exception("reaper pass failed", extra={"shard": shard.shard})

    # Jittered, so the processes of a fleet do not all try the lock at the same instant.
    await run_every(
        lambda: interval * random.uniform(0.8, 1.0), one_round, stop, what="reaper", logger=log
    )
