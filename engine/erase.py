"""Erasing a customer completely (LGPD, art. 18): their conversation's state, history and
outbox, their place in the line and with agents, the indexes, cached lookups, their stored
media files and index entries (given the media library), the queue's leftovers that name
them (dedupe markers, dead letters, booking-webhook dead letters), their digest in the records
of freed slots offered to them, and the AI agent's limits counted for them.

A phone-number chat is one conversation however it is written (`<phone>@c.us`, or the raw jid
`<phone>[:<device>]@s.whatsapp.net`: shared/keys.py `canonical_chat_id`): the erase works on
the canonical form whichever it is given, and finds the dedupe markers of every form.

The keys live under several hash tags (the conversation's queue shard, the line, the engine's
indexes, the WAHA session, the console, the media index, the calendar; the AI agent's limit
keys have none), and a Lua script may only touch one, so the erase is a short sequence of
scripts ordered around the conversation's lease:

1. `erase_conversation.lua`, on the conversation's tag, in one atomic step: refuses while the
   conversation is being handled (its queue holds messages: ready, leased or delayed; or a
   reply is being sent): ConversationBusy, nothing deleted. Otherwise it deletes everything of
   the conversation on that tag (state, history, outbox, queue leftovers, its dead letters)
   and *takes the conversation's lease*, with a fence from the shard's counter like any lease.
2. While the erase holds the lease nothing handles the conversation. A customer message that
   arrives now is queued by the gateway (WAHA is told `queued`) and waits behind the lease as
   behind a worker's. Meanwhile the erase deletes the conversation's dedupe markers (except
   those of messages queued since step 1), then clears the other tags (`erase_line`,
   `erase_index`, `erase_session`, the agent's limits, `erase_console`, the media, `also`,
   `erase_calendar`): no handler can write the line or the indexes back between two of those
   steps.
3. `release_conversation.lua` ends the lease like a worker's turn: a message queued meanwhile
   is handled then, as the first of a new conversation; with none, the meta goes and the
   fence lives on in the shard's counter, so a worker holding an older lease stays fenced out.

Nothing queued is ever deleted: step 1 refuses when anything is, and later messages are not
touched. If the erasing process dies between 1 and 3, the reaper takes the lease back after
`lease_ms` like any expired lease and the queued messages are handled; the erase answered an
error, and repeating it finishes the job (every step is idempotent).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from engine.agent.freed_slots import hashed
from engine.agent.limits import limit_keys
from engine.identity import ChatKind, chat_kind, phone_of
from engine.media.store import MediaLibrary
from engine.sender import ECHO_WAIT_MS
from engine.state import State
from shared.clock import now_ms
from shared.envelope import InvalidRecord, decode_record
from shared.events import message_key_of
from shared.keys import (
    CalendarKeys,
    ConsoleKeys,
    ConversationKeys,
    EngineIndexKeys,
    LineKeys,
    ShardKeys,
    WahaSessionKeys,
    canonical_chat_id,
    conversation_token,
    engine_keys_for,
    split_conversation_token,
)
from shared.lua import LuaScript
from shared.queue_consumer import RELEASE_CONVERSATION  # the queue's own, as a turn's release
from shared.queue_errors import ConversationBusy
from shared.redis_client import RedisClient
from shared.text import as_text

ERASE_CONVERSATION = LuaScript.named("erase_conversation")
ERASE_MARKERS = LuaScript.named("erase_markers")
ERASE_LINE = LuaScript.named("erase_line")
ERASE_INDEX = LuaScript.named("erase_index")
ERASE_SESSION = LuaScript.named("erase_session")
ERASE_CALENDAR = LuaScript.named("erase_calendar")
ERASE_CONSOLE = LuaScript.named("erase_console")

# Long enough for the few round trips under the lease; a dead eraser holds its customer's next
# messages back for at most this long (plus a reaper interval).
ERASE_LEASE_MS = 30_000
# Agents added while the erase reads them make the line's step read again; this many times.
MAX_TRIES = 5
# Keys per script call when passing scanned candidates (bounded argument lists).
BATCH = 500


def _glob_escape(value: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in value)


def message_key_names_chat(message_key: str, chat_id: str) -> bool:
    """Whether a dedupe marker's message key (`<event>:<WhatsApp id>[:<ack>[:<participant>]]`)
    is about `chat_id`: its serialized WhatsApp id (`true|false_<chat>_<id>[_<participant>]`)
    names exactly this chat, in any of its forms (`<phone>@c.us`, `<phone>@s.whatsapp.net`,
    `<phone>:<device>@s.whatsapp.net` are one chat). Exact: `1@c.us` does not match
    `5511987650001@c.us`."""
    _, _, rest = message_key.partition(":")
    parts = rest.split("_")
    return (
        len(parts) >= 3
        and parts[0] in ("true", "false")
        and canonical_chat_id(parts[1]) == canonical_chat_id(chat_id)
    )


def _marker_pattern(base: str, chat_id: str) -> str:
    """A SCAN pattern for the markers whose WhatsApp id may name `chat_id`: for a phone number,
    in any of its forms (`<phone>@…`, `<phone>:<device>@…`). Wider than exact: each key found
    is checked by `message_key_names_chat`."""
    phone = phone_of(chat_id)
    chat = f"{_glob_escape(phone)}[@:]" if phone else f"{_glob_escape(chat_id)}_"
    return f"{_glob_escape(base)}*_{chat}*"


async def _markers(
    # Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
    redis: Any,
    shard: ShardKeys,
    queue: ConversationKeys,
    chat_id: str,
) -> list[str]:
    """The conversation's dedupe markers, less those of messages queued right now (they arrived
    during the erase: new messages, whose markers must keep their repeats out).

    Called under the erase's lease: a message queued after the scan has a marker the scan did
    not see; one queued before it still has its body (only a lease holder removes bodies)."""
    session, _ = split_conversation_token(queue.token)
    base = shard.seen_message(session, "")
    found: set[str] = set()
    async for raw in redis.scan_iter(match=_marker_pattern(base, chat_id), count=1000):
        key = as_text(raw)
        if message_key_names_chat(key[len(base) :], chat_id):
            found.add(key)
    if found:
        for record in await redis.hvals(queue.bodies):
            with contextlib.suppress(InvalidRecord, ValueError):
                event = decode_record(record)
                payload = event.document().get("payload")
                if isinstance(payload, dict) and (kept := message_key_of(event.event, payload)):
                    found.discard(shard.seen_message(session, kept))
    return sorted(found)


async def _lid_keys(
    redis: RedisClient, session_keys: WahaSessionKeys, phone: str | None
) -> list[str]:
    """Cached lid lookups of the session that map to `phone` (the script checks them again)."""
    if not phone:
        return []
    pattern = _glob_escape(session_keys.lid("")) + "*"
    keys = sorted({as_text(raw) async for raw in redis.scan_iter(match=pattern, count=1000)})
    matching: list[str] = []
    for start in range(0, len(keys), BATCH):
        chunk = keys[start : start + BATCH]
        values = await redis.mget(chunk)
        matching += [k for k, v in zip(chunk, values, strict=True) if v and as_text(v) == phone]
    return matching


async def erase_customer(
    redis: RedisClient,
    *,
    prefix: str,
    shards: int,
    session: str,
    chat_id: str,
    lease_ms: int = ERASE_LEASE_MS,
    also: Callable[[], Awaitable[int]] | None = None,
    media: MediaLibrary | None = None,
) -> int:
    """Delete everything about (session, chat_id). Returns how many keys/entries went.

    `chat_id` in any of its forms: a raw jid erases its canonical `@c.us` conversation.

    `media` (engine/parts.py `media_library`) removes the customer's stored media files and
    their index entries, under the lease too (no turn can store one meanwhile).

    Raises ConversationBusy, with nothing deleted, while the conversation is being handled.
    `also` runs while the erase holds the conversation's lease (for data kept elsewhere, such as
    the calendar's bookings), so no handler can write it back meanwhile.
    """
    chat_id = canonical_chat_id(chat_id)
    keys = engine_keys_for(session, chat_id, shards, prefix)
    queue = keys.conversation
    shard = queue.shard_keys
    token = conversation_token(session, chat_id)
    session_keys = WahaSessionKeys(session, prefix)
    own_lid = session_keys.lid(chat_id) if chat_kind(chat_id) is ChatKind.LID else ""
    if own_lid:
        cached = await redis.get(own_lid)
        phone = as_text(cached) if cached is not None and as_text(cached) != "-" else None
    else:
        phone = phone_of(chat_id)
    # Lid lookups cached for other chats (lid chats of the same person) that map to this
    # customer's number. Read before the lease (a whole-keyspace scan must not eat into it);
    # the session's script checks each one again before deleting it.
    candidates = sorted({*await _lid_keys(redis, session_keys, phone), own_lid} - {""})

    owner = "erase:" + uuid.uuid4().hex
    own = [queue.bodies, queue.attempts, queue.reaped_ack, queue.handled, *keys.all_own()]
    answer = await ERASE_CONVERSATION(
        redis,
        [
            queue.meta, queue.messages, shard.leases, shard.fence, shard.claimed_seen, shard.dlq,
            keys.outbox_dlq, keys.outbox_pending, keys.sending, keys.outbox, *own,
        ],
        [token, owner, lease_ms, ECHO_WAIT_MS],
    )  # fmt: skip
    if as_text(answer[0]) == "busy":
        raise ConversationBusy(
            f"the conversation is being handled ({as_text(answer[1])}); try again shortly"
        )
    fence = str(int(answer[1]))
    removed = int(answer[2])
    try:
        markers = await _markers(redis, shard, queue, chat_id)
        for start in range(0, len(markers), BATCH):
            gone = int(
                await ERASE_MARKERS(redis, [queue.meta, *markers[start : start + BATCH]], [fence])
            )
            if gone < 0:
                raise ConversationBusy("the erase lost its lease (too slow); erase again")
            removed += gone
        removed += await _erase_line(redis, prefix, session, token)
        index = EngineIndexKeys(prefix)
        removed += int(
            await ERASE_INDEX(
                redis,
                [index.conversations, index.timers, *(index.in_state(s.value) for s in State)],
                [token],
            )
        )
        for start in range(0, max(1, len(candidates)), BATCH):
            removed += int(
                await ERASE_SESSION(
                    redis,
                    [session_keys.inflight(chat_id), *candidates[start : start + BATCH]],
                    [phone or "", own_lid],
                )
            )
        # The AI agent's counters (no hash tag: one key per call).
        for key in limit_keys(prefix, token, now_ms()):
            removed += int(await redis.delete(key))
        removed += await _erase_console(redis, prefix, token)
        if media is not None:
            removed += await media.forget_conversation(token)
        if also is not None:
            removed += await also()
        # After `also` (the bookings and their pending webhook bodies): a delivery in flight
        # dead-letters only a body still pending (booking_hook_dead.lua), so once the bodies
        # are gone no dead letter of this customer can appear after this filter.
        removed += await _erase_calendar(redis, prefix, session, chat_id, token)
    finally:
        # Messages queued during the erase go to the ready list now (the back, as after any
        # turn); with none, the conversation's meta goes and its fence lives on in the shard's
        # counter. 0 means the lease was reaped meanwhile: they were handed on already.
        await RELEASE_CONVERSATION(
            redis,
            [queue.meta, queue.messages, shard.leases, shard.ready, shard.fence],
            [token, fence, "back"],
        )
    return removed


async def _erase_calendar(
    redis: RedisClient, prefix: str, session: str, chat_id: str, token: str
) -> int:
    calendar = CalendarKeys(prefix)
    # Every record of a freed slot's offers: the customer's digest is a field of those they
    # were offered.
    pattern = _glob_escape(calendar.freed_offers("")) + "*"
    records = sorted({as_text(raw) async for raw in redis.scan_iter(match=pattern, count=1000)})
    removed = 0
    for start in range(0, max(1, len(records)), BATCH):
        removed += int(
            await ERASE_CALENDAR(
                redis,
                [calendar.hooks_dead, *records[start : start + BATCH]],
                [session, chat_id, hashed(token)],
            )
        )
    return removed


async def _erase_console(redis: RedisClient, prefix: str, token: str) -> int:
    console = ConsoleKeys(prefix)
    per_agent: set[str] = set()
    for family in (console.read(""), console.handled("")):
        pattern = _glob_escape(family) + "*"
        per_agent |= {as_text(raw) async for raw in redis.scan_iter(match=pattern, count=1000)}
    keys = sorted(per_agent) or [""]
    removed = 0
    for start in range(0, len(keys), BATCH):
        chunk = [k for k in keys[start : start + BATCH] if k]
        removed += int(
            await ERASE_CONSOLE(
                redis, [console.audit(token), console.viewed, console.events, *chunk], [token]
            )
        )
    return removed


async def _erase_line(redis: RedisClient, prefix: str, session: str, token: str) -> int:
    line = LineKeys(prefix)
    # The session's plain line and each team's line. No line can gain this customer while the
    # erase holds the conversation's lease (joining one is a turn of theirs), so the team lines
    # read now are all the lines they can be in.
    pattern = _glob_escape(line.team_waiting(session, "")) + "*"
    team_lines = sorted({as_text(k) async for k in redis.scan_iter(match=pattern, count=1000)})
    lines = [line.waiting(session), *team_lines]
    for _ in range(MAX_TRIES):
        agents = sorted(as_text(a) for a in await redis.hkeys(line.agents))
        removed = int(
            await ERASE_LINE(
                redis,
                [
                    line.agents, *lines, line.taken, line.joined,
                    *(line.agent_conversations(a) for a in agents),
                ],
                [token, len(lines), 2, *agents],
            )
        )  # fmt: skip
        if removed >= 0:
            return removed
    raise RuntimeError("agents keep changing; erase again")
