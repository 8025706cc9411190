"""What wsm needs to know about a WAHA webhook body before it is queued.

The gateway routes: it decides whether an event is used at all, which conversation it belongs
to (so that conversation stays in order), and which ids identify a repeat. Everything else
about the event is the worker's business and stays in the raw body, with one exception: what
an event says about one of the business's own messages (`Receipt`: an ack's status, or the
message's echo), which the gateway settles at once when that message is in the history already
(shared/enqueue.py).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from shared.delivery_status import status_for_ack

# Events the product acts on. Anything else answers 200 "ignored": a 4xx would make WAHA retry.
QUEUED_EVENTS = frozenset(
    {
        "message",
        "message.any",
        "message.ack",
        "message.ack.group",
        "message.reaction",
        "message.revoked",
        "message.edited",
        "session.status",
    }
)

# Events that carry a WhatsApp message id which WAHA has been seen to deliver under two
# different envelope ids. Acks are keyed by (message id, ack level): a READ ack repeats the
# message id of the DEVICE ack before it and must not be taken for a duplicate.
_MESSAGE_EVENTS = QUEUED_EVENTS - {"session.status"}

# A lone UTF-16 surrogate escape ("\ud83d" with no partner): valid JSON as WAHA's Node writes it
# (a WhatsApp text cut inside an emoji), but orjson refuses it, and no Python str holding it
# can be written to Redis (UTF-8). A pair (\ud83d\ude00) is left alone.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def load_body(body: bytes) -> Any:
    """A WAHA body parsed. A lone surrogate escape is read as U+FFFD (the replacement
    character) instead of refusing the event: refused, WAHA would retry it and then drop it.
    Raises orjson.JSONDecodeError for anything else that is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        repaired = _LONE_SURROGATE.sub(rb"\\ufffd", body)
        if repaired == body:
            raise
        return orjson.loads(repaired)


_ACK_EVENTS = frozenset({"message.ack", "message.ack.group"})
# `message` and `message.any` are one WhatsApp message told twice (WAHA sends both when it is
# subscribed to both): one dedupe key for the pair, so the twin that arrives second is dropped
# at the door, whichever it is and whatever WAHA is subscribed to.
_MESSAGE_TWINS = frozenset({"message", "message.any"})

# Conversation of events that belong to the session rather than to one chat (session.status).
SESSION_CHAT = "_session"
# The chat of WhatsApp statuses: the contacts' posts and the business's own.
STATUS_BROADCAST = "status@broadcast"

# WAHA message ids look like `<fromMe>_<chat id>_<id>[_<participant>]`.
_MESSAGE_ID = re.compile(r"^(?:true|false)_([^_]+@[^_]+)_")


class InvalidEvent(ValueError):
    """The body is JSON but not a WAHA event (terminal: answer 400, store nothing)."""


@dataclass(frozen=True, slots=True)
class RoutedEvent:
    """The routing facts of one WAHA event; the body itself travels untouched."""

    # The event the record is queued as: WAHA's, except that a `message`/`message.any` twin is
    # named for what it is (step_event), since only the first of the pair is queued.
    event: str
    session: str
    chat_id: str
    event_id: str
    # Second dedupe identity for message events (None for events without a message id).
    message_key: str | None
    # A receipt's message and status (an ack, or our own message's echo), for the gateway to
    # settle at once when that message is in the history already (shared/enqueue.py); None for
    # every other event.
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """WhatsApp telling us about one of the business's own messages: a delivery receipt
    (`message.ack`, `message.ack.group`: the status it reached) or the message itself told back
    (`message` / `message.any` with `fromMe`: the echo of our send, status ""). `message` is its
    WhatsApp id in the short form the history knows it by."""

    message: str
    status: str


def route_event(document: Any, raw_body: bytes) -> RoutedEvent | None:
    """Route a parsed webhook body. None means: a valid event the product does not use.

    Raises InvalidEvent when the document is not an object with a string `event`, or when an
    event the product uses has no `session`, no `payload` object, or (but `session.status`) a
    payload that names no chat: queued, it would be handled as the session's (`SESSION_CHAT`).
    """
    if not isinstance(document, dict):
        raise InvalidEvent("body must be a JSON object")
    event = document.get("event")
    if not isinstance(event, str) or not event:
        raise InvalidEvent("body must have a string 'event'")
    if event not in QUEUED_EVENTS:
        return None
    session = document.get("session")
    if not isinstance(session, str) or not session:
        raise InvalidEvent("body must have a string 'session'")
    if "|" in session:
        raise InvalidEvent("'session' must not contain '|'")
    payload = document.get("payload")
    if not isinstance(payload, dict):
        raise InvalidEvent("body must have an object 'payload'")
    chat_id = chat_of(event, payload)
    if chat_id == SESSION_CHAT and event != "session.status":
        raise InvalidEvent("'payload' names no chat")
    if event in _ACK_EVENTS and chat_id == STATUS_BROADCAST:
        # The receipts of the business's own status posts: one per contact who views one. No
        # conversation keeps them, so they are not queued for a worker to drop.
        return None
    envelope_id = document.get("id")
    # Older WAHA versions send no envelope id; a retry repeats the same bytes, so a hash of the
    # body is a faithful substitute.
    event_id = (
        envelope_id
        if isinstance(envelope_id, str) and envelope_id
        else "sha256_" + hashlib.sha256(raw_body).hexdigest()[:32]
    )
    return RoutedEvent(
        event=step_event(event, payload),
        session=session,
        chat_id=chat_id,
        event_id=event_id,
        message_key=message_key_of(event, payload),
        receipt=receipt_of(event, payload),
    )


def chat_of(event: str, payload: dict[str, Any]) -> str:
    """The chat an event belongs to: the other party of a 1:1 chat, or the group."""
    if event == "session.status":
        return SESSION_CHAT
    if event == "message.revoked":
        # WAHA: {"before": message|null, "after": message|null, "revokedMessageId": ...}
        for side in ("after", "before"):
            inner = payload.get(side)
            if isinstance(inner, dict):
                return chat_of("message", inner)
    message_id = payload.get("id")
    if isinstance(message_id, str):
        match = _MESSAGE_ID.match(message_id)
        if match:
            return match.group(1)
    from_me = payload.get("fromMe") is True
    for field in ("to", "from") if from_me else ("from", "to"):
        value = payload.get(field)
        if isinstance(value, str) and value and "|" not in value:
            return value
    return SESSION_CHAT


def step_event(event: str, payload: dict[str, Any]) -> str:
    """The event a twin is queued as (the record's header; the body stays WAHA's): whichever of
    `message` / `message.any` arrives first is the one kept, so the name follows what the
    message is, not which twin won. Someone else's message is `message` (the customer's turn),
    one of ours or the business phone's (`fromMe`) is `message.any` (echo or business reply)."""
    if event in _MESSAGE_TWINS:
        return "message.any" if payload.get("fromMe") is True else "message"
    return event


def receipt_of(event: str, payload: dict[str, Any]) -> Receipt | None:
    """The receipt an event carries: an ack's, or a `fromMe` message's (its echo). None for
    other events, and for one without a message id or (an ack) a known ack level: the engine's
    turn handles those as they are."""
    message_id = payload.get("id")
    if not isinstance(message_id, str) or not message_id:
        return None
    if event in _ACK_EVENTS:
        status = status_for_ack(payload.get("ack"))
        return None if status is None else Receipt(short_message_id(message_id), status)
    if event in _MESSAGE_TWINS and payload.get("fromMe") is True:
        return Receipt(short_message_id(message_id), "")
    return None


def message_key_of(event: str, payload: dict[str, Any]) -> str | None:
    if event not in _MESSAGE_EVENTS:
        return None
    message_id = payload.get("id")
    if not isinstance(message_id, str) or not message_id:
        return None
    if event in _MESSAGE_TWINS:
        # Event-agnostic: `message:<id>` for both twins (the form erase parses).
        return f"message:{message_id}"
    if event in _ACK_EVENTS:
        participant = payload.get("participant")
        suffix = f":{participant}" if isinstance(participant, str) and participant else ""
        return f"{event}:{message_id}:{payload.get('ack')}{suffix}"
    return f"{event}:{message_id}"


def message_time_ms(payload: dict[str, Any]) -> int:
    """When WhatsApp says a message was sent: its `payload.timestamp` (seconds, a number or a
    numeric string) in ms, or 0 when it is anything else. Older NOWEB versions of WAHA passed
    Baileys' `messageTimestamp` (a number or a protobuf Long, `{"low", "high", "unsigned"}`) on
    as it came (newer ones wrap it in `ensureNumber`); read blindly, such a message failed its
    turn on every try and ended as a dead letter, unanswered."""
    value = payload.get("timestamp")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value) * 1000 if math.isfinite(value) and value > 0 else 0


def short_message_id(message_id: str) -> str:
    """The WhatsApp message id inside WAHA's serialized form.

    `true_5511...@c.us_3EB0ABC` and `false_1203...@g.us_3EB0ABC_5511...@c.us` -> `3EB0ABC`; a bare
    id (as in `message.revoked`'s `revokedMessageId` or GOWS answers) is returned as it is. Our
    own sends, their echoes and later acks name one message by different forms of the same id.
    """
    if message_id.startswith(("true_", "false_")):
        parts = message_id.split("_")
        if len(parts) >= 3:
            return parts[2]
    return message_id
