"""The background task that moves spooled events into Redis, oldest first.

It also adopts the spool files of dead gateway processes (at start and every few seconds) and
checks the Redis version on first contact when Redis was down at start. Progress is saved
after every batch Redis confirmed; a crash in between replays that batch again, and the
enqueue script answers "duplicate" for every event it already holds.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from gateway import metrics
from gateway.redis_link import RedisStatus
from gateway.spool import ReplayBatch, Spool
from shared.backoff import Backoff
from shared.enqueue import DUPLICATE, EnqueueRequest, enqueue_many
from shared.events import InvalidEvent, load_body, route_event
from shared.redis_client import RedisClient
from shared.settings import Settings

log = logging.getLogger("wsm.gateway.replay")

BATCH_EVENTS = 256
BATCH_BYTES = 1 << 20
# A replay batch is up to 256 events: more than a webhook's round trip, still well under a second.
ROUND_TRIP_TIMEOUT_S = 2.0
# How soon a returning Redis is noticed, and how hard a dead one is knocked on.
RETRY_MIN_S = 0.05
RETRY_MAX_S = 0.5
ADOPT_INTERVAL_S = 5.0


class SpoolReplayer:
    def __init__(
        self, spool: Spool, client: RedisClient, status: RedisStatus, settings: Settings
    ) -> None:
        self._spool = spool
        self._client = client
        self._status = status
        self._settings = settings
        self._backoff = Backoff(first=RETRY_MIN_S, cap=RETRY_MAX_S)
        self._next_adoption = 0.0
        self._batch: ReplayBatch | None = None
        self._stopping = False

    def stop(self) -> None:
        """Ends `run` at its next step (runtime.stop also cancels it; see there)."""
        self._stopping = True

    async def run(self) -> None:
        """Replay until stopped; a failure of the disk or a bug is logged and retried, never
        fatal (a dead replayer would leave spooled events where nobody replays them)."""
        loop = asyncio.get_running_loop()
        self._backoff.reset()
        self._next_adoption = loop.time() + ADOPT_INTERVAL_S
        self._batch = None  # kept across failed attempts: it stays the head
        while not self._stopping:
            try:
                await self._step(loop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("spool replay failed; retrying")
                self._batch = None
                await asyncio.sleep(RETRY_MAX_S)

    async def _step(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.time() >= self._next_adoption:
            await self._adopt()
            self._next_adoption = loop.time() + ADOPT_INTERVAL_S
        if not await self._status.check_version(self._client, ROUND_TRIP_TIMEOUT_S):
            # Unreachable: knock again soon. Too old: events stay spooled until the operator
            # replaces the server and restarts the gateway.
            await asyncio.sleep(self._backoff.next_delay())
            return
        if self._batch is None:
            self._batch = await self._spool.next_batch(BATCH_EVENTS, BATCH_BYTES)
        if self._batch is None:
            await self._spool.wait_for_work(max(0.0, self._next_adoption - loop.time()))
            return
        if await self._replay(self._batch):
            self._batch = None
            self._backoff.reset()
            self._status.mark_reachable()
        else:
            # Woken early when a webhook's round trip succeeds: Redis is back.
            await self._status.wait_reachable(self._backoff.next_delay())

    async def _adopt(self) -> None:
        metrics.forget_dead_processes()
        await self._spool.adopt_orphans()

    async def _replay(self, batch: ReplayBatch) -> bool:
        requests: list[EnqueueRequest] = []
        for event in batch.events:
            request = self._request_for(event.body, event.received_at_ms)
            if request is not None:
                requests.append(request)
        try:
            async with asyncio.timeout(ROUND_TRIP_TIMEOUT_S):
                results = await enqueue_many(self._client, requests) if requests else []
        except Exception as exc:
            self._status.mark_unreachable(repr(exc))
            return False
        await self._spool.mark_replayed(batch)
        queued = sum(result != DUPLICATE for result in results)
        metrics.SPOOL_REPLAYED.labels("queued").inc(queued)
        metrics.count_settled(results)
        metrics.SPOOL_REPLAYED.labels("duplicate").inc(len(results) - queued)
        log.info(
            "replayed spooled events",
            extra={"events": len(batch.events), "queued": queued, "left": self._spool.events},
        )
        return True

    def _request_for(self, body: bytes, received_at_ms: int) -> EnqueueRequest | None:
        # Routed again from the raw body with today's settings (key prefix, shards, TTL): the
        # same code that accepted it, so it routes the same way.
        try:
            routed = route_event(load_body(body), body)
        except (orjson.JSONDecodeError, InvalidEvent) as exc:
            routed = None
            log.error("spooled event no longer routes; dropped", extra={"error": str(exc)})
        if routed is None:
            metrics.SPOOL_REPLAYED.labels("unroutable").inc()
            return None
        return EnqueueRequest.for_event(
            routed,
            body,
            received_at_ms=received_at_ms,
            shards=self._settings.queue_shards,
            dedupe_ttl_seconds=self._settings.dedupe_ttl_seconds,
            prefix=self._settings.key_prefix,
        )
