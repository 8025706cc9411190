"""Each conversation's state machine, and what the bot has collected, persisted in Redis.

The states and the transitions between them are the table TRANSITIONS below; docs/conversations.md
shows the same table (a test keeps the two equal). Anything not in the table is refused with
InvalidTransition, so a stale command (an agent taking a customer who has already left) cannot
put a conversation in a state it cannot be in.

The state lives in one hash per conversation (same hash tag as its queue); a handler reads it,
decides, and commits the new fields with its other writes, atomically with the inbound ack.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson

from shared.commit_writes import Write, write
from shared.keys import EngineIndexKeys, engine_keys_for, split_conversation_token
from shared.lua import LuaScript
from shared.redis_client import RedisClient
from shared.text import as_text

INDEX_PRUNE = LuaScript.named("index_prune")


class State(enum.StrEnum):
    NEW = "new"  # never written before
    BOT = "bot"  # with the bot (a brain answers)
    WAITING = "waiting"  # in the waiting line for a person
    AGENT = "agent"  # with a person (an agent of the operator API)
    PAUSED = "paused"  # someone answered from the business's own phone: the bot keeps quiet
    CLOSED = "closed"  # ended (agent, inactivity, line timeout); a new message reopens it


OPEN_STATES = frozenset({State.BOT, State.WAITING, State.AGENT, State.PAUSED})


class Trigger(enum.StrEnum):
    CUSTOMER_MESSAGE = "customer_message"
    HANDOFF = "handoff"  # the brain asks for a person
    LEFT_LINE = "left_line"  # the customer wrote "sair"
    LINE_TIMEOUT = "line_timeout"
    AGENT_TOOK = "agent_took"
    AGENT_WROTE = "agent_wrote"  # an agent writes through the API: they own the chat now
    BUSINESS_REPLIED = "business_replied"  # message.any fromMe that is not one of our sends
    HANDBACK = "handback"
    CLOSE = "close"  # an agent or the operator closes it
    INACTIVITY = "inactivity"


S, T = State, Trigger

# (state, trigger) -> next state. Nothing else is allowed.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.NEW, T.CUSTOMER_MESSAGE): S.BOT,
    (S.CLOSED, T.CUSTOMER_MESSAGE): S.BOT,
    (S.BOT, T.CUSTOMER_MESSAGE): S.BOT,
    (S.WAITING, T.CUSTOMER_MESSAGE): S.WAITING,
    (S.AGENT, T.CUSTOMER_MESSAGE): S.AGENT,
    (S.PAUSED, T.CUSTOMER_MESSAGE): S.PAUSED,
    (S.BOT, T.HANDOFF): S.WAITING,
    (S.WAITING, T.LEFT_LINE): S.BOT,
    (S.WAITING, T.LINE_TIMEOUT): S.CLOSED,
    (S.WAITING, T.AGENT_TOOK): S.AGENT,
    (S.NEW, T.AGENT_WROTE): S.AGENT,
    (S.BOT, T.AGENT_WROTE): S.AGENT,
    (S.WAITING, T.AGENT_WROTE): S.AGENT,
    (S.AGENT, T.AGENT_WROTE): S.AGENT,
    (S.PAUSED, T.AGENT_WROTE): S.AGENT,
    (S.CLOSED, T.AGENT_WROTE): S.AGENT,
    (S.NEW, T.BUSINESS_REPLIED): S.PAUSED,
    (S.BOT, T.BUSINESS_REPLIED): S.PAUSED,
    (S.WAITING, T.BUSINESS_REPLIED): S.PAUSED,
    (S.PAUSED, T.BUSINESS_REPLIED): S.PAUSED,
    (S.CLOSED, T.BUSINESS_REPLIED): S.PAUSED,
    (S.AGENT, T.BUSINESS_REPLIED): S.AGENT,
    (S.AGENT, T.HANDBACK): S.BOT,
    (S.PAUSED, T.HANDBACK): S.BOT,
    (S.WAITING, T.HANDBACK): S.BOT,
    (S.BOT, T.CLOSE): S.CLOSED,
    (S.WAITING, T.CLOSE): S.CLOSED,
    (S.AGENT, T.CLOSE): S.CLOSED,
    (S.PAUSED, T.CLOSE): S.CLOSED,
    (S.BOT, T.INACTIVITY): S.CLOSED,
    (S.AGENT, T.INACTIVITY): S.CLOSED,
    (S.PAUSED, T.INACTIVITY): S.CLOSED,
}


class InvalidTransition(ValueError):
    """A trigger that does not apply in the conversation's state (terminal for that event)."""

    def __init__(self, state: State, trigger: Trigger) -> None:
        super().__init__(f"no transition from {state.value!r} on {trigger.value!r}")
        self.state = state
        self.trigger = trigger


def next_state(state: State, trigger: Trigger) -> State:
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransition(state, trigger) from None


def can(state: State, trigger: Trigger) -> bool:
    return (state, trigger) in TRANSITIONS


def transitions_markdown() -> str:
    """The transition table as docs/conversations.md shows it."""
    lines = ["| from | on | to |", "|---|---|---|"]
    for (source, trigger), target in TRANSITIONS.items():
        lines.append(f"| `{source.value}` | `{trigger.value}` | `{target.value}` |")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ConversationState:
    """One conversation's persisted state. Times are epoch milliseconds; 0 means never."""

    state: State = State.NEW
    # Where the brain is inside the bot state (its own vocabulary, e.g. "menu").
    step: str = ""
    # What the bot has collected so far (name, chosen service, ...). Survives closes and restarts.
    collected: Mapping[str, str] = field(default_factory=dict)
    phone: str = ""
    agent_id: str = ""
    agent_name: str = ""
    opened_at: int = 0
    last_activity_at: int = 0
    last_customer_at: int = 0
    line_entered_at: int = 0
    line_position: int = 0  # the last position the customer was told
    line_notice_at: int = 0  # when they were last told it
    taken_at: int = 0
    closed_at: int = 0
    version: int = 0

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> ConversationState:
        values = {as_text(k): as_text(v) for k, v in raw.items()}
        if not values:
            return cls()
        kwargs: dict[str, Any] = {}
        for item in fields(cls):
            if item.name not in values:
                continue
            value = values[item.name]
            if item.name == "state":
                kwargs["state"] = State(value)
            elif item.name == "collected":
                loaded = orjson.loads(value) if value else {}
                kwargs["collected"] = {str(k): str(v) for k, v in loaded.items()}
            elif isinstance(item.default, int):
                kwargs[item.name] = int(value or 0)
            else:
                kwargs[item.name] = value
        return cls(**kwargs)

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "collected":
                out["collected"] = orjson.dumps(dict(value), option=orjson.OPT_SORT_KEYS).decode()
            elif isinstance(value, enum.Enum):
                out[item.name] = str(value.value)
            else:
                out[item.name] = str(value)
        return out

    def moved(self, trigger: Trigger, **changes: Any) -> ConversationState:
        """The state after `trigger` (raises InvalidTransition), with other fields changed."""
        return replace(self, state=next_state(self.state, trigger), **changes)

    def with_collected(self, updates: Mapping[str, str]) -> ConversationState:
        if not updates:
            return self
        merged = dict(self.collected)
        merged.update(updates)
        return replace(self, collected=merged)


def state_writes(key: str, state: ConversationState, retention_seconds: int) -> list[Write]:
    """Replace the whole state hash (every field, so a removed field cannot linger)."""
    flat: list[str] = []
    for name, value in state.to_hash().items():
        flat += [name, value]
    return [write("HSET", key, *flat), write("EXPIRE", key, retention_seconds)]


async def load_state(redis: RedisClient, key: str) -> ConversationState:
    return ConversationState.from_hash(await redis.hgetall(key))


async def prune_index(
    # Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
    redis: Any,
    index: EngineIndexKeys,
    *,
    shards: int,
    retention_seconds: int,
    now_ms: int,
    page: int = 500,
    most: int = 10_000,
) -> int:
    """Forget, in the engine's indexes (`convs`, timers, state sets), the conversations whose
    state hash expired: a state lives `retention_seconds` after its last change, and `convs`
    scores each conversation by that change. Looks at up to `most` candidates per call.
    -> how many were forgotten."""
    cutoff = now_ms - retention_seconds * 1000
    forgotten = looked = offset = 0
    while looked < most:
        rows = await redis.zrangebyscore(
            index.conversations, "-inf", cutoff, start=offset, num=page, withscores=True
        )
        if not rows:
            break
        looked += len(rows)
        tokens = [as_text(token) for token, _ in rows]
        pipe = redis.pipeline(transaction=False)
        for token in tokens:
            session, chat_id = split_conversation_token(token)
            pipe.exists(engine_keys_for(session, chat_id, shards, index.prefix).state)
        found = await pipe.execute()
        gone: list[Any] = []
        for token, (_, score), exists in zip(tokens, rows, found, strict=True):
            if not exists:
                gone += [token, repr(float(score))]
        if gone:
            forgotten += int(
                await INDEX_PRUNE(
                    redis,
                    [index.conversations, index.timers, *[index.in_state(s.value) for s in State]],
                    gone,
                )
            )
        # Forgotten rows left the range: the next page starts after the ones still there.
        offset += len(rows) - len(gone) // 2
        if len(rows) < page:
            break
    return forgotten
