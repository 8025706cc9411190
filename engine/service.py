"""Wiring the engine for a worker process, and its background passes.

`create(setup)` is the fleet's handler factory (WSM_WORKER_HANDLER=engine.service:create): it
builds one engine per worker process (one Redis client, one WAHA connection pool, one sender)
and starts the background passes that cover what a crash can leave half done:

- the outbox sweeper: delivers every conversation whose outbox is due (after a crash between
  commit and send, after a backoff, after a parked session wakes up);
- the timers: queue a timeout check for conversations quiet past their deadline;
- the waiting line: free agents get the longest-waiting customers, people in line hear that
  their place improved, assignments a crash left unconfirmed are sent again, agents' sets are
  reconciled with the conversations' states;
- the maintenance (`maintenance_once`): bounds what grows, trimming the history of every
  conversation that changed (retention and length cap, with its meta fields) and forgetting
  conversations whose state expired in the indexes.

Every pass is safe to run in all worker processes at once (locks, atomic scripts, commands
deduplicated by event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from engine import commands
from engine.assignment import LineCoordinator
from engine.brain import Brain
from engine.commands import CommandQueue
from engine.handler import CommitContext, Engine, EngineConfig
from engine.history import HistoryKeys, trim_many
from engine.identity import PhoneResolver
from engine.menu_brain import MenuBrain
from engine.sender import Sender, SenderConfig, run_sweeper
from engine.state import prune_index
from engine.texts import load_texts
from engine.waha_client import Outbound, WahaClient
from engine.waiting_line import WaitingLine, now_ms
from shared.dead_letters import DeadLetterLimits
from shared.envelope import QueuedEvent
from shared.keys import EngineIndexKeys, engine_keys_for, split_conversation_token
from shared.settings import Settings

log = logging.getLogger(__name__)

# A due timer is queued once, then looked at again after this long if nothing moved it.
TIMER_RECHECK_MS = 60_000
# One maintenance pass per this long over all processes (a lock).
MAINTENANCE_INTERVAL_MS = 10_000
# A pass trims conversations changed since the previous pass minus this: a turn indexes the
# conversation (its start time) before its commit appends, at most a handler timeout later.
MAINTENANCE_LOOKBACK_MS = 300_000
# The first pass (no watermark yet) looks this far back.
MAINTENANCE_FIRST_MS = 3_600_000


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        prefix=settings.key_prefix,
        shards=settings.queue_shards,
        retention_seconds=settings.history_retention_days * 24 * 3600,
        inactivity_close_seconds=settings.inactivity_close_seconds,
        waiting_timeout_seconds=settings.waiting_timeout_seconds,
        notice_interval_seconds=settings.position_notice_interval_seconds,
        brain_history_turns=settings.brain_history_turns,
        ignore_groups=settings.ignore_groups,
        ignore_broadcasts=settings.ignore_broadcasts,
    )


def sender_config(settings: Settings) -> SenderConfig:
    return SenderConfig(
        prefix=settings.key_prefix,
        shards=settings.queue_shards,
        typing_delay_max_ms=settings.typing_delay_max_ms,
        typing_ms_per_char=settings.typing_ms_per_char,
        sends_per_second=settings.sends_per_second_per_session,
        burst=settings.send_burst,
        max_attempts=settings.send_max_attempts,
        retry_base_ms=settings.send_retry_base_ms,
        retry_max_ms=settings.send_retry_max_ms,
        lock_ms=int(settings.send_lock_seconds * 1000),
        dead_letters=DeadLetterLimits.from_settings(settings),
    )


def waiting_line(redis: Any, settings: Settings) -> WaitingLine:
    return WaitingLine(
        redis,
        prefix=settings.key_prefix,
        per_agent=settings.conversations_per_agent,
        default_handling_seconds=settings.default_handling_seconds,
    )


def command_queue(redis: Any, settings: Settings) -> CommandQueue:
    return CommandQueue(
        redis,
        prefix=settings.key_prefix,
        shards=settings.queue_shards,
        dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
    )


def coordinator(redis: Any, settings: Settings) -> LineCoordinator:
    return LineCoordinator(
        redis,
        waiting_line(redis, settings),
        command_queue(redis, settings),
        shards=settings.queue_shards,
        notice_interval_seconds=settings.position_notice_interval_seconds,
        auto_assign=settings.auto_assign,
    )


def waha_client(settings: Settings) -> WahaClient:
    key = settings.waha_api_key.get_secret_value() if settings.waha_api_key else None
    return WahaClient(settings.waha_url, api_key=key, timeout_seconds=settings.waha_timeout_seconds)


def default_brain(settings: Settings) -> Brain:
    texts = load_texts(settings.language, settings.texts_file)
    services = [s.strip() for s in settings.menu_services.split(",") if s.strip()]
    return MenuBrain(texts, business=settings.business_name, services=services)


class EngineService:
    """One worker process's engine: the handler plus its background passes."""

    def __init__(
        self,
        redis: Any,
        settings: Settings,
        *,
        outbound: Outbound | None = None,
        brain: Brain | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.outbound = outbound or waha_client(settings)
        self.texts = load_texts(settings.language, settings.texts_file)
        self.sender = Sender(redis, self.outbound, sender_config(settings))
        self.coordinator = coordinator(redis, settings)
        self.engine = Engine(
            redis,
            engine_config(settings),
            brain=brain or default_brain(settings),
            texts=self.texts,
            line=self.coordinator.line,
            coordinator=self.coordinator,
            resolver=PhoneResolver(
                redis,
                self.outbound,
                prefix=settings.key_prefix,
                ttl_seconds=settings.lid_cache_seconds,
            ),
            sender=self.sender,
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __call__(self, event: QueuedEvent, ctx: CommitContext) -> None:
        if not self._tasks:
            self.start()
        await self.engine(event, ctx)

    def start(self) -> None:
        """Start the background passes (in the running event loop)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(run_sweeper(self.sender, self._stop)),
            loop.create_task(self._every(1.0, self.timers_once)),
            loop.create_task(self._every(1.0, self.coordinator.maintain)),
            loop.create_task(self._every(1.0, self.maintenance_once)),
        ]

    async def _every(self, seconds: float, step: Callable[[], Awaitable[Any]]) -> None:
        while not self._stop.is_set():
            try:
                await step()
            except Exception:
                log.exception("background pass failed", extra={"step": step.__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def timers_once(self, limit: int = 500) -> int:
        """Queue a timeout check for every conversation whose timer is due."""
        index = EngineIndexKeys(self.settings.key_prefix)
        now = now_ms()
        due = await self.redis.zrangebyscore(
            index.timers, "-inf", now, start=0, num=limit, withscores=True
        )
        queue = command_queue(self.redis, self.settings)
        for raw, score in due:
            token = raw.decode() if isinstance(raw, bytes) else str(raw)
            session, chat_id = split_conversation_token(token)
            await queue.send(
                session, chat_id, commands.TIMEOUT, {}, event_id=f"timeout:{token}:{int(score)}"
            )
            # Only if nothing moved it meanwhile (GT: never pull a later deadline earlier).
            await self.redis.zadd(index.timers, {token: now + TIMER_RECHECK_MS}, xx=True, gt=True)
        return len(due)

    async def maintenance_once(self, *, force: bool = False) -> dict[str, int]:
        """One maintenance pass, if no process ran one within MAINTENANCE_INTERVAL_MS (or
        `force`): trim the history of every conversation changed since the previous pass, and
        forget expired conversations in the indexes. -> what it did."""
        index = EngineIndexKeys(self.settings.key_prefix)
        if not force and not await self.redis.set(
            index.maintenance_lock, uuid.uuid4().hex, nx=True, px=MAINTENANCE_INTERVAL_MS
        ):
            return {}
        started = now_ms()
        retention = self.settings.history_retention_days * 24 * 3600
        raw_since = await self.redis.get(index.maintained_until)
        since = int(raw_since) if raw_since else started - MAINTENANCE_FIRST_MS
        changed = await self.redis.zrangebyscore(
            index.conversations, since - MAINTENANCE_LOOKBACK_MS, "+inf"
        )
        histories = []
        for raw in changed:
            token = raw.decode() if isinstance(raw, bytes) else str(raw)
            session, chat_id = split_conversation_token(token)
            keys = engine_keys_for(
                session, chat_id, self.settings.queue_shards, self.settings.key_prefix
            )
            histories.append(HistoryKeys(stream=keys.history, meta=keys.history_meta))
        trimmed = await trim_many(
            self.redis,
            histories,
            retention_seconds=retention,
            max_entries=self.settings.history_max_messages,
            now_ms=started,
        )
        done = {
            "conversations": len(changed),
            "trimmed": trimmed.entries,
            "dropped": trimmed.by_length,
            "compacted": trimmed.compacted,
        }
        if done["dropped"]:
            # Data loss by the length cap: counted, and logged (counts only, no customer).
            await self.redis.hincrby(index.dropped, "history_entries", done["dropped"])
            log.warning("history entries dropped by the length cap", extra=done)
        done["forgotten"] = await prune_index(
            self.redis,
            index,
            shards=self.settings.queue_shards,
            retention_seconds=retention,
            now_ms=started,
        )
        await self.redis.set(index.maintained_until, started)
        return done

    async def aclose(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.sender.drain()
        await self.outbound.aclose()


def create(setup: Any) -> EngineService:
    """The fleet's handler factory: `WSM_WORKER_HANDLER=engine.service:create`.

    The fleet calls it inside the worker process's running loop, so the background passes
    start here: a process started after a crash must deliver what the crashed one left in the
    outboxes even if no new message ever reaches it (with the passes started at the first
    message, those replies waited for the next customer to write)."""
    service = EngineService(setup.redis, setup.settings)
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # called outside a loop (a script): they start with the first message
        return service
    service.start()
    return service
