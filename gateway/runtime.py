"""Everything one gateway process runs, wired together, started and stopped as one.

Built from the settings (no I/O); `start()` adopts orphaned spool files and launches the
replayer; `stop()` releases the spool files (a successor adopts what is left) and the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from gateway import metrics
from gateway.batcher import EnqueueBatcher
from gateway.intake import Intake
from gateway.redis_link import RedisStatus, connect_gateway_client
from gateway.replay import SpoolReplayer
from gateway.spool import Spool
from gateway.webhook import WebhookEndpoint
from shared.redis_client import RedisClient
from shared.settings import Settings

log = logging.getLogger("wsm.gateway.runtime")

# How often stop() cancels the spool replayer again while it has not ended (see stop()).
STOP_RECHECK_S = 0.1


class GatewayRuntime:
    def __init__(self, settings: Settings, client: RedisClient | None = None) -> None:
        self.settings = settings
        self.deadline_s = settings.webhook_redis_timeout_ms / 1000
        self.client = client if client is not None else connect_gateway_client(settings)
        self.status = RedisStatus()
        self.spool = Spool(
            settings.spool_dir.resolve(),
            max_bytes=settings.spool_max_bytes,
            write_timeout_s=settings.spool_timeout_ms / 1000,
        )
        self.intake = Intake(
            EnqueueBatcher(self.client, self.status, timeout_s=self.deadline_s),
            self.spool,
            self.status,
            redis_timeout_s=self.deadline_s,
        )
        self.webhook = WebhookEndpoint(
            intake=self.intake,
            hmac_keys=settings.hmac_keys(),
            max_body_bytes=settings.max_body_bytes,
            shards=settings.queue_shards,
            dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
            key_prefix=settings.key_prefix,
            max_age_seconds=settings.webhook_max_age_seconds,
        )
        self.replayer = SpoolReplayer(self.spool, self.client, self.status, settings)
        self._replay_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        metrics.forget_dead_processes()
        metrics.mark_started()
        adopted = await self.spool.adopt_orphans(at_start=True)
        if adopted:
            log.warning("replaying events spooled by a previous gateway", extra={"events": adopted})
        self._replay_task = asyncio.create_task(self.replayer.run(), name="wsm-spool-replay")

    async def stop(self) -> None:
        task = self._replay_task
        if task is not None:
            # A cancellation that lands inside a Redis call under a deadline can come out as a
            # timeout (CPython gh-86296), which the replayer takes for "Redis away" and goes
            # on: one cancel could leave stop() waiting for ever (seen once in a full run, the
            # gateway's test client hung in its shutdown). So the replayer is told to stop,
            # and cancelled again until it has.
            self.replayer.stop()
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=STOP_RECHECK_S)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
            self._replay_task = None
        await self.spool.close()
        await self.client.aclose()
        metrics.forget_this_process()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when Redis answers PING within the webhook deadline."""
        redis: dict[str, Any] = {"ok": False}
        try:
            async with asyncio.timeout(self.deadline_s):
                await self.client.ping()
                if self.status.version is None:
                    # Ready means a server known to be new enough: the replayer's first step,
                    # which asks, may not have run yet (a busy machine, right after start).
                    await self.status.check_version(self.client, self.deadline_s)
        except Exception as exc:
            redis["error"] = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        else:
            redis["ok"] = self.status.usable and self.status.version is not None
        if self.status.version:
            redis["version"] = self.status.version
        if self.status.unsupported:
            redis["error"] = self.status.unsupported
        spool = {
            "in_use": self.spool.has_backlog,
            "events": self.spool.events,
            "writable": self.spool.last_error is None,
        }
        ready = bool(redis["ok"])
        return ready, {
            "status": "ready" if ready else "unavailable",
            "redis": redis,
            "spool": spool,
        }
