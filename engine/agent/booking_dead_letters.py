"""Booking webhook dead letters: events the booking webhook gave up on (engine/agent/
booking_webhook.py), kept for a person to look at, send again (`wsm dlq booking-webhook
replay`) or drop.

An entry of `P:{cal}:hooks:dead` (newest at the RIGHT) is one JSON object, written by
`booking_hook_dead.lua`:

    {"id":"evt_…","body":{<the event as it was sent: id, event, occurred_at, booking,
     customer>},"attempts":3,"error":"HTTP 500: …","at":1763396580579}

The list is capped and aged like the queue's dead letters (WSM_DEAD_LETTERS_MAX,
WSM_DEAD_LETTER_DAYS; shared/dead_letters.py), and an erase removes a customer's
(`erase_calendar.lua`).

A replay puts an event back among the pending ones, due now, with fresh attempts: the workers'
deliverer sends it as any event, signed anew, under its own id (the receiver deduplicates on
it). Whether a dead-lettered event reached the receiver does not matter, for that reason: an
event is at least once by contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from shared.dead_letters import read_newest_first
from shared.keys import CalendarKeys, conversation_token
from shared.lua import LuaScript
from shared.redis_client import RedisClient

REPLAY_BOOKING_HOOK_DEAD = LuaScript.named("replay_booking_hook_dead")


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class BookingDeadLetter:
    id: str  # the event's id (the receiver deduplicates on it)
    event: str  # booking.booked | booking.rescheduled | booking.cancelled
    conversation: str  # the customer's conversation (`<session>|<chat id>`)
    booking_id: str
    start: str  # the booking's start, as sent (ISO 8601 with its offset)
    attempts: int  # deliveries tried
    at_ms: int  # when it was given up
    error: str  # the receiver's status and answer, or the network error
    body: dict[str, Any] | None  # the event as it was sent (None: unreadable)
    # The entry exactly as stored: replay and drop remove it by value.
    raw: bytes

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "conversation": self.conversation,
            "booking": self.booking_id,
            "start": self.start,
            "attempts": self.attempts,
            "at": self.at_ms,
            "error": self.error,
            "body": self.body,
        }


def parse_booking_dead_letter(raw: bytes) -> BookingDeadLetter:
    """An entry as stored; one that cannot be read comes out with empty fields (it can still be
    listed and dropped; a replay refuses it)."""
    try:
        letter = _object(orjson.loads(raw))
    except orjson.JSONDecodeError:
        letter = {}
    body = letter.get("body")
    sent = _object(body)
    booking = _object(sent.get("booking"))
    customer = _object(sent.get("customer"))
    session, chat_id = str(customer.get("session") or ""), str(customer.get("chat_id") or "")
    return BookingDeadLetter(
        id=str(letter.get("id") or ""),
        event=str(sent.get("event") or ""),
        conversation=conversation_token(session, chat_id) if session and chat_id else "",
        booking_id=str(booking.get("id") or ""),
        start=str(booking.get("start") or ""),
        attempts=_int(letter.get("attempts")),
        at_ms=_int(letter.get("at")),
        error=str(letter.get("error") or ""),
        body=body if isinstance(body, dict) else None,
        raw=raw,
    )


# Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
async def dropped_booking_dead_letters(client: Any, prefix: str) -> int:
    """How many booking webhook dead letters the cap and the aging have dropped so far."""
    return int(await client.get(CalendarKeys(prefix).hooks_dead_dropped) or 0)


async def list_booking_dead_letters(client: Any, prefix: str) -> list[BookingDeadLetter]:
    """Every booking webhook dead letter, oldest first."""
    entries = await read_newest_first(client, CalendarKeys(prefix).hooks_dead)
    letters = [parse_booking_dead_letter(raw) for raw in entries]
    letters.sort(key=lambda letter: letter.at_ms)
    return letters


class BookingReplayResult(Enum):
    REPLAYED = "replayed"
    GONE = "gone"  # replayed, dropped or erased by someone else meanwhile
    NO_BOOKING = "no_booking"  # the booking is no longer kept (erased, past its retention)
    PENDING = "pending"  # an event of that id is pending already
    INVALID = "invalid"  # the entry cannot be read


async def replay_booking_dead_letters(
    client: RedisClient, prefix: str, letters: Sequence[BookingDeadLetter], now_ms: int
) -> list[BookingReplayResult]:
    """Put dead letters (`letters`, oldest first, as `list_booking_dead_letters` gives them)
    back among the pending events, due at `now_ms`, in one script call: each is replayed or
    refused on its own, and a refused one stays in the list with nothing of it stored."""
    if not letters:
        return []
    keys = CalendarKeys(prefix)
    args: list[str | bytes | int] = [now_ms]
    for letter in letters:
        # The body as it was sent (orjson wrote it, and reads it back the same).
        args += [letter.raw, orjson.dumps(letter.body) if letter.body is not None else b""]
    answer = await REPLAY_BOOKING_HOOK_DEAD(
        client,
        [
            keys.hooks_dead,
            keys.hooks_body,
            keys.hooks_due,
            keys.hooks_attempts,
            # One key of the calendar's hash tag each (an unreadable letter's is never read).
            *(keys.booking(letter.booking_id) for letter in letters),
        ],
        args,
    )
    return [
        BookingReplayResult(raw.decode() if isinstance(raw, bytes) else str(raw)) for raw in answer
    ]


# Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
async def drop_booking_dead_letter(client: Any, prefix: str, letter: BookingDeadLetter) -> bool:
    """Delete the dead letter for good. False: it was already gone."""
    return bool(await client.lrem(CalendarKeys(prefix).hooks_dead, 1, letter.raw))
