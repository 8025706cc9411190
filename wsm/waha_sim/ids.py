"""Identifiers as WAHA (GOWS engine) writes them.

- Envelope ids are `evt_` + a lower-case ULID; `X-Webhook-Request-Id` is an upper-case ULID.
  Both carry the same millisecond as the envelope `timestamp` (see tests/fixtures/waha's
  message-text.json and its headers).
- Message ids are `<fromMe>_<chat id in @c.us form>_<WhatsApp id>`; WhatsApp ids of messages
  sent from WhatsApp Web / whatsmeow are `3EB0` + 18 upper-case hex digits, ids of messages
  typed on a phone are 32 upper-case hex digits.
"""

from __future__ import annotations

import os

from shared.clock import now_ms

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(timestamp_ms: int | None = None) -> str:
    """A ULID: 48 bits of milliseconds and 80 random bits, Crockford base32, 26 characters."""
    ms = now_ms() if timestamp_ms is None else timestamp_ms
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def event_id(timestamp_ms: int) -> str:
    return "evt_" + ulid(timestamp_ms).lower()


def request_id(timestamp_ms: int) -> str:
    return ulid(timestamp_ms)


def outgoing_wa_id() -> str:
    """The WhatsApp id of a message we send through the API (whatsmeow's format)."""
    return "3EB0" + os.urandom(9).hex().upper()


def phone_wa_id() -> str:
    """The WhatsApp id of a message a customer typed on their phone."""
    return os.urandom(16).hex().upper()


def ensure_suffix(chat_id: str) -> str:
    """WAHA's `ensureSuffix`: a bare phone number means a `@c.us` chat."""
    return chat_id if "@" in chat_id else chat_id + "@c.us"


def to_cus(jid: str) -> str:
    """WAHA's `toCusFormat`: `5511…:22@s.whatsapp.net` -> `5511…@c.us`; others unchanged."""
    user, _, server = jid.partition("@")
    if server == "s.whatsapp.net":
        return user.split(":", 1)[0] + "@c.us"
    return jid


def to_jid(chat_id: str) -> str:
    """The whatsmeow form of a chat id (`@c.us` -> `@s.whatsapp.net`), as in receipts' `_data`."""
    user, _, server = chat_id.partition("@")
    return f"{user}@s.whatsapp.net" if server == "c.us" else chat_id


def normalize_chat(chat_id: str) -> str:
    return to_cus(ensure_suffix(chat_id.strip()))


def message_id(from_me: bool, chat_id: str, wa_id: str) -> str:
    return f"{'true' if from_me else 'false'}_{chat_id}_{wa_id}"


def wa_id_of(serialized: str) -> str:
    """The bare WhatsApp id inside a serialized message id (`true_<chat>_<ID>` -> `<ID>`)."""
    parts = serialized.split("_")
    return parts[2] if len(parts) >= 3 else serialized
