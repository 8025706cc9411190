"""Building webhook requests exactly as WAHA does: compact JSON, raw UTF-8, HMAC-SHA512 of the
bytes sent, and WAHA's `X-Webhook-*` headers."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

# Real WAHA bodies, with their provenance in the folder's README. Inside the repository: a clone
# with nothing beside it must pass its tests.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "waha"


def compact(document: Any) -> bytes:
    """JSON.stringify: no spaces, non-ASCII as raw UTF-8."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def sign(body: bytes, key: str | bytes) -> str:
    key_bytes = key.encode() if isinstance(key, str) else key
    return hmac.new(key_bytes, body, hashlib.sha512).hexdigest()


def webhook_headers(body: bytes, key: str | bytes | None) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "user-agent": "WAHA/2025.11.2",
        "x-webhook-request-id": uuid.uuid4().hex.upper()[:26],
        "x-webhook-timestamp": str(int(time.time() * 1000)),
    }
    if key is not None:
        headers["x-webhook-hmac"] = sign(body, key)
        headers["x-webhook-hmac-algorithm"] = "sha512"
    return headers


def load_fixture(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((FIXTURES / name).read_text("utf-8"))
    return value


def fixture_names() -> list[str]:
    return sorted(
        p.name
        for p in FIXTURES.glob("*.json")
        if not p.name.endswith(".headers.json") and p.name != "hmac-test-vector.json"
    )


def text_message(
    chat: str,
    text: str,
    *,
    session: str = "default",
    message_id: str | None = None,
    event_id: str | None = None,
    event: str = "message",
) -> dict[str, Any]:
    """A `message` event shaped like message-text.json (WAHA 2025.11, GOWS)."""
    now = time.time()
    wa_id = message_id or uuid.uuid4().hex.upper()
    return {
        "id": event_id or "evt_" + uuid.uuid4().hex[:26],
        "timestamp": int(now * 1000),
        "event": event,
        "session": session,
        "metadata": {},
        "me": {"id": "5511930000002@c.us", "pushName": "Clínica", "lid": "200000000000002@lid"},
        "payload": {
            "id": f"false_{chat}_{wa_id}",
            "timestamp": int(now),
            "from": chat,
            "fromMe": False,
            "source": "app",
            "body": text,
            "to": None,
            "participant": None,
            "hasMedia": False,
            "media": None,
            "ack": 2,
            "location": None,
            "vCards": None,
            "ackName": "DEVICE",
            "replyTo": None,
        },
        "engine": "GOWS",
        "environment": {"version": "2025.11.2", "engine": "GOWS"},
    }


def from_me(chat: str, text: str, message_id: str) -> dict[str, Any]:
    """A `message.any` of a message sent to `chat` from the business's phone (fromMe, ack 1:
    SERVER), shaped like text_message's."""
    document = text_message(chat, text, event="message.any")
    document["payload"].update(
        {"id": f"true_{chat}_{message_id}", "fromMe": True, "from": chat, "to": chat, "ack": 1}
    )
    return document
