"""Every message in and out of a conversation, oldest first, with its delivery status.

Layout (both keys carry the conversation's hash tag, so history commits with the handler):

- a stream (`hist`): one entry per message, appended in the order the conversation's handler
  saw them; the stream id is the pagination cursor (`before`).
- a hash (`histmeta`): what changes after a message was written, one field per fact:
  `<mid>:status`, `<mid>:waha_id`, `<mid>:edit`, `<mid>:revoked`, `<mid>:reactions`, and
  `w:<WhatsApp id>` -> mid to find a message again from an ack, an edit, a revoke or a reaction,
  and `dead_replies`: up to 16 replies dead-lettered with their outcome unknown, so that an echo
  coming after the in-flight marker lapsed is still known as ours (shared/scripts/lib/
  dead_replies.lua).

Bounds (`trim`, `history_trim.lua`, run by the engine's maintenance on every conversation that
changed since its previous pass): entries older than the retention and the oldest beyond
WSM_HISTORY_MAX_MESSAGES go, each with its meta fields, so the meta hash is bounded by the stream
(it is compacted when facts about messages already gone, or acks parked for messages never
recorded, outnumber what the entries can own). Entries dropped by the length cap while still
within the retention are data loss: counted in `{eng}:dropped` `history_entries`. Both keys
expire after the retention without appends, and what writes the meta hash later never brings it
back without an expiry: the sender's scripts (outbox_sent, outbox_dead, outbox_failed) write
only into a hash that exists, and an ack parked where there is no history sets the retention.

`mid` is our id of a message: the WhatsApp id for one we received, a random id for one we send
(its WhatsApp id exists only once WAHA accepted it).

Delivery status only moves forward (queued < sent < server < device < read < played): WAHA
gives no ordering guarantee, so a late DEVICE ack must not undo a READ. The ranking is
shared/delivery_status.py's; the gateway moves `<mid>:status` too, with the same ranking, for a
receipt whose message is recorded already (shared/enqueue.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared import clock
from shared.commit_writes import Write, write
from shared.delivery_status import advances
from shared.events import short_message_id
from shared.lua import LuaScript
from shared.redis_client import RedisClient
from shared.stream_ids import history_cursor
from shared.text import as_text

HISTORY_TRIM = LuaScript.named("history_trim")
HISTORY_FACT = LuaScript.named("history_fact")
# Entries trimmed per script call (a call blocks Redis: keep each one short).
TRIM_BATCH = 500

_META_FIELDS = ("status", "waha_id", "edit", "revoked", "reactions")


class InvalidCursor(ValueError):
    """A `before` cursor that is not a history entry id (terminal: the caller's mistake)."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    mid: str
    direction: str  # "in" | "out"
    text: str
    at: int  # epoch ms: when the message was written (WAHA's time for received ones)
    author: str = ""  # customer | bot | agent:<id> | business (from the business's phone)
    kind: str = "text"
    waha_id: str = ""
    status: str = ""
    edited_text: str | None = None
    revoked: bool = False
    reactions: Mapping[str, str] = field(default_factory=dict)
    cursor: str = ""  # stream id
    # A customer's media (engine/media/): the stored file {id, mimetype, filename, size,
    # sha256}, or None with `media_reason` saying why there is none; its caption; the
    # transcript of a voice note or audio; a shared location {latitude, longitude, name}; a
    # contact card {name, phone, vcard}.
    media: Mapping[str, Any] | None = None
    media_reason: str | None = None
    caption: str | None = None
    transcript: str | None = None
    location: Mapping[str, Any] | None = None
    contact: Mapping[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.cursor,
            "direction": self.direction,
            "text": self.text,
            "waha_id": self.waha_id or None,
            "status": self.status,
            "at": self.at,
            "author": self.author,
            "kind": self.kind,
            "edited_text": self.edited_text,
            "revoked": self.revoked,
            "reactions": dict(self.reactions),
            "media": dict(self.media) if self.media is not None else None,
            "media_reason": self.media_reason,
            "caption": self.caption,
            "transcript": self.transcript,
            "location": dict(self.location) if self.location is not None else None,
            "contact": dict(self.contact) if self.contact is not None else None,
        }


@dataclass(frozen=True, slots=True)
class HistoryKeys:
    stream: str
    meta: str


def append_writes(
    keys: HistoryKeys,
    entry: HistoryEntry,
    *,
    retention_seconds: int,
    now_ms: int | None = None,
) -> list[Write]:
    # Not trimmed here (XADD MINID would drop entries and leave their meta fields behind):
    # `trim` removes both, from the maintenance. `now_ms` stays for the callers' sake.
    writes = [
        write(
            "XADD",
            keys.stream,
            "*",
            "mid",
            entry.mid,
            "dir",
            entry.direction,
            "text",
            entry.text,
            "at",
            str(entry.at),
            "author",
            entry.author,
            "kind",
            entry.kind,
            *_media_fields(entry),
        ),
        write("HSET", keys.meta, f"{entry.mid}:status", entry.status or "received"),
    ]
    if entry.waha_id:
        writes.append(
            write(
                "HSET",
                keys.meta,
                f"{entry.mid}:waha_id",
                entry.waha_id,
                f"w:{entry.mid}",
                entry.mid,
            )
        )
    writes += [
        write("EXPIRE", keys.stream, retention_seconds),
        write("EXPIRE", keys.meta, retention_seconds),
    ]
    return writes


def _media_fields(entry: HistoryEntry) -> list[str]:
    """The media fields of a stream entry, only those set (a text entry keeps its old shape,
    and entries written before media existed read as having none)."""
    fields: list[str] = []
    if entry.media is not None:
        fields += ["media", orjson.dumps(dict(entry.media)).decode()]
    for name in ("media_reason", "caption", "transcript"):
        value = getattr(entry, name)
        if value is not None:
            fields += [name, value]
    for name in ("location", "contact"):
        value = getattr(entry, name)
        if value is not None:
            fields += [name, orjson.dumps(dict(value)).decode()]
    return fields


def _json_field(values: Mapping[str, str], name: str) -> dict[str, Any] | None:
    raw = values.get(name)
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class Trimmed:
    entries: int = 0  # removed from the stream (with their meta fields)
    by_length: int = 0  # of those, within the retention: dropped by the length cap
    compacted: int = 0  # orphan meta fields removed

    def __add__(self, other: Trimmed) -> Trimmed:
        return Trimmed(
            self.entries + other.entries,
            self.by_length + other.by_length,
            self.compacted + other.compacted,
        )


async def trim(
    redis: RedisClient,
    keys: HistoryKeys,
    *,
    retention_seconds: int,
    max_entries: int,
    now_ms: int | None = None,
) -> Trimmed:
    """Remove entries past the retention or beyond `max_entries` (0: no cap), oldest first,
    with their meta fields. Safe beside the conversation's handler: it appends at the other
    end, and a fact it writes for a message trimmed meanwhile is an orphan the compaction
    removes."""
    now = clock.now_ms() if now_ms is None else now_ms
    oldest_kept = max(0, now - retention_seconds * 1000)
    total = Trimmed()
    while True:
        entries, by_length, compacted, more = await HISTORY_TRIM(
            redis, [keys.stream, keys.meta], [oldest_kept, max_entries, TRIM_BATCH]
        )
        total += Trimmed(int(entries), int(by_length), int(compacted))
        if not int(more):
            return total


async def trim_many(
    redis: RedisClient,
    histories: Sequence[HistoryKeys],
    *,
    retention_seconds: int,
    max_entries: int,
    now_ms: int | None = None,
    chunk: int = 200,
) -> Trimmed:
    """`trim` for many conversations, pipelined (one round trip per `chunk`): most have
    nothing or one batch to trim; those with more get `trim` on their own."""
    now = clock.now_ms() if now_ms is None else now_ms
    oldest_kept = max(0, now - retention_seconds * 1000)
    if histories:
        await HISTORY_TRIM.load(redis)  # the pipelined EVALSHAs below find it
    total = Trimmed()
    again: list[HistoryKeys] = []
    for start in range(0, len(histories), chunk):
        part = histories[start : start + chunk]
        pipe = redis.pipeline(transaction=False)
        for keys in part:
            HISTORY_TRIM.queue_in(
                pipe, [keys.stream, keys.meta], [oldest_kept, max_entries, TRIM_BATCH]
            )
        for keys, (entries, by_length, compacted, more) in zip(
            part, await pipe.execute(), strict=True
        ):
            total += Trimmed(int(entries), int(by_length), int(compacted))
            if int(more):
                again.append(keys)
    for keys in again:
        total += await trim(
            redis, keys, retention_seconds=retention_seconds, max_entries=max_entries, now_ms=now
        )
    return total


async def mid_for(redis: RedisClient, keys: HistoryKeys, short_waha_id: str) -> str | None:
    return mid_from(await redis.hget(keys.meta, mid_field(short_waha_id)))


def mid_field(short_waha_id: str) -> str:
    """The meta field naming the entry a WhatsApp id belongs to (for a pipelined HGET)."""
    return f"w:{short_waha_id}"


def mid_from(value: Any) -> str | None:
    return None if value is None else as_text(value)


async def fact_for(
    redis: RedisClient, keys: HistoryKeys, short_waha_id: str, fact: str, *, parked: str = ""
) -> tuple[str | None, str | None]:
    """The entry WhatsApp's `short_waha_id` names and its `fact` (`<entry>:<fact>`), in one
    round trip (history_fact.lua); with no such entry yet, None and the value of the `parked`
    field (None when there is none)."""
    mid, value = await HISTORY_FACT(redis, [keys.meta], [mid_field(short_waha_id), fact, parked])
    return mid_from(mid), None if value is None else as_text(value)


async def ack_writes(
    redis: RedisClient,
    keys: HistoryKeys,
    short_waha_id: str,
    status: str,
    *,
    retention_seconds: int,
) -> list[Write]:
    """Writes recording a delivery status for the message WhatsApp knows as `short_waha_id`.

    When the ack comes before the sender has recorded which of our messages got that id (WAHA
    may deliver the ack webhook before its answer to sendText reaches us), the status is parked
    under the WhatsApp id; the sender applies it when it records the id (outbox_sent.lua).
    """
    parked = f"w:{short_waha_id}:ack"
    mid, current = await fact_for(redis, keys, short_waha_id, "status", parked=parked)
    if not advances(current, status):
        return []
    if mid is not None:
        return [write("HSET", keys.meta, f"{mid}:status", status)]
    # An ack for a message this history does not hold may come to a conversation with no
    # history at all (it expired; the message was sent by another tool): the parked field
    # would create the meta hash with no expiry. NX: a living history keeps its own.
    return [
        write("HSET", keys.meta, parked, status),
        write("EXPIRE", keys.meta, retention_seconds, "NX"),
    ]


async def edit_writes(
    redis: RedisClient, keys: HistoryKeys, short_waha_id: str, text: str
) -> list[Write]:
    mid = await mid_for(redis, keys, short_waha_id)
    return [] if mid is None else [write("HSET", keys.meta, f"{mid}:edit", text)]


async def revoke_writes(
    redis: RedisClient, keys: HistoryKeys, short_waha_id: str, at_ms: int
) -> list[Write]:
    mid = await mid_for(redis, keys, short_waha_id)
    return [] if mid is None else [write("HSET", keys.meta, f"{mid}:revoked", str(at_ms))]


async def reaction_writes(
    redis: RedisClient, keys: HistoryKeys, short_waha_id: str, reactor: str, emoji: str
) -> list[Write]:
    """An empty emoji removes that person's reaction (WAHA's convention)."""
    mid, raw = await fact_for(redis, keys, short_waha_id, "reactions")
    if mid is None:
        return []
    reactions: dict[str, str] = orjson.loads(raw) if raw else {}
    if emoji:
        reactions[reactor] = emoji
    else:
        reactions.pop(reactor, None)
    return [write("HSET", keys.meta, f"{mid}:reactions", orjson.dumps(reactions).decode())]


async def read_page(
    # Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
    redis: Any,
    keys: HistoryKeys,
    *,
    limit: int = 50,
    before: str | None = None,
) -> tuple[list[HistoryEntry], str | None]:
    """Up to `limit` entries older than `before` (or the newest ones), oldest first, and the
    cursor of the next (older) page, None when there is none."""
    if before is not None and not history_cursor(before):
        raise InvalidCursor(f"not a history cursor: {before[:64]!r}")  # a client's: bounded
    upper = f"({before}" if before else "+"
    raw = await redis.xrevrange(keys.stream, max=upper, min="-", count=limit + 1)
    more = len(raw) > limit
    raw = list(reversed(raw[:limit]))
    entries = await _with_meta(redis, keys, raw)
    next_cursor = entries[0].cursor if more and entries else None
    return entries, next_cursor


# Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
async def recent(redis: Any, keys: HistoryKeys, count: int) -> list[HistoryEntry]:
    if count <= 0:
        return []
    return await recent_from(redis, keys, await redis.xrevrange(keys.stream, count=count))


async def recent_from(
    redis: Any, keys: HistoryKeys, newest_first: Sequence[tuple[Any, Mapping[Any, Any]]]
) -> list[HistoryEntry]:
    """`recent` from an XREVRANGE already read (a turn reads it with the state)."""
    return await _with_meta(redis, keys, list(reversed(newest_first)))


async def _with_meta(
    redis: RedisClient, keys: HistoryKeys, raw: Sequence[tuple[Any, Mapping[Any, Any]]]
) -> list[HistoryEntry]:
    if not raw:
        return []
    decoded = [
        (as_text(cursor), {as_text(k): as_text(v) for k, v in values.items()})
        for cursor, values in raw
    ]
    names = [f"{values['mid']}:{name}" for _, values in decoded for name in _META_FIELDS]
    meta = await redis.hmget(keys.meta, names)
    # An ack parked under a WhatsApp id (it came before the sender recorded the id, and its
    # commit landed after the sender's bookkeeping) still counts.
    waha_ids = [meta[n * len(_META_FIELDS) + 1] for n in range(len(decoded))]
    parked_fields = [f"w:{short_message_id(as_text(w))}:ack" if w else "-" for w in waha_ids]
    parked = await redis.hmget(keys.meta, parked_fields)
    entries: list[HistoryEntry] = []
    for n, (cursor, values) in enumerate(decoded):
        status, waha_id, edit, revoked, reactions = (
            as_text(v) if v is not None else None
            for v in meta[n * len(_META_FIELDS) : (n + 1) * len(_META_FIELDS)]
        )
        entries.append(
            HistoryEntry(
                mid=values["mid"],
                direction=values.get("dir", ""),
                text=values.get("text", ""),
                at=int(values.get("at", "0") or 0),
                author=values.get("author", ""),
                kind=values.get("kind", "text"),
                waha_id=waha_id or "",
                status=_latest(status, as_text(parked[n]) if parked[n] is not None else None),
                edited_text=edit,
                revoked=revoked is not None,
                reactions=orjson.loads(reactions) if reactions else {},
                cursor=cursor,
                media=_json_field(values, "media"),
                media_reason=values.get("media_reason"),
                caption=values.get("caption"),
                transcript=values.get("transcript"),
                location=_json_field(values, "location"),
                contact=_json_field(values, "contact"),
            )
        )
    return entries


def _latest(status: str | None, parked: str | None) -> str:
    if parked is not None and advances(status, parked):
        return parked
    return status or ""
