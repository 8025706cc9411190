"""Dead letters: messages the workers gave up on, kept per shard for a person to look at.

An entry of `P:{qn}:dlq` (newest at the left) is one JSON line then the queued record byte for
byte, the same shape as the record itself, so a WAHA body is never re-encoded:

    {"v":1,"id":"evt_…","conversation":"default|5511…@c.us","error":"…","attempts":5,
     "at":1763396580579,"reason":"failed"}\\n<the queued record>

`reason` is `failed` (the handler failed `WSM_MAX_ATTEMPTS` times), `lease_expired` (workers
died or stalled on it that many times) or `invalid` (the record cannot be decoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from shared.keys import ShardKeys, all_shards
from shared.lua import LuaScript

REPLAY_DEAD_LETTER = LuaScript.named("replay_dead_letter")


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


async def list_dead_letters(client: Any, shards: int, prefix: str) -> list[DeadLetter]:
    """Every dead letter, oldest first."""
    letters: list[DeadLetter] = []
    for shard in all_shards(shards, prefix):
        entries = await client.lrange(shard.dlq, 0, -1)
        letters += [parse_dead_letter(raw, shard) for raw in reversed(entries)]
    letters.sort(key=lambda letter: letter.at_ms)
    return letters


class ReplayResult(Enum):
    REPLAYED = "replayed"
    GONE = "gone"  # replayed or dropped by someone else meanwhile
    BUSY = "busy"  # the conversation is leased; try again when its turn ends


async def replay_dead_letter(client: Any, letter: DeadLetter) -> ReplayResult:
    """Put the message back at the head of its conversation, with fresh attempts."""
    shard = letter.shard
    conversation = shard.conversation(letter.conversation)
    result = int(
        await REPLAY_DEAD_LETTER(
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
            [letter.raw, letter.id, letter.conversation, letter.record],
        )
    )
    if result == 1:
        return ReplayResult.REPLAYED
    return ReplayResult.BUSY if result == -1 else ReplayResult.GONE


async def drop_dead_letter(client: Any, letter: DeadLetter) -> bool:
    """Delete the dead letter for good. False: it was already gone."""
    return bool(await client.lrem(letter.shard.dlq, 1, letter.raw))
