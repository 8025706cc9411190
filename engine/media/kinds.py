"""What kind of message a WAHA `message` payload is: text, image, video, audio, voice (a voice
note, WhatsApp's "ptt"), document, sticker, location or contact (a vCard).

WAHA's own fields come first, because they are the same on every engine: `media`
(`{url, mimetype, filename, error}`, or null when WAHA was told not to download), `location`
and `vCards`. The engine's raw message in `_data` only tells apart what those cannot: a voice
note from an audio file, a sticker from an image. Its shape depends on the engine:

- NOWEB (Baileys): `_data.message.<type>Message`, e.g. `audioMessage.ptt`,
  `locationMessage.degreesLatitude`, `contactMessage.vcard`;
- GOWS (whatsmeow): `_data.Message.<type>Message`, with Go's field names (`PTT`, `URL`);
- WEBJS (whatsapp-web.js): `_data.type` (`ptt`, `image`, `location`, `vcard`, ...) and
  `_data.lat` / `_data.lng`.

Nothing here raises on a payload of unexpected shape: what cannot be read is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Every kind a history item can have; `text` is anything that is not one of the others.
KINDS = ("text", "image", "video", "audio", "voice", "document", "sticker", "location", "contact")
# Kinds whose bytes are fetched and stored.
MEDIA_KINDS = frozenset({"image", "video", "audio", "voice", "document", "sticker"})
# Kinds whose text (WAHA's `body`) is the sender's caption.
CAPTIONED = frozenset({"image", "video", "document"})

# Why a media message has no bytes to fetch.
NOT_DOWNLOADED = "not_downloaded"  # hasMedia true, media null: WAHA was told not to download
WAHA_ERROR = "waha_error"  # WAHA tried and reported an error in media.error
NO_URL = "no_url"  # media without a URL

# The raw message's key -> our kind (NOWEB and GOWS name them alike).
_RAW_KINDS = {
    "imageMessage": "image",
    "videoMessage": "video",
    "ptvMessage": "video",  # a round "video note"
    "audioMessage": "audio",  # voice when ptt
    "documentMessage": "document",
    "documentWithCaptionMessage": "document",
    "stickerMessage": "sticker",
    "locationMessage": "location",
    "liveLocationMessage": "location",
    "contactMessage": "contact",
    "contactsArrayMessage": "contact",
}
# whatsapp-web.js's `type` -> our kind.
_WEBJS_KINDS = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "ptt": "voice",
    "document": "document",
    "sticker": "sticker",
    "location": "location",
    "vcard": "contact",
    "multi_vcard": "contact",
}
# Wrappers around the real content (view once, disappearing messages, captioned documents).
_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
)


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    name: str = ""

    def public(self) -> dict[str, Any]:
        return {"latitude": self.latitude, "longitude": self.longitude, "name": self.name}


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    vcard: str

    @property
    def phone(self) -> str:
        """The card's first telephone number as written in it ("+55 11 98765-0099")."""
        return _vcard_value(self.vcard, "TEL")

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "phone": self.phone, "vcard": self.vcard}


@dataclass(frozen=True, slots=True)
class MediaRef:
    """A non-text message as WAHA described it: the kind, the caption, and where its bytes are
    (`downloaded`: WAHA has them at `url`; otherwise `reason` says why not)."""

    kind: str
    caption: str = ""
    url: str | None = None
    mimetype: str = ""
    filename: str | None = None
    error: str | None = None
    location: Location | None = None
    contact: Contact | None = None
    downloaded: bool = False
    reason: str | None = None

    @property
    def is_media(self) -> bool:
        return self.kind in MEDIA_KINDS


def describe(payload: Mapping[str, Any]) -> MediaRef | None:
    """The message's kind and media, or None for a plain text message."""
    raw = _raw_message(payload)
    webjs = _webjs(payload)
    raw_kind = next((_RAW_KINDS[k] for k in raw if k in _RAW_KINDS), None)
    webjs_kind = _WEBJS_KINDS.get(str(webjs.get("type") or ""))

    location = _location(payload, raw, webjs)
    if location is not None:
        return MediaRef(kind="location", location=location)
    contact = _contact(payload, raw, webjs)
    if contact is not None:
        return MediaRef(kind="contact", contact=contact)

    media = payload.get("media")
    media = media if isinstance(media, Mapping) else None
    kind = raw_kind if raw_kind in MEDIA_KINDS else webjs_kind
    if kind not in MEDIA_KINDS:
        if payload.get("hasMedia") is not True and media is None:
            return None
        kind = _kind_of_mimetype(_text(media.get("mimetype")) if media else "")
    if kind == "audio" and (_ptt(raw) or webjs_kind == "voice"):
        kind = "voice"
    assert kind is not None
    caption = _text(payload.get("body")) if kind in CAPTIONED else ""
    if media is None:
        return MediaRef(kind=kind, caption=caption, reason=NOT_DOWNLOADED)
    url = _text(media.get("url")) or None
    error = media.get("error")
    error_text = None if error in (None, "", False) else _text(error) or str(error)
    reason = WAHA_ERROR if error_text else (NO_URL if url is None else None)
    filename = _text(media.get("filename")) or _raw_filename(raw) or None
    return MediaRef(
        kind=kind,
        caption=caption,
        url=url,
        mimetype=_text(media.get("mimetype")) or _raw_mimetype(raw),
        filename=filename,
        error=error_text,
        downloaded=reason is None,
        reason=reason,
    )


# What WhatsApp tells as a message although no one wrote it: a call, the protocol's own messages
# (a deletion, an edit or a reaction on older engines, key distribution) and WEBJS's notices.
# NOWEB and GOWS: every key of the raw message is one of these (`messageContextInfo` rides along
# with any message); WEBJS: `_data.type`.
_RAW_NOTICES = frozenset({
    "call", "protocolMessage", "senderKeyDistributionMessage", "messageContextInfo",
    "reactionMessage", "encReactionMessage", "editedMessage", "keepInChatMessage",
    "pinInChatMessage",
})  # fmt: skip
_WEBJS_NOTICES = frozenset({
    "call_log", "e2e_notification", "notification", "notification_template", "gp2", "protocol",
    "revoked", "ciphertext", "broadcast_notification", "pinned_message", "reaction",
})  # fmt: skip


def is_notice(payload: Mapping[str, Any]) -> bool:
    """Whether a `message` payload is one of WhatsApp's notices rather than something a person
    sent (a call on NOWEB comes as a `message` without a body: devlikeapro/waha#840). Content
    this does not know (an order, a poll) is not a notice: the customer did send something."""
    raw = _raw_message(payload)
    if raw:
        return all(key in _RAW_NOTICES for key in raw)
    return _webjs(payload).get("type") in _WEBJS_NOTICES


# --- reading the engines' shapes ---------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _raw_message(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The engine's message content (NOWEB `message`, GOWS `Message`), unwrapped."""
    data = payload.get("_data")
    if not isinstance(data, Mapping):
        return {}
    message = data.get("message") if "message" in data else data.get("Message")
    if not isinstance(message, Mapping):
        return {}
    for _ in range(3):  # wrappers nest at most a couple deep
        inner = next((message[w] for w in _WRAPPERS if isinstance(message.get(w), Mapping)), None)
        if inner is None:
            break
        content = inner.get("message") if "message" in inner else inner.get("Message")
        if not isinstance(content, Mapping):
            break
        message = content
    return message


def _webjs(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    data = payload.get("_data")
    return data if isinstance(data, Mapping) and isinstance(data.get("type"), str) else {}


def _ptt(raw: Mapping[str, Any]) -> bool:
    audio = raw.get("audioMessage")
    return isinstance(audio, Mapping) and (audio.get("ptt") is True or audio.get("PTT") is True)


def _raw_filename(raw: Mapping[str, Any]) -> str:
    document = raw.get("documentMessage")
    if not isinstance(document, Mapping):
        return ""
    return _text(document.get("fileName")) or _text(document.get("FileName"))


def _raw_mimetype(raw: Mapping[str, Any]) -> str:
    for key, value in raw.items():
        if key in _RAW_KINDS and isinstance(value, Mapping):
            return _text(value.get("mimetype")) or _text(value.get("Mimetype"))
    return ""


def _kind_of_mimetype(mimetype: str) -> str:
    main = mimetype.split(";")[0].strip().lower()
    if main == "image/webp":
        return "sticker"
    for prefix, kind in (("image/", "image"), ("video/", "video"), ("audio/", "audio")):
        if main.startswith(prefix):
            return kind
    return "document"


def _number(value: Any) -> float | None:
    # WAHA sends coordinates as numbers on some engines and as strings on others.
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if -180.0 <= number <= 180.0 else None


def _location(
    payload: Mapping[str, Any], raw: Mapping[str, Any], webjs: Mapping[str, Any]
) -> Location | None:
    candidates: list[tuple[Any, Any, Any]] = []
    top = payload.get("location")
    if isinstance(top, Mapping):
        name = _text(top.get("name")) or _text(top.get("description")) or _text(top.get("address"))
        candidates.append((top.get("latitude"), top.get("longitude"), name))
    for key in ("locationMessage", "liveLocationMessage"):
        node = raw.get(key)
        if isinstance(node, Mapping):
            lat = node.get("degreesLatitude", node.get("DegreesLatitude"))
            lng = node.get("degreesLongitude", node.get("DegreesLongitude"))
            name = _text(node.get("name")) or _text(node.get("address")) or _text(node.get("Name"))
            candidates.append((lat, lng, name))
    if webjs.get("type") == "location":
        candidates.append((webjs.get("lat"), webjs.get("lng"), _text(webjs.get("loc"))))
    for lat, lng, name in candidates:
        latitude, longitude = _number(lat), _number(lng)
        if latitude is not None and longitude is not None and abs(latitude) <= 90:
            return Location(latitude, longitude, name.split("\n")[0].strip())
    return None


def _vcard_name(vcard: str) -> str:
    return _vcard_value(vcard, "FN")


def _vcard_value(vcard: str, name: str) -> str:
    """The value of a vCard's first `name` line (its parameters, as in `TEL;waid=…:`, skipped)."""
    for line in vcard.splitlines():
        key, _, value = line.partition(":")
        if key.split(";")[0].strip().upper() == name:
            return value.strip()
    return ""


def _contact(
    payload: Mapping[str, Any], raw: Mapping[str, Any], webjs: Mapping[str, Any]
) -> Contact | None:
    cards = payload.get("vCards")
    if isinstance(cards, list):
        first = next((c for c in cards if isinstance(c, str) and "BEGIN:VCARD" in c), None)
        if first is not None:
            return Contact(_vcard_name(first), first)
    node = raw.get("contactMessage")
    if isinstance(node, Mapping):
        vcard = _text(node.get("vcard")) or _text(node.get("Vcard"))
        name = _text(node.get("displayName")) or _text(node.get("DisplayName"))
        if vcard or name:
            return Contact(name or _vcard_name(vcard), vcard)
    many = raw.get("contactsArrayMessage")
    if isinstance(many, Mapping) and isinstance(many.get("contacts"), list):
        for item in many["contacts"]:
            if isinstance(item, Mapping) and _text(item.get("vcard")):
                vcard = _text(item.get("vcard"))
                return Contact(_text(item.get("displayName")) or _vcard_name(vcard), vcard)
    if webjs.get("type") in ("vcard", "multi_vcard"):
        vcard = _text(payload.get("body")) or _text(webjs.get("body"))
        if "BEGIN:VCARD" in vcard:
            return Contact(_vcard_name(vcard), vcard)
    return None
