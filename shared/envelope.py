"""The queued record: what crosses from the gateway to the workers.

A record is one line of compact JSON (the routing header) followed by a newline and the raw
webhook body, byte for byte as WAHA signed it. Keeping the body raw means the gateway never
re-serialises it (no cost on the hot path, no change to accents or emoji) and the worker can
still prove what WAHA sent.

    {"v":1,"id":"evt_…","session":"default","chat":"5511…@c.us","event":"message","at":1763396580579}\n
    {"id":"evt_…","event":"message",…}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shared.events import RoutedEvent, load_body

RECORD_VERSION = 1


class InvalidRecord(ValueError):
    """A queued record that cannot be decoded (terminal: dead-letter it)."""


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    id: str
    session: str
    chat_id: str
    event: str
    received_at_ms: int
    body: bytes

    def document(self) -> dict[str, Any]:
        """The WAHA event as a dict (parsed on demand: the body is kept raw)."""
        value = load_body(self.body)
        if not isinstance(value, dict):
            raise InvalidRecord("queued body is not a JSON object")
        return value


def encode_record(routed: RoutedEvent, body: bytes, received_at_ms: int) -> bytes:
    header = orjson.dumps(
        {
            "v": RECORD_VERSION,
            "id": routed.event_id,
            "session": routed.session,
            "chat": routed.chat_id,
            "event": routed.event,
            "at": received_at_ms,
        }
    )
    return header + b"\n" + body


def decode_record(record: bytes) -> QueuedEvent:
    header_bytes, sep, body = record.partition(b"\n")
    if not sep:
        raise InvalidRecord("record has no header line")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"record header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("v") != RECORD_VERSION:
        raise InvalidRecord(f"unsupported record version: {header!r:.80}")
    try:
        return QueuedEvent(
            id=str(header["id"]),
            session=str(header["session"]),
            chat_id=str(header["chat"]),
            event=str(header["event"]),
            received_at_ms=int(header["at"]),
            body=body,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRecord(f"record header is incomplete: {exc}") from exc
