"""The live channel: what changed, derived once, fanned out to every open page over
Server-Sent Events.

    engine's Redis keys ──(one Watcher per deployment, a few cheap reads every INTERVAL)──►
        {console}:events (a Redis stream) ──(one Hub task per API process, XREAD BLOCK)──►
            each page's SSE connection (renders what concerns its agent and its page)

The Watcher compares what it saw last time with what is there now: each line's sorted set,
the agents' hash and their conversation sets, and, for every conversation that is in a line,
with an agent or open in a page, its state (state, agent, version), its history's last stream
id and (for open pages) the delivery status of its recent messages. Each difference becomes one
entry of the events stream; a conversation it starts watching counts as changed (a page may have
read it just before a message landed). Only one API process derives events at a time (a lock
with a TTL); when another takes over it starts by publishing `resync`, which reloads the open
pages, because it cannot know what changed while nobody was watching.

A page's SSE connection starts from the events stream id the page was rendered at (or the
browser's Last-Event-ID when it reconnects), replays what it missed from the stream, then
follows the Hub. Each event is sent as ONE SSE message (`update`) made of htmx out-of-band
fragments, with the stream id as its id, so a reconnect never loses nor repeats half an event.
When the id the browser asks for has been trimmed away, the page is told to reload.

Better, later: the engine could XADD these events where the changes happen (engine/handler.py
after a commit, engine/sender.py after outbox_sent.lua, engine/waiting_line.py in enter/leave/
take/release), which would remove the polling and its INTERVAL of latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.typing import EncodableT, FieldT

from engine.history import recent
from engine.waiting_line import now_ms
from shared.keys import ConsoleKeys, split_conversation_token
from shared.periodic import cancel_requested
from shared.redis_client import RedisClient
from shared.text import as_text

from .views import Reads, stream_id

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.2
LOCK_MS = 3000
EVENTS_MAXLEN = 20_000
# How long an open page keeps its conversation watched after its last sign of life.
VIEW_TTL_MS = 60_000
# Recent messages whose delivery status is followed, per open conversation.
STATUS_WINDOW = 30
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    kind: str  # line | agents | conv | msg | status | resync
    token: str = ""
    session: str = ""
    since: str = ""  # msg: the history id before the new entries
    upto: str = ""  # msg: the newest entry's history id
    cursor: str = ""  # status: the message's history id
    status: str = ""

    @classmethod
    def from_stream(cls, entry_id: Any, values: dict[Any, Any]) -> Event:
        fields = {as_text(k): as_text(v) for k, v in values.items()}
        return cls(id=as_text(entry_id), **{k: v for k, v in fields.items() if k in _FIELDS})


_FIELDS = {"kind", "token", "session", "since", "upto", "cursor", "status"}


@dataclass
class _Seen:
    lines: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    agents: tuple[Any, ...] = ()
    states: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    last_ids: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, dict[str, str]] = field(default_factory=dict)


class Watcher:
    """Derives the console's events from the engine's keys (see the module's docstring)."""

    def __init__(self, redis: RedisClient, reads: Reads, keys: ConsoleKeys) -> None:
        self._redis = redis
        self.reads = reads
        self.keys = keys
        self.line = reads.line
        self.me = secrets.token_hex(8)
        self.seen: _Seen | None = None
        self.stopped = False

    async def publish(self, kind: str, **fields: str) -> str:
        entry: dict[FieldT, EncodableT] = {"kind": kind}
        entry.update(fields.items())
        entry_id = await self._redis.xadd(
            self.keys.events, entry, maxlen=EVENTS_MAXLEN, approximate=True
        )
        return as_text(entry_id)

    async def holds_lock(self) -> bool:
        got = await self._redis.set(self.keys.watcher, self.me, nx=True, px=LOCK_MS)
        if got:
            return True
        holder = await self._redis.get(self.keys.watcher)
        if holder is not None and as_text(holder) == self.me:
            await self._redis.pexpire(self.keys.watcher, LOCK_MS)
            return True
        return False

    async def run(self) -> None:
        # `stopped` as well as cancellation: a cancel that lands inside the Redis client may
        # be absorbed by it, and the loop must end anyway (shared/periodic.py).
        while not (self.stopped or cancel_requested()):
            try:
                if await self.holds_lock():
                    await self.tick()
                else:
                    self.seen = None  # another process watches; start afresh if it stops
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("console watcher pass failed")
                self.seen = None
                await asyncio.sleep(1)
            await asyncio.sleep(INTERVAL_SECONDS)

    async def tick(self) -> None:
        first = self.seen is None
        seen = self.seen or _Seen()
        now = now_ms()
        emits: list[dict[str, str]] = []

        sessions = await self.line.sessions()
        pipe = self._redis.pipeline(transaction=False)
        for session in sessions:
            # Every line of the session (teams' too), merged: any change shows.
            lines = [self.line.line_key(session, team) for team in self.line.team_ids(session)]
            pipe.zunion(lines, withscores=True)
        pipe.hgetall(self.line.keys.agents)
        pipe.zrangebyscore(self.keys.viewed, now, "+inf")
        rows = await pipe.execute()
        line_rows, agents_raw, viewed_raw = rows[: len(sessions)], rows[-2], rows[-1]

        watched: set[str] = set()
        for session, members in zip(sessions, line_rows, strict=True):
            snapshot = tuple((as_text(m), s) for m, s in members)
            watched.update(m for m, _ in snapshot)
            if seen.lines.get(session, ()) != snapshot:
                emits.append({"kind": "line", "session": session})
            seen.lines[session] = snapshot

        agents = {as_text(k): as_text(v) for k, v in agents_raw.items()}
        agent_ids = sorted(agents)
        pipe = self._redis.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.smembers(self.line.keys.agent_conversations(agent_id))
        sets = await pipe.execute() if agent_ids else []
        agents_snapshot = tuple(
            (agent_id, agents[agent_id], tuple(sorted(as_text(t) for t in members)))
            for agent_id, members in zip(agent_ids, sets, strict=True)
        )
        for _, _, handling in agents_snapshot:
            watched.update(handling)
        if seen.agents != agents_snapshot:
            emits.append({"kind": "agents"})
        seen.agents = agents_snapshot

        viewed = {as_text(t) for t in viewed_raw}
        watched |= viewed
        tokens = sorted(watched)
        pipe = self._redis.pipeline(transaction=False)
        for token in tokens:
            session, chat_id = split_conversation_token(token)
            pipe.hmget(self.reads.state_key(session, chat_id), "state", "agent_id", "version")
            pipe.xrevrange(self.reads.history_keys(session, chat_id).stream, count=1)
        rows = await pipe.execute() if tokens else []
        for n, token in enumerate(tokens):
            state = tuple(as_text(v) if v is not None else "" for v in rows[2 * n])
            last = rows[2 * n + 1]
            last_id = as_text(last[0][0]) if last else ""
            known = token in seen.states
            # Newly watched (a page just opened it, or it entered a line) after the first pass:
            # what changed since a page read it is unknown, so its pages catch up (each appends
            # only what it lacks). Without this, a message landing between a page's render and
            # this pass never showed on that page.
            fresh = not known and not first
            if fresh or (known and seen.states[token] != state):
                emits.append({"kind": "conv", "token": token})
            if (fresh and last_id) or (known and seen.last_ids.get(token, "") != last_id):
                emits.append(
                    {
                        "kind": "msg",
                        "token": token,
                        "since": seen.last_ids.get(token, ""),
                        "upto": last_id,
                    }
                )
            seen.states[token] = state
            seen.last_ids[token] = last_id

        for token in sorted(viewed):
            session, chat_id = split_conversation_token(token)
            entries = await recent(
                self._redis, self.reads.history_keys(session, chat_id), STATUS_WINDOW
            )
            current = {e.cursor: e.status for e in entries if e.direction == "out"}
            before = seen.statuses.get(token)
            if before is not None:
                for cursor, status in current.items():
                    if cursor in before and before[cursor] != status:
                        emits.append(
                            {"kind": "status", "token": token, "cursor": cursor, "status": status}
                        )
            seen.statuses[token] = current

        for gone in set(seen.states) - watched:
            seen.states.pop(gone, None)
            seen.last_ids.pop(gone, None)
        for gone in set(seen.statuses) - viewed:
            seen.statuses.pop(gone, None)
        if now % 10_000 < INTERVAL_SECONDS * 1000:
            await self._redis.zremrangebyscore(self.keys.viewed, "-inf", now)

        self.seen = seen
        if first:
            # Nothing is known about what changed before this process started watching.
            await self.publish("resync")
            return
        for fields in emits:
            await self.publish(**fields)


class Hub:
    """One XREAD BLOCK on the events stream per API process, fanned out to its pages."""

    def __init__(self, redis: RedisClient, keys: ConsoleKeys) -> None:
        self._redis = redis
        self.keys = keys
        self.subscribers: set[asyncio.Queue[Event | None]] = set()
        self.stopped = False

    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=1000)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self.subscribers.discard(queue)

    async def run(self) -> None:
        last = await self.latest_id() or "0-0"
        while not (self.stopped or cancel_requested()):  # as the Watcher's loop
            try:
                # Any: redis-py's stubs type XREAD's reply as a union of its RESP2 and RESP3 shapes.
                answer: Any = await self._redis.xread(
                    {self.keys.events: last}, count=500, block=1000
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("console hub read failed")
                await asyncio.sleep(1)
                continue
            for _, entries in answer or []:
                for entry_id, values in entries:
                    last = as_text(entry_id)
                    event = Event.from_stream(entry_id, values)
                    for queue in list(self.subscribers):
                        try:
                            queue.put_nowait(event)
                        except asyncio.QueueFull:
                            # A page that cannot keep up is told to reload (None), once.
                            self.subscribers.discard(queue)
                            with contextlib.suppress(asyncio.QueueFull):
                                queue.put_nowait(None)

    async def latest_id(self) -> str:
        raw = await self._redis.xrevrange(self.keys.events, count=1)
        return as_text(raw[0][0]) if raw else ""

    async def since(self, last: str) -> list[Event] | None:
        """Events after `last`, or None when some of them were trimmed away."""
        oldest = await self._redis.xrange(self.keys.events, count=1)
        if oldest and stream_id(as_text(oldest[0][0])) > stream_id(last) and last != "0-0":
            # The oldest kept event is after `last`: was anything between them trimmed?
            info = await self._redis.xinfo_stream(self.keys.events)
            if int(info.get("entries-added", 0) or 0) > int(info.get("length", 0) or 0):
                return None
        out: list[Event] = []
        lower = f"({last}"
        while True:
            # Any: redis-py's stubs type stream replies as optional, entries' fields too.
            raw: Any = await self._redis.xrange(self.keys.events, min=lower, max="+", count=500)
            out += [Event.from_stream(i, v) for i, v in raw]
            if len(raw) < 500:
                return out
            lower = f"({as_text(raw[-1][0])}"


Render = Callable[[Event], Awaitable[str | None]]


async def event_stream(
    hub: Hub,
    last: str,
    render: Render,
    alive: Callable[[], Awaitable[bool]],
    keepalive: Callable[[], Awaitable[None]],
) -> AsyncIterator[dict[str, str]]:
    """The SSE messages of one page: what it missed since `last`, then what comes."""
    queue = hub.subscribe()
    try:
        sent = last
        backlog = await hub.since(last) if last else []
        if backlog is None:
            yield {"event": "reload", "data": ""}
            return
        for event in backlog:
            data = await render(event)
            sent = event.id
            yield _message(event, data)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                if not await alive():
                    yield {"event": "reload", "data": ""}
                    return
                await keepalive()
                continue
            if item is None:
                yield {"event": "reload", "data": ""}
                return
            event = item
            if sent and stream_id(event.id) <= stream_id(sent):
                continue  # already sent from the backlog
            if not await alive():  # logged out (here or elsewhere): the channel ends too
                yield {"event": "reload", "data": ""}
                return
            data = await render(event)
            sent = event.id
            yield _message(event, data)
    finally:
        hub.unsubscribe(queue)


def _message(event: Event, data: str | None) -> dict[str, str]:
    if event.kind == "resync":
        return {"event": "reload", "id": event.id, "data": ""}
    # Sent even when nothing concerns this page, so its Last-Event-ID moves on.
    return {"event": "update", "id": event.id, "data": data or ""}
