"""Outbox dead letters: replies the sender gave up on (engine/sender.py), kept per shard for a
person to look at, send again (`wsm dlq outbox replay`) or drop.

An entry of `P:{qn}:outbox:dlq` (newest at the RIGHT) is one JSON object, written by
`outbox_dead.lua`:

    {"conversation":"default|5511…@c.us","at":1763396580579,
     "reason":{"status":400,"answer":"<WAHA's body>","error":"POST /api/sendText: …"},
     "entry":{<the outbox entry: mid, chat, text, created, kind, media, attempts, …,
              and `try` when its last attempt went to WAHA (send_begin.lua)>}}

Whether the reply reached the customer: WAHA answered its last attempt with an error status
(`reason.status`: a 4xx, or a 5xx/429 after WSM_SEND_MAX_ATTEMPTS), or the attempt never went
to WAHA (no `try` mark: the file to send was gone): it was not sent. A last attempt that went to
WAHA and got no answer (timeout, connection lost) may have been sent: its outcome is unknown,
and a replay refuses it unless told otherwise (`replay_outbox_dead.lua` decides, in Redis).

The list is capped and aged like the queue's dead letters (WSM_DEAD_LETTERS_MAX,
WSM_DEAD_LETTER_DAYS; shared/dead_letters.py), and an erase removes a customer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from shared.dead_letters import read_newest_first
from shared.keys import EngineConversationKeys, ShardKeys, all_shards, outbox_dlq_key
from shared.lua import LuaScript
from shared.redis_client import RedisClient

REPLAY_OUTBOX_DEAD = LuaScript.named("replay_outbox_dead")


class Outcome(Enum):
    """Whether a dead-lettered reply may have reached the customer."""

    NOT_SENT = "not_sent"  # WAHA answered with an error, or nothing went to WAHA
    UNKNOWN = "unknown"  # its last send went to WAHA and got no answer


@dataclass(frozen=True, slots=True)
class OutboxDeadLetter:
    shard: ShardKeys
    mid: str  # the reply's id (the history's `mid`)
    conversation: str
    chat: str  # where it was to be sent
    text: str  # the text, or a file's caption
    kind: str  # text | image | document | voice
    media: dict[str, Any] | None
    author: str
    created_ms: int  # when the reply was written
    attempts: int  # sends tried
    at_ms: int  # when it was dead-lettered
    status: int | None  # WAHA's HTTP status to the last attempt (None: no answer)
    answer: str  # WAHA's body
    error: str
    attempted: bool  # its last attempt went to WAHA (the entry carries send_begin's mark)
    # The entry exactly as stored: replay and drop remove it by value.
    raw: bytes

    @property
    def outcome(self) -> Outcome:
        if self.attempted and self.status is None:
            return Outcome.UNKNOWN
        return Outcome.NOT_SENT

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.mid,
            "conversation": self.conversation,
            "shard": self.shard.shard,
            "chat": self.chat,
            "kind": self.kind,
            "text": self.text,
            "media": self.media,
            "author": self.author,
            "created": self.created_ms,
            "attempts": self.attempts,
            "at": self.at_ms,
            "status": self.status,
            "answer": self.answer,
            "error": self.error,
            "outcome": self.outcome.value,
        }


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def parse_outbox_dead_letter(raw: bytes, shard: ShardKeys) -> OutboxDeadLetter:
    """An entry as stored; one that cannot be read comes out with empty fields (it can still be
    listed and dropped; a replay refuses it)."""
    try:
        letter = _object(orjson.loads(raw))
    except orjson.JSONDecodeError:
        letter = {}
    entry = _object(letter.get("entry"))
    reason = _object(letter.get("reason"))
    status = reason.get("status")
    attempted = isinstance(entry.get("try"), dict)
    media = entry.get("media")
    return OutboxDeadLetter(
        shard=shard,
        mid=str(entry.get("mid", "")),
        conversation=str(letter.get("conversation", "")),
        chat=str(entry.get("chat", "")),
        text=str(entry.get("text", "")),
        kind=str(entry.get("kind", "text")),
        media=media if isinstance(media, dict) else None,
        author=str(entry.get("author", "")),
        created_ms=_int(entry.get("created")),
        # `attempts` counts the tries that failed and were retried; the last one is counted
        # here when it went to WAHA.
        attempts=_int(entry.get("attempts")) + (1 if attempted else 0),
        at_ms=_int(letter.get("at")),
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        answer=str(reason.get("answer") or ""),
        error=str(reason.get("error") or ""),
        attempted=attempted,
        raw=raw,
    )


# Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
async def list_outbox_dead_letters(client: Any, shards: int, prefix: str) -> list[OutboxDeadLetter]:
    """Every outbox dead letter, oldest first."""
    letters: list[OutboxDeadLetter] = []
    for shard in all_shards(shards, prefix):
        entries = await read_newest_first(client, outbox_dlq_key(shard))
        letters += [parse_outbox_dead_letter(raw, shard) for raw in entries]
    letters.sort(key=lambda letter: letter.at_ms)
    return letters


async def count_outbox_dead_letters(client: Any, shards: int, prefix: str) -> int:
    return sum([int(await client.llen(outbox_dlq_key(s))) for s in all_shards(shards, prefix)])


class OutboxReplayResult(Enum):
    REPLAYED = "replayed"
    GONE = "gone"  # replayed, dropped or erased by someone else meanwhile
    UNKNOWN = "unknown"  # its last send got no answer: it may have reached the customer
    NO_HISTORY = "no_history"  # the conversation's history has no such reply (erased, trimmed)
    EXPIRED = "expired"  # written longer ago than the history keeps replies
    RECORDED = "recorded"  # the history says it is not `failed` any more
    INVALID = "invalid"  # the entry cannot be read


@dataclass(frozen=True, slots=True)
class OutboxReplay:
    result: OutboxReplayResult
    # What the history says of a RECORDED reply (its status).
    status: str = ""


@dataclass(frozen=True, slots=True)
class ReplayBounds:
    """What a replay checks against: the caller's clock (the pending index's), how old a reply
    may be (the history's retention, ms), the outbox's expiry (s), and whether a reply whose
    last send got no answer goes back anyway."""

    now_ms: int
    max_age_ms: int
    retention_seconds: int
    resend_unknown: bool = False


async def replay_outbox_dead_letters(
    client: RedisClient, letters: Sequence[OutboxDeadLetter], bounds: ReplayBounds
) -> list[OutboxReplay]:
    """Put one conversation's outbox dead letters (`letters`, oldest first, as
    `list_outbox_dead_letters` gives them) back at the tail of its outbox, in that order, in one
    script call (`replay_outbox_dead.lua`): each is replayed or refused on its own, and a
    refused one stays in the list with nothing of it stored."""
    if not letters:
        return []
    first = letters[0]
    if any((x.shard, x.conversation) != (first.shard, first.conversation) for x in letters):
        raise ValueError("replay_outbox_dead_letters: letters of one conversation only")
    keys = EngineConversationKeys(first.shard.conversation(first.conversation))
    answer = await REPLAY_OUTBOX_DEAD(
        client,
        [keys.outbox_dlq, keys.outbox, keys.history_meta, keys.outbox_pending],
        [
            first.conversation,
            bounds.now_ms,
            bounds.max_age_ms,
            bounds.retention_seconds,
            "1" if bounds.resend_unknown else "0",
            *(letter.raw for letter in letters),
        ],
    )
    results = []
    for raw in answer:
        code, _, status = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition(":")
        results.append(OutboxReplay(OutboxReplayResult(code), status))
    return results


# Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
async def drop_outbox_dead_letter(client: Any, letter: OutboxDeadLetter) -> bool:
    """Delete the dead letter for good. False: it was already gone."""
    return bool(await client.lrem(outbox_dlq_key(letter.shard), 1, letter.raw))
