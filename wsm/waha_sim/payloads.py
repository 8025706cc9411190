"""WAHA's JSON shapes (GOWS engine, WAHA 2025.11), key for key and in WAHA's key order.

The order matters: WAHA serialises with `JSON.stringify`, which keeps insertion order, and
the HMAC covers those exact bytes. References: tests/fixtures/waha/*.json and WAHA's
`populateSessionInfo` (envelope), GOWS `toWAMessage` (message), `receiptToMessageAck` (ack),
`messageResponse` (sendText's answer).
"""

from __future__ import annotations

from typing import Any

import orjson

from wsm.waha_sim.config import SimConfig
from wsm.waha_sim.ids import event_id, to_jid, wa_id_of

# WAHA's ack levels (WAMessageAck).
ACK_NAMES = {-1: "ERROR", 0: "PENDING", 1: "SERVER", 2: "DEVICE", 3: "READ", 4: "PLAYED"}
ACK_SERVER, ACK_DEVICE, ACK_READ = 1, 2, 3
# The whatsmeow receipt type behind each ack WAHA derives from a receipt.
_RECEIPT_TYPE = {ACK_DEVICE: "", ACK_READ: "read", 4: "played"}


def compact(document: Any) -> bytes:
    """JSON.stringify's bytes: no spaces, non-ASCII as raw UTF-8, insertion order kept."""
    return orjson.dumps(document)


def me_info(config: SimConfig, phone: str | None = None) -> dict[str, Any]:
    number = phone or config.me_phone
    return {
        "id": f"{number}@c.us",
        "pushName": config.me_push_name,
        "lid": config.me_lid,
        "jid": f"{number}:22@s.whatsapp.net",
    }


def envelope(
    config: SimConfig,
    *,
    event: str,
    session: str,
    me: dict[str, Any] | None,
    payload: dict[str, Any],
    timestamp_ms: int,
) -> dict[str, Any]:
    return {
        "id": event_id(timestamp_ms),
        "timestamp": timestamp_ms,
        "event": event,
        "session": session,
        "metadata": dict(config.metadata),
        "me": me,
        "payload": payload,
        "engine": config.engine,
        "environment": {"version": config.waha_version, "engine": config.engine},
    }


def reenvelope(original: dict[str, Any], timestamp_ms: int) -> dict[str, Any]:
    """The same event under a new envelope id, as WAHA has been seen to send a message twice."""
    copy = dict(original)
    copy["id"] = event_id(timestamp_ms)
    copy["timestamp"] = timestamp_ms
    return copy


def message_payload(
    *,
    message_id: str,
    chat_id: str,
    body: str,
    timestamp_s: int,
    from_me: bool,
    reply_to: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A 1:1 text message. GOWS puts the chat in `from` for both directions and `to` only in
    groups; our own sends through the API have `source: api`, ack SERVER; a customer's message
    arrives with `source: app`, ack DEVICE."""
    ack = ACK_SERVER if from_me else ACK_DEVICE
    return {
        "id": message_id,
        "timestamp": timestamp_s,
        "from": chat_id,
        "fromMe": from_me,
        "source": "api" if from_me else "app",
        "body": body,
        "to": None,
        "participant": None,
        "hasMedia": False,
        "media": None,
        "ack": ack,
        "location": None,
        "vCards": None,
        "ackName": ACK_NAMES[ack],
        "replyTo": reply_to,
    }


def reply_to_payload(quoted_id: str, chat_id: str, body: str | None) -> dict[str, Any]:
    """GOWS `extractReplyTo`: the quoted message's bare id, its author and body."""
    return {
        "id": wa_id_of(quoted_id),
        "participant": chat_id,
        "body": body,
        "hasMedia": False,
        "media": None,
        "_data": {"conversation": body} if body is not None else {},
    }


def ack_payload(*, message_id: str, chat_id: str, ack: int) -> dict[str, Any]:
    """GOWS `receiptToMessageAck` for a 1:1 receipt of one of our messages; `_data` is
    whatsmeow's receipt, from the recipient's side (hence `IsFromMe: false`)."""
    jid = to_jid(chat_id)
    return {
        "id": message_id,
        "from": chat_id,
        "to": None,
        "participant": None,
        "fromMe": True,
        "ack": ack,
        "ackName": ACK_NAMES[ack],
        "_data": {
            "Chat": jid,
            "Sender": jid,
            "IsFromMe": False,
            "IsGroup": False,
            "AddressingMode": "",
            "SenderAlt": "",
            "RecipientAlt": "",
            "BroadcastListOwner": "",
            "BroadcastRecipients": None,
            "MessageIDs": [wa_id_of(message_id)],
            "Type": _RECEIPT_TYPE[ack],
            "MessageSender": "",
        },
    }


def session_status_payload(status: str, history: list[tuple[str, int]]) -> dict[str, Any]:
    """`statuses` holds the last three (status, ms) pairs; `data` is null for these statuses."""
    return {
        "status": status,
        "statuses": [{"status": s, "timestamp": ts} for s, ts in history[-3:]],
        "data": None,
    }


def send_text_response(message_id: str, text: str) -> dict[str, Any]:
    """GOWS `messageResponse`: the serialized id and the WhatsApp message as `_data`."""
    return {"id": message_id, "_data": {"extendedTextMessage": {"text": text}}}
