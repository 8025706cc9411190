"""What the console shows, read from the engine's own structures (never a copy of them): the
waiting lines, an agent's conversations with their unread counts, one conversation's history,
collected data and bookings, closed conversations by phone or name, and who may see or act on
which conversation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.agent.bookings import Booking, BookingStore, Customer
from engine.agent.limits import AGENT_LIMIT
from engine.assignment import LineCoordinator
from engine.history import HistoryEntry, HistoryKeys, read_page
from engine.state import ConversationState, State, load_state
from engine.waiting_line import now_ms
from shared.keys import (
    ConsoleKeys,
    EngineIndexKeys,
    conversation_token,
    engine_keys_for,
    split_conversation_token,
)
from shared.redis_client import RedisClient
from shared.settings import Settings
from shared.text import as_text, fold

from .sessions import Viewer

# Closed conversations looked through by a search (most recently active first).
SEARCH_SCAN = 5000
SEARCH_RESULTS = 50
# History entries looked at for a waiting customer's last message.
LAST_LOOKBACK = 10
# A conversation another attendant has: with them, or taken from the line and not confirmed yet
# (still `waiting`, no longer in line). An agent who handled it before does not see it then.
HELD_BY_AN_ATTENDANT = frozenset({State.AGENT, State.WAITING})


def phone_of(chat_id: str, state: ConversationState | None = None) -> str:
    if state is not None and state.phone:
        return state.phone
    return chat_id.split("@", 1)[0]


@dataclass(frozen=True, slots=True)
class LineEntry:
    session: str
    chat_id: str
    token: str
    position: int
    waited_seconds: float
    phone: str
    name: str
    last_message: str


@dataclass(frozen=True, slots=True)
class ConvSummary:
    session: str
    chat_id: str
    token: str
    phone: str
    name: str
    state: str
    agent_id: str
    unread: int = 0
    last_activity_at: int = 0


@dataclass
class ConversationView:
    session: str
    chat_id: str
    token: str
    state: ConversationState
    phone: str
    name: str
    entries: list[HistoryEntry]
    older: str | None
    bookings: list[Booking] = field(default_factory=list)

    @property
    def facts(self) -> list[tuple[str, str, bool]]:
        return customer_facts(self.state.collected)


# What an attendant reads of the bot's collected data, in this order. The rest is the bot's own
# bookkeeping (an offer of slots, a booking waiting for its confirmation, a reminder's booking:
# JSON for the engine) and fields it has cleared (empty): neither is a fact about the customer.
CUSTOMER_FACTS = ("name", "service", AGENT_LIMIT)
# Facts whose value is one of the engine's words (which limit), shown as the console's text
# `fact.<key>.<value>`; the others are the customer's own words, shown as they are.
WORDED_FACTS = frozenset({AGENT_LIMIT})


def customer_facts(collected: Mapping[str, str]) -> list[tuple[str, str, bool]]:
    """(key, value, whether the value is a word to translate), for the facts present."""
    return [
        (key, collected[key], key in WORDED_FACTS) for key in CUSTOMER_FACTS if collected.get(key)
    ]


class Reads:
    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        coordinator: LineCoordinator,
        bookings: BookingStore,
        keys: ConsoleKeys,
    ) -> None:
        self._redis = redis
        self.prefix = settings.key_prefix
        self.shards = settings.queue_shards
        self.line = coordinator.line
        self.bookings = bookings
        self.keys = keys
        self.index = EngineIndexKeys(settings.key_prefix)

    def history_keys(self, session: str, chat_id: str) -> HistoryKeys:
        keys = engine_keys_for(session, chat_id, self.shards, self.prefix)
        return HistoryKeys(keys.history, keys.history_meta)

    def state_key(self, session: str, chat_id: str) -> str:
        return engine_keys_for(session, chat_id, self.shards, self.prefix).state

    async def exists(self, token: str) -> bool:
        """The conversation has a state: the customer wrote, or was written to, once."""
        session, chat_id = split_conversation_token(token)
        return bool(await self._redis.exists(self.state_key(session, chat_id)))

    async def state(self, token: str) -> ConversationState:
        session, chat_id = split_conversation_token(token)
        return await load_state(self._redis, self.state_key(session, chat_id))

    # --- who may do what -------------------------------------------------------------------
    async def owns(self, viewer: Viewer, token: str) -> bool:
        """The conversation is this agent's: the line gave it to them (or they wrote in it),
        and no one else has it since. Admins may act on every conversation."""
        if viewer.admin:
            return True
        if not await self._redis.sismember(self.line.keys.agent_conversations(viewer.id), token):
            return False
        state = await self.state(token)
        # Taken but not yet confirmed by the conversation (still `waiting`), or with them.
        return state.state is State.WAITING or state.agent_id == viewer.id

    async def may_view(self, viewer: Viewer, token: str) -> bool:
        if viewer.admin or await self.owns(viewer, token):
            return True
        session, _ = split_conversation_token(token)
        waiting = await self.line.locate(session, token)
        if waiting is not None:
            # Who waits in a line the agent takes from is theirs to see; another team's line is
            # not, as the console's line does not show it (issue 16).
            return waiting[0] in (await self.line_teams(viewer) or ())
        if await self._redis.zscore(self.keys.handled(viewer.id), token) is None:
            return False
        # One they handled, unless another attendant has it now: what the customer tells that
        # attendant is not theirs to read.
        return (await self.state(token)).state not in HELD_BY_AN_ATTENDANT

    # --- the attendants (an admin's view) --------------------------------------------------
    async def agents(self, accounts: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every console account (`accounts`: id -> name), online or not, and every agent of
        the line who is online or holds conversations (one put online by the operator API,
        one whose account was removed meanwhile), each with their conversations: online first,
        then by name."""
        on_line = {agent.id: agent for agent in await self.line.agents()}
        out = []
        for agent_id in set(accounts) | set(on_line):
            agent = on_line.get(agent_id)
            tokens = await self.agent_tokens(agent_id)
            if agent_id not in accounts and not tokens and not (agent and agent.online):
                continue  # gone, with nothing left to see
            out.append(
                {
                    "id": agent_id,
                    "name": accounts.get(agent_id) or (agent.name if agent else agent_id),
                    "online": bool(agent and agent.online),
                    "conversations": await self.summaries(tokens),
                }
            )
        return sorted(out, key=lambda a: (not a["online"], fold(a["name"]), a["id"]))

    # --- the line --------------------------------------------------------------------------
    async def line_teams(self, viewer: Viewer) -> tuple[str, ...] | None:
        """The lines this viewer's console shows: every one (None) to an admin; to an agent
        the plain lines ("") and their teams' lines, the ones they take from (issue 16)."""
        if viewer.admin:
            return None
        return ("", *await self.line.teams_of(viewer.id))

    async def line_entries(
        self, teams: tuple[str, ...] | None = None
    ) -> dict[str, list[LineEntry]]:
        """Who waits, per line (`teams`: only those lines; None: all)."""
        now = now_ms()
        out: dict[str, list[LineEntry]] = {}
        for session in await self.line.sessions():
            members = [
                m for m in await self.line.members(session) if teams is None or m.team in teams
            ]
            if not members:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for member in members:
                _, chat_id = split_conversation_token(member.token)
                pipe.hmget(self.state_key(session, chat_id), "phone", "collected")
                pipe.xrevrange(self.history_keys(session, chat_id).stream, count=LAST_LOOKBACK)
            rows = await pipe.execute()
            # One list per line: the session's, and each team's with its own positions.
            names = {t.id: t.name for t in self.line.for_session(session).teams}
            for n, member in enumerate(members):
                _, chat_id = split_conversation_token(member.token)
                phone_raw, collected_raw = rows[2 * n]
                last = rows[2 * n + 1]
                state = ConversationState.from_hash(
                    {
                        "phone": as_text(phone_raw or b""),
                        "collected": as_text(collected_raw or b"{}"),
                    }
                )
                # What the customer last wrote (the bot's "your place in line" is no news).
                said = [values for _, values in last if values.get(b"dir") == b"in"]
                text = as_text(said[0].get(b"text", b"")) if said else ""
                label = (
                    f"{session} · {names.get(member.team, member.team)}" if member.team else session
                )
                out.setdefault(label, []).append(
                    LineEntry(
                        session=session,
                        chat_id=chat_id,
                        token=member.token,
                        position=member.position,
                        waited_seconds=max(0, now - member.entered_at) / 1000,
                        phone=phone_of(chat_id, state),
                        name=state.collected.get("name", ""),
                        last_message=text[:140],
                    )
                )
        return out

    # --- conversations ---------------------------------------------------------------------
    async def summaries(self, tokens: list[str], reader: str | None = None) -> list[ConvSummary]:
        out = []
        for token in tokens:
            session, chat_id = split_conversation_token(token)
            state = await self.state(token)
            unread = await self.unread(reader, token) if reader else 0
            out.append(
                ConvSummary(
                    session,
                    chat_id,
                    token,
                    phone_of(chat_id, state),
                    state.collected.get("name", ""),
                    state.state.value,
                    state.agent_id,
                    unread,
                    state.last_activity_at,
                )
            )
        out.sort(key=lambda c: -c.last_activity_at)
        return out

    async def agent_tokens(self, agent_id: str) -> list[str]:
        members = await self._redis.smembers(self.line.keys.agent_conversations(agent_id))
        return sorted(as_text(m) for m in members)

    async def mine(self, viewer: Viewer) -> list[ConvSummary]:
        return await self.summaries(await self.agent_tokens(viewer.id), reader=viewer.id)

    async def unread(self, reader: str, token: str) -> int:
        session, chat_id = split_conversation_token(token)
        seen = await self._redis.hget(self.keys.read(reader), token)
        lower = f"({as_text(seen)}" if seen else "-"
        # Any: redis-py's stubs type stream replies as optional, entries' fields too.
        raw: Any = await self._redis.xrange(
            self.history_keys(session, chat_id).stream, min=lower, max="+", count=100
        )
        return sum(1 for _, values in raw if values.get(b"dir") == b"in")

    async def mark_read(self, reader: str, token: str, cursor: str) -> None:
        if cursor:
            await self._redis.hset(self.keys.read(reader), token, cursor)

    async def conversation(self, token: str, before: str | None = None) -> ConversationView | None:
        session, chat_id = split_conversation_token(token)
        if not await self._redis.exists(self.state_key(session, chat_id)):
            return None
        state = await self.state(token)
        entries, older = await read_page(
            self._redis, self.history_keys(session, chat_id), limit=200, before=before
        )
        phone = phone_of(chat_id, state)
        name = state.collected.get("name", "")
        bookings = await self.bookings.upcoming(Customer(token, name, phone))
        return ConversationView(
            session, chat_id, token, state, phone, name, entries, older, bookings
        )

    async def entries_between(self, token: str, after: str, upto: str) -> list[HistoryEntry]:
        """History entries with after < id <= upto, oldest first (what a live page lacks)."""
        session, chat_id = split_conversation_token(token)
        keys = self.history_keys(session, chat_id)
        entries, _ = await read_page(self._redis, keys, limit=500, before=_next_id(upto))
        return [e for e in entries if _id(e.cursor) > _id(after)]

    async def search_closed(self, viewer: Viewer, query: str) -> list[ConvSummary]:
        # Without accents or case: attendants type "jose" and "conceicao" for José da Conceição.
        query = fold(query)
        if viewer.admin:
            raw = await self._redis.zrevrange(self.index.conversations, 0, SEARCH_SCAN - 1)
        else:
            raw = await self._redis.zrevrange(self.keys.handled(viewer.id), 0, SEARCH_SCAN - 1)
        tokens = [as_text(t) for t in raw]
        digits = "".join(ch for ch in query if ch.isdigit())
        found: list[str] = []
        for start in range(0, len(tokens), 200):
            chunk = tokens[start : start + 200]
            pipe = self._redis.pipeline(transaction=False)
            for token in chunk:
                session, chat_id = split_conversation_token(token)
                pipe.hmget(self.state_key(session, chat_id), "state", "phone", "collected")
            for token, (state_raw, phone_raw, collected_raw) in zip(
                chunk, await pipe.execute(), strict=True
            ):
                if as_text(state_raw or b"") != State.CLOSED.value:
                    continue
                _, chat_id = split_conversation_token(token)
                phone = as_text(phone_raw or b"") or chat_id
                name = ConversationState.from_hash(
                    {"collected": as_text(collected_raw or b"{}")}
                ).collected.get("name", "")
                if not query or (digits and digits in phone) or query in fold(name):
                    found.append(token)
                if len(found) >= SEARCH_RESULTS:
                    break
            if len(found) >= SEARCH_RESULTS:
                break
        return await self.summaries(found)

    async def last_cursor(self, token: str) -> str:
        session, chat_id = split_conversation_token(token)
        raw = await self._redis.xrevrange(self.history_keys(session, chat_id).stream, count=1)
        return as_text(raw[0][0]) if raw else ""


def token_of(session: str, chat_id: str) -> str:
    return conversation_token(session, chat_id)


def _id(cursor: str) -> tuple[int, int]:
    if not cursor:
        return (0, 0)
    ms, _, seq = cursor.partition("-")
    return (int(ms or 0), int(seq or 0))


def _next_id(cursor: str) -> str:
    ms, seq = _id(cursor)
    return f"{ms}-{seq + 1}"


stream_id = _id
