"""WAHA's JSON shapes (GOWS engine, WAHA 2025.11), key for key and in WAHA's key order.

The order matters: WAHA serialises with `JSON.stringify`, which keeps insertion order, and
the HMAC covers those exact bytes. References: tests/fixtures/waha/*.json and WAHA's
`populateSessionInfo` (envelope), GOWS `toWAMessage` (message), `receiptToMessageAck` (ack),
`messageResponse` (sendText's answer).
"""

from __future__ import annotations

from datetime import UTC, datetime
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
    media: dict[str, Any] | None = None,
    location: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A 1:1 message. GOWS puts the chat in `from` for both directions and `to` only in
    groups; our own sends through the API have `source: api`, ack SERVER; a customer's message
    arrives with `source: app`, ack DEVICE. A text message has no `_data` (as in the 2025.11
    capture, message-text.json); a media or location message carries whatsmeow's event as
    `_data` (`gows_data`), where only the raw message tells a voice note from an audio file."""
    ack = ACK_SERVER if from_me else ACK_DEVICE
    payload = {
        "id": message_id,
        "timestamp": timestamp_s,
        "from": chat_id,
        "fromMe": from_me,
        "source": "api" if from_me else "app",
        "body": body,
        "to": None,
        "participant": None,
        "hasMedia": media is not None,
        "media": media,
        "ack": ack,
        "location": location,
        "vCards": None,
        "ackName": ACK_NAMES[ack],
        "replyTo": reply_to,
    }
    if data is not None:
        payload["_data"] = data
    return payload


# --- media ---------------------------------------------------------------------------------
# A customer's file, by kind: the raw message's key (whatsmeow's proto names, as NOWEB's) and
# whatsmeow's `Info.MediaType`. A voice note is an audioMessage with `PTT: true`.
MEDIA_KINDS = ("image", "video", "audio", "voice", "document", "sticker")
_RAW_KEY = {
    "image": "imageMessage",
    "video": "videoMessage",
    "audio": "audioMessage",
    "voice": "audioMessage",
    "document": "documentMessage",
    "sticker": "stickerMessage",
}
_MEDIA_TYPE = {"voice": "ptt"}  # the others are named as the kind
# Kinds whose WhatsApp message carries a caption (WAHA's `body`).
CAPTIONED = frozenset({"image", "video", "document"})


def media_field(url: str, mimetype: str, filename: str | None) -> dict[str, Any]:
    """`payload.media` once WAHA downloaded the file: where WAHA serves it (behind its API
    key), its type, the sender's file name (WhatsApp keeps one for documents only)."""
    return {"url": url, "mimetype": mimetype, "filename": filename, "error": None}


def raw_media_message(
    kind: str,
    *,
    mimetype: str,
    size: int,
    caption: str,
    filename: str | None,
    timestamp_s: int,
) -> dict[str, Any]:
    """`_data.Message` of a customer's file as GOWS passes whatsmeow's message on (field
    names as in message-media-voice.json: `URL`, `PTT`, the rest camelCase). The media URL is
    WhatsApp's encrypted copy, which wsm never reads (WAHA has already downloaded it)."""
    node: dict[str, Any] = {
        "URL": f"https://mmg.whatsapp.net/v/t62.7117-24/{kind}.enc",
        "mimetype": mimetype,
        "fileLength": size,
    }
    if kind in ("audio", "voice"):
        # WhatsApp's voice notes are Opus at about 16 kbit/s: a length in seconds that is
        # plausible without decoding the file.
        node["seconds"] = max(1, size // 2000)
        node["PTT"] = kind == "voice"
    if kind == "document":
        node["fileName"] = filename or ""
        node["title"] = (filename or "").rpartition(".")[0] or filename or ""
    if kind in CAPTIONED and caption:
        node["caption"] = caption
    node["mediaKeyTimestamp"] = timestamp_s
    return {_RAW_KEY[kind]: node}


def location_field(latitude: float, longitude: float, name: str) -> dict[str, Any]:
    """`payload.location`: WAHA's WALocation (same keys as message-media-location.json)."""
    return {
        "latitude": latitude,
        "longitude": longitude,
        "live": False,
        "name": name or None,
        "address": None,
        "url": None,
        "description": None,
        "thumbnail": None,
    }


def raw_location_message(latitude: float, longitude: float, name: str) -> dict[str, Any]:
    node: dict[str, Any] = {"degreesLatitude": latitude, "degreesLongitude": longitude}
    if name:
        node["name"] = name
    return {"locationMessage": node}


def gows_data(
    *, chat_id: str, wa_id: str, timestamp_s: int, media_type: str, message: dict[str, Any]
) -> dict[str, Any]:
    """GOWS's `_data` of a customer's message: whatsmeow's `Info` and `Message` (the shape of
    message-media-voice.json)."""
    jid = to_jid(chat_id)
    return {
        "Info": {
            "Chat": jid,
            "Sender": jid,
            "IsFromMe": False,
            "IsGroup": False,
            "ID": wa_id,
            "Type": "media",
            "MediaType": _MEDIA_TYPE.get(media_type, media_type),
            "PushName": "",
            "Timestamp": datetime.fromtimestamp(timestamp_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "Message": message,
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
