"""The operator API's reads of conversations: one page, pipelined.

A conversation's details sit under three hash tags (its state and outbox on its queue shard's,
its place in line on the line's), so they are read with a non-transactional pipeline: a plain
client sends it in one round trip, and redis-py's cluster pipeline (`transaction=False`)
groups the commands by node, one round trip per node, so keys of different slots are fine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from api.deps import ApiParts
from engine.state import ConversationState, State
from shared.keys import conversation_token, engine_keys_for, split_conversation_token
from shared.text import as_text

# With a `session` filter the index is walked in chunks until the page is full; a chunk is
# at least this many conversations, so a rare session does not cost a round trip per `limit`.
MIN_CHUNK = 100


async def describe_many(
    parts: ApiParts, conversations: list[tuple[str, str]]
) -> list[dict[str, Any] | None]:
    """The details of each (session, chat_id), None for one whose state is gone: one pipeline,
    three commands per conversation."""
    if not conversations:
        return []
    line = parts.coordinator.line
    pipe = parts.redis.pipeline(transaction=False)
    for session, chat_id in conversations:
        keys = engine_keys_for(session, chat_id, parts.shards, parts.prefix)
        pipe.hgetall(keys.state)
        pipe.zrank(line.keys.waiting(session), conversation_token(session, chat_id))
        pipe.llen(keys.outbox)
    replies = await pipe.execute()
    out: list[dict[str, Any] | None] = []
    for n, (session, chat_id) in enumerate(conversations):
        raw, rank, outbox = replies[3 * n : 3 * n + 3]
        if not raw:
            out.append(None)
            continue
        state = ConversationState.from_hash(raw)
        out.append({
            "session": session,
            "chat_id": chat_id,
            "state": state.state.value,
            "phone": state.phone or None,
            "collected": dict(state.collected),
            "agent": {"id": state.agent_id, "name": state.agent_name} if state.agent_id else None,
            "queue_position": None if rank is None else int(rank) + 1,
            "last_activity_at": state.last_activity_at,
            "opened_at": state.opened_at,
            "closed_at": state.closed_at or None,
            "outbox_pending": int(outbox),
        })  # fmt: skip
    return out


async def _candidates(
    parts: ApiParts, state: State | None, session: str | None, limit: int
) -> AsyncIterator[list[tuple[str, str]]]:
    """Conversations in the index's order (last change first), a chunk at a time."""
    redis, index = parts.redis, parts.index
    if state is not None:
        # The state's set, ordered by the index: one command on the index's tag (both keys
        # share it). A member the index no longer lists was pruned, its state gone.
        tokens = [
            as_text(t)
            for t in await redis.zinter({index.conversations: 1, index.in_state(state.value): 0})
        ]
        tokens.reverse()
        chosen = [split_conversation_token(t) for t in tokens]
        if session:
            chosen = [c for c in chosen if c[0] == session]
        for start in range(0, len(chosen), limit):
            yield chosen[start : start + limit]
        return
    chunk = max(limit, MIN_CHUNK) if session else limit
    start = 0
    while True:
        raw = await redis.zrevrange(index.conversations, start, start + chunk - 1)
        found = [split_conversation_token(as_text(t)) for t in raw]
        if session:
            found = [c for c in found if c[0] == session]
        if found:
            yield found
        if len(raw) < chunk:
            return
        start += chunk


async def conversations_page(
    parts: ApiParts, *, state: State | None, session: str | None, limit: int
) -> list[dict[str, Any]]:
    """The `limit` conversations changed last (optionally in `state` and of `session`), most
    recently active first. Reads only as far as the page needs: without filters, one ZREVRANGE
    of `limit` and one pipeline of their details."""
    out: list[dict[str, Any]] = []
    async for chunk in _candidates(parts, state, session, limit):
        while chunk and len(out) < limit:
            # Only as many as the page still needs; one that turns out gone (or, the state's
            # set being written after the commit, in another state) makes room for the next.
            take, chunk = chunk[: limit - len(out)], chunk[limit - len(out) :]
            for found in await describe_many(parts, take):
                if found and (state is None or found["state"] == state.value):
                    out.append(found)
        if len(out) >= limit:
            break
    out.sort(key=lambda c: -int(c["last_activity_at"]))
    return out
