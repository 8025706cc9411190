"""The engine of one worker process, and its background passes.

`EngineService` is what the fleet calls for each message (engine/conversation_engine.py does
the work) plus the background passes that cover what a crash can leave half done:

- the outbox sweeper: delivers every conversation whose outbox is due (after a crash between
  commit and send, after a backoff, after a parked session wakes up);
- the timers: queue a timeout check for conversations quiet past their deadline;
- the reminders: queue each booking's reminder when it is due (engine/agent/reminders.py);
- the waiting line: free agents get the longest-waiting customers, people in line hear that
  their place improved, assignments a crash left unconfirmed are sent again, agents' sets are
  reconciled with the conversations' states;
- the maintenance (`maintenance_once`): bounds what grows, trimming the history of every
  conversation that changed (retention and length cap, with its meta fields) and forgetting
  conversations whose state expired in the indexes;
- whatever the brain brings along (`background`: the AI agent's booking webhook deliverer).

Every pass is safe to run in all worker processes at once (locks, atomic scripts, commands
deduplicated by event id). Its parts are built by engine/parts.py; the fleet's handler factory
is `engine.agent.service:create` (the engine with the AI agent as its brain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from engine import commands
from engine.agent.freed_slots import FreedSlots
from engine.agent.reminders import Reminders
from engine.brain import Brain
from engine.conversation_engine import CommitContext, Engine
from engine.history import HistoryKeys, trim_many
from engine.identity import PhoneResolver
from engine.parts import (
    business_texts,
    coordinator,
    engine_config,
    media_ingest,
    media_library,
    menu_brain,
    sender_config,
    transcriber,
    waha_client,
)
from engine.sender import Sender, run_sweeper
from engine.state import prune_index
from engine.turn.frame import TurnTools
from engine.waha_client import Outbound
from shared.clock import now_ms
from shared.envelope import QueuedEvent
from shared.keys import EngineIndexKeys, engine_keys_for, split_conversation_token
from shared.periodic import run_every
from shared.redis_client import RedisClient
from shared.settings import Settings
from shared.text import as_text

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

# Stored media past WSM_MEDIA_RETENTION_DAYS is deleted by a pass this often (each process:
# the pass is idempotent, and a day's retention is not precise to the hour anyway).
MEDIA_SWEEP_SECONDS = 3600.0

# Background work that lives as long as the engine: started with the passes, handed the stop
# Event, cancelled at close if it does not end by itself.
Background = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class EngineService:
    """One worker process's engine: the handler plus its background passes."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        *,
        outbound: Outbound | None = None,
        brain: Brain | None = None,
        background: Sequence[Background] = (),
        closing: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        """`brain` defaults to the engine's plain menu; `background` runs alongside the passes
        and `closing` is awaited last at close (what the brain brought along)."""
        self.redis = redis
        self.settings = settings
        self.outbound = outbound or waha_client(settings)
        self.texts, texts_by_session = business_texts(settings)
        # Customers' files are stored in the media library during their turn (voice notes and
        # audio transcribed when GROQ_API_KEY is set); the files agents send are read from it
        # just before their send.
        self.media = media_library(redis, settings)
        self.transcriber = transcriber(settings)
        self.media_ingest = media_ingest(
            redis, settings, library=self.media, transcriber=self.transcriber
        )
        self.sender = Sender(redis, self.outbound, sender_config(settings), media=self.media)
        self.coordinator = coordinator(redis, settings)
        self.index = EngineIndexKeys(settings.key_prefix)
        self.engine = Engine(
            TurnTools(
                redis=redis,
                config=engine_config(settings),
                brain=brain or menu_brain(settings),
                texts=self.texts,
                texts_by_session=texts_by_session,
                line=self.coordinator.line,
                coordinator=self.coordinator,
                resolver=PhoneResolver(
                    redis,
                    self.outbound,
                    prefix=settings.key_prefix,
                    ttl_seconds=settings.lid_cache_seconds,
                ),
                sender=self.sender,
                index=self.index,
                media=self.media_ingest,
            )
        )
        # Each booking's reminder, queued to its conversation when due (WSM_REMINDER_LEAD_HOURS).
        self.reminders = Reminders.from_settings(redis, settings, self.coordinator.queue)
        # Cancelled slots of today offered to the waiting line (`offer_freed_slots`).
        self.freed_slots = FreedSlots.from_settings(
            redis, settings, self.coordinator.queue, self.coordinator.line
        )
        self._background = list(background)
        self._closing = list(closing)
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
        stop = self._stop
        passes = (
            ("timers pass", self.timers_once),
            ("reminders pass", self.reminders_once),
            ("freed slots pass", self.freed_slots.run_once),
            ("waiting line pass", self.coordinator.maintain),
            ("maintenance pass", self.maintenance_once),
        )
        self._tasks = [
            loop.create_task(run_sweeper(self.sender, stop)),
            *(
                loop.create_task(run_every(1.0, step, stop, what=what, logger=log))
                for what, step in passes
            ),
            loop.create_task(
                run_every(
                    MEDIA_SWEEP_SECONDS,
                    self.media.sweep,
                    stop,
                    what="media retention pass",
                    logger=log,
                )
            ),
            *(loop.create_task(run(stop)) for run in self._background),
        ]

    async def timers_once(self, limit: int = 500) -> int:
        """Queue a timeout check for every conversation whose timer is due."""
        index = self.index
        now = now_ms()
        # (member, score) pairs; redis-py's stubs do not type WITHSCORES replies.
        due: list[Any] = await self.redis.zrangebyscore(
            index.timers, "-inf", now, start=0, num=limit, withscores=True
        )
        queue = self.coordinator.queue
        for raw, score in due:
            token = as_text(raw)
            session, chat_id = split_conversation_token(token)
            await queue.send(
                session, chat_id, commands.TIMEOUT, {}, event_id=f"timeout:{token}:{int(score)}"
            )
            # Only if nothing moved it meanwhile (GT: never pull a later deadline earlier).
            await self.redis.zadd(index.timers, {token: now + TIMER_RECHECK_MS}, xx=True, gt=True)
        return len(due)

    async def reminders_once(self) -> dict[str, int]:
        """Queue every due reminder to its conversation (one process at a time)."""
        return await self.reminders.run_once()

    async def maintenance_once(self, *, force: bool = False) -> dict[str, int]:
        """One maintenance pass, if no process ran one within MAINTENANCE_INTERVAL_MS (or
        `force`): trim the history of every conversation changed since the previous pass, and
        forget expired conversations in the indexes. -> what it did."""
        index = self.index
        if not force and not await self.redis.set(
            index.maintenance_lock, uuid.uuid4().hex, nx=True, px=MAINTENANCE_INTERVAL_MS
        ):
            return {}
        started = now_ms()
        retention = self.settings.history_retention_seconds
        raw_since = await self.redis.get(index.maintained_until)
        since = int(raw_since) if raw_since else started - MAINTENANCE_FIRST_MS
        changed = await self.redis.zrangebyscore(
            index.conversations, since - MAINTENANCE_LOOKBACK_MS, "+inf"
        )
        histories = []
        for raw in changed:
            session, chat_id = split_conversation_token(as_text(raw))
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
        await self.media_ingest.aclose()
        if self.transcriber is not None:
            await self.transcriber.aclose()
        for close in self._closing:
            await close()
