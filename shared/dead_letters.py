"""Dead letters: messages the workers gave up on, kept per shard for a person to look at.

An entry of `P:{qn}:dlq` (newest at the left) is one JSON line then the queued record byte for
byte, the same shape as the record itself, so a WAHA body is never re-encoded:

    {"v":1,"id":"evt_…","conversation":"default|5511…@c.us","error":"…","attempts":5,
     "at":1763396580579,"reason":"failed"}\\n<the queued record>

`reason` is `failed` (the handler failed `WSM_MAX_ATTEMPTS` times), `lease_expired` (workers
died or stalled on it that many times) or `invalid` (the record cannot be decoded).

Each entry carries the raw body, so the lists are bounded: the scripts that add one
(`fail_message.lua`, `reap_expired_lease.lua`, and `outbox_dead.lua` for the outbox's list)
keep the newest `WSM_DEAD_LETTERS_MAX` per shard and drop those older than
`WSM_DEAD_LETTER_DAYS`, counting what they drop in the shard's stats (`dead_dropped`,
`outbox_dead_dropped`; the fleet exports them as `wsm_dlq_dropped_total{list}`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from shared.clock import DAY_MS
from shared.keys import EngineConversationKeys, ShardKeys, all_shards
from shared.lua import LuaScript
from shared.redis_client import RedisClient

REPLAY_DEAD_LETTER = LuaScript.named("replay_dead_letter")
OUTBOX_DEAD = LuaScript.named("outbox_dead")

# `wsm dlq list` reads a shard's list in pages: one LRANGE 0 -1 of a long list is one huge
# reply that blocks Redis while it is built.
LIST_PAGE = 200


# Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
async def read_newest_first(client: Any, key: str) -> list[bytes]:
    """A dead-letter list whose newest entries are at the right (the outbox's, the booking
    webhook's), whole, in pages of LIST_PAGE, each entry once, oldest first. Read from the
    newest end: an entry written while paging shifts what is left to read, so an entry may be
    read twice (kept once), never skipped; the aging pops from the other end."""
    entries: list[bytes] = []
    while True:
        page = await client.lrange(key, -(len(entries) + LIST_PAGE), -(len(entries) + 1))
        entries = page + entries
        if len(page) < LIST_PAGE:
            break
    return list(dict.fromkeys(entries))


@dataclass(frozen=True, slots=True)
class DeadLetterLimits:
    """How many dead letters a shard keeps, and for how long (WSM_DEAD_LETTERS_MAX,
    WSM_DEAD_LETTER_DAYS); the defaults are the settings' defaults."""

    max_entries: int = 10_000
    max_age_ms: int = 30 * DAY_MS

    @classmethod
    def from_settings(cls, settings: Any) -> DeadLetterLimits:
        return cls(settings.dead_letters_max, int(settings.dead_letter_days * DAY_MS))


DEFAULT_DEAD_LETTER_LIMITS = DeadLetterLimits()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    shard: ShardKeys
    id: str
    conversation: str
    error: str
    attempts: int
    at_ms: int
    reason: str
    record: bytes
    # The entry exactly as stored: replay and drop remove it by value.
    raw: bytes

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation": self.conversation,
            "shard": self.shard.shard,
            "attempts": self.attempts,
            "at": self.at_ms,
            "reason": self.reason,
            "error": self.error,
        }


def parse_dead_letter(raw: bytes, shard: ShardKeys) -> DeadLetter:
    header_bytes, _, record = raw.partition(b"\n")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError:
        header = {}
    if not isinstance(header, dict):
        header = {}
    return DeadLetter(
        shard=shard,
        id=str(header.get("id", "")),
        conversation=str(header.get("conversation", "")),
        error=str(header.get("error", "")),
        attempts=int(header.get("attempts", 0) or 0),
        at_ms=int(header.get("at", 0) or 0),
        reason=str(header.get("reason", "")),
        record=record,
        raw=raw,
    )


# Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
async def list_dead_letters(client: Any, shards: int, prefix: str) -> list[DeadLetter]:
    """Every dead letter, oldest first."""
    letters: list[DeadLetter] = []
    for shard in all_shards(shards, prefix):
        entries: list[bytes] = []
        while True:
            page = await client.lrange(shard.dlq, len(entries), len(entries) + LIST_PAGE - 1)
            entries += page
            if len(page) < LIST_PAGE:
                break
        # Entries pushed while paging shift the list right: an entry may be read twice.
        unique = list(dict.fromkeys(entries))
        letters += [parse_dead_letter(raw, shard) for raw in reversed(unique)]
    letters.sort(key=lambda letter: letter.at_ms)
    return letters


async def dropped_dead_letters(
    client: RedisClient, shards: int, prefix: str, *, outbox: bool = False
) -> int:
    """How many dead letters the cap and the aging have dropped so far: the queue's, or with
    `outbox` the outbox's (the shards' `dead_dropped` / `outbox_dead_dropped`)."""
    field = "outbox_dead_dropped" if outbox else "dead_dropped"
    total = 0
    for shard in all_shards(shards, prefix):
        total += int(await client.hget(shard.stats, field) or 0)
    return total


class ReplayResult(Enum):
    REPLAYED = "replayed"
    GONE = "gone"  # replayed or dropped by someone else meanwhile
    BUSY = "busy"  # the conversation is leased; try again when its turn ends


async def replay_dead_letters(
    client: RedisClient, letters: Sequence[DeadLetter]
) -> list[ReplayResult]:
    """Put one conversation's dead letters back at the head of it, in the order they were
    queued (`letters`: that conversation's, oldest first, as `list_dead_letters` gives them),
    with fresh attempts. One script call: no worker can take a newer one before an older one
    is back. BUSY for all of them while the conversation is leased."""
    if not letters:
        return []
    first = letters[0]
    if any((x.shard.dlq, x.conversation) != (first.shard.dlq, first.conversation) for x in letters):
        raise ValueError("replay_dead_letters: letters of one conversation only")
    shard = first.shard
    conversation = shard.conversation(first.conversation)
    answer = await REPLAY_DEAD_LETTER(
        client,
        [
            shard.dlq,
            conversation.messages,
            conversation.bodies,
            conversation.attempts,
            conversation.meta,
            shard.ready,
            shard.stats,
        ],
        [
            first.conversation,
            *(x for letter in letters for x in (letter.raw, letter.id, letter.record)),
        ],
    )
    if not isinstance(answer, list):  # -1: leased
        return [ReplayResult.BUSY] * len(letters)
    return [ReplayResult.REPLAYED if int(r) == 1 else ReplayResult.GONE for r in answer]


# Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
async def drop_dead_letter(client: Any, letter: DeadLetter) -> bool:
    """Delete the dead letter for good. False: it was already gone."""
    return bool(await client.lrem(letter.shard.dlq, 1, letter.raw))


async def outbox_dead(
    client: RedisClient,
    keys: EngineConversationKeys,
    token: str,
    mid: str,
    reason: bytes | str,
    now_ms: int,
    limits: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS,
) -> bool:
    """Move the outbox's head reply `mid` to the shard's capped outbox dead letters
    (`outbox_dead.lua`). False: the head is another reply (a repeat)."""
    shard = keys.conversation.shard_keys
    return bool(
        await OUTBOX_DEAD(
            client,
            [keys.outbox, keys.outbox_dlq, keys.history_meta, keys.outbox_pending, shard.stats],
            [mid, token, reason, now_ms, limits.max_entries, limits.max_age_ms],
        )
    )
