"""An agent sends a file to a customer: the one function the operator API
(`POST /api/conversations/{session}/{chat_id}/media`, api/routes/media.py) and the console call.

`send_media` checks everything before anything is stored (the conversation exists; this WAHA
session was not found unable to send files; the file is not empty, not above
WSM_MEDIA_MAX_BYTES, of an allowed type whose first bytes match it; the caption's length; an
Idempotency-Key not used before for another file or caption), then
stores the file through the media store (indexed under the conversation, like a customer's),
queues `wsm.agent_media` to the conversation (the same command queue, dedupe and
Idempotency-Key scoping as an agent's text), and waits, for at most
WSM_MEDIA_SEND_WAIT_SECONDS, for the reply's outcome in the history:

- `sent`: WAHA accepted it (sendImage / sendFile / sendVoice, through the outbox, once);
- `waha_plus_required`: WAHA Core refused it as a WAHA Plus feature (422
  AvailableInPlusVersion). Not retried; the session is remembered (engine/sender.py) and the
  next file is refused here at once, with nothing stored;
- `failed`: WAHA refused it for good (dead letter);
- `queued`: no outcome yet (the session is parked, WAHA is slow): it will be sent.

Refusals raise `MediaRefused` (status, error code, detail) before anything is written.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from engine import commands
from engine.commands import CommandQueue
from engine.media.store import MediaLibrary
from engine.sender import WAHA_PLUS_REQUIRED
from shared.keys import (
    WahaSessionKeys,
    conversation_token,
    engine_keys_for,
    keys_for_conversation,
)
from shared.redis_client import RedisClient
from shared.settings import Settings
from shared.text import as_text

PLUS_DETAIL = "this WAHA does not send files (WAHA Plus feature)"
# WhatsApp cuts captions longer than this.
CAPTION_MAX = 1024
FILENAME_MAX = 200
# How often the outcome is looked at while waiting (one HMGET).
POLL_SECONDS = 0.1
# History statuses that mean WAHA accepted the file.
SENT_STATUSES = frozenset({"sent", "server", "device", "read", "played"})

# The types an agent may send, the WAHA call each goes out with (its kind), and the first bytes
# a real file of that type starts with (None: no fixed signature, e.g. plain text). Images are
# the ones WhatsApp shows inline (no SVG: a script inside one would run if opened directly);
# voice notes are ogg/opus, which WhatsApp plays as a voice note.
_PDF = (b"%PDF-",)
_OLE = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",)  # .doc .xls .ppt
_ZIP = (b"PK\x03\x04",)  # .docx .xlsx .pptx .odt .ods
ALLOWED: dict[str, tuple[str, tuple[bytes, ...] | None]] = {
    "image/jpeg": ("image", (b"\xff\xd8\xff",)),
    "image/png": ("image", (b"\x89PNG\r\n\x1a\n",)),
    "image/webp": ("image", (b"RIFF",)),
    "image/gif": ("image", (b"GIF87a", b"GIF89a")),
    "application/pdf": ("document", _PDF),
    "application/msword": ("document", _OLE),
    "application/vnd.ms-excel": ("document", _OLE),
    "application/vnd.ms-powerpoint": ("document", _OLE),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": (
        "document",
        _ZIP,
    ),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ("document", _ZIP),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (
        "document",
        _ZIP,
    ),
    "application/vnd.oasis.opendocument.text": ("document", _ZIP),
    "application/vnd.oasis.opendocument.spreadsheet": ("document", _ZIP),
    "text/plain": ("document", None),
    "text/csv": ("document", None),
    "audio/ogg": ("voice", (b"OggS",)),
}
_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "audio/ogg": "ogg",
    "application/pdf": "pdf",
    "text/plain": "txt",
    "text/csv": "csv",
}
_UNSAFE_NAME = re.compile(r"[^\w.\- ()]+")


class MediaRefused(Exception):
    """The file is not sent, and nothing was stored or queued: `status` is the HTTP answer,
    `error` a stable code, `detail` what to tell the person."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class MediaSent:
    """What became of a file: `status` sent, queued, waha_plus_required or failed."""

    status: str
    command_id: str
    message_id: str  # the reply's id in the history (its `mid`)
    media_id: str
    kind: str
    replayed: bool = False  # a retry with the same Idempotency-Key

    @property
    def http_status(self) -> int:
        return {"sent": 201, "queued": 202, WAHA_PLUS_REQUIRED: 422}.get(self.status, 502)

    def body(self) -> dict[str, Any]:
        if self.status == WAHA_PLUS_REQUIRED:
            return {"error": WAHA_PLUS_REQUIRED, "detail": PLUS_DETAIL, **self._ids()}
        if self.status == "failed":
            return {"error": "send_failed", "detail": "WAHA refused the file", **self._ids()}
        return {"status": self.status, **self._ids()}

    def _ids(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "message_id": self.message_id,
            "media_id": self.media_id,
            "kind": self.kind,
        }


@dataclass(frozen=True, slots=True)
class MediaSendParts:
    """What sending a file needs: the API's and the console's own parts both have them."""

    redis: RedisClient
    queue: CommandQueue
    library: MediaLibrary  # the media store and its index (engine/media/store.py)
    prefix: str
    shards: int
    max_bytes: int
    wait_seconds: float


def media_send_parts(
    settings: Settings, redis: RedisClient, queue: CommandQueue, library: MediaLibrary
) -> MediaSendParts:
    return MediaSendParts(
        redis=redis,
        queue=queue,
        library=library,
        prefix=settings.key_prefix,
        shards=settings.queue_shards,
        max_bytes=settings.media_max_bytes,
        wait_seconds=settings.media_send_wait_seconds,
    )


def base_mimetype(mimetype: str) -> str:
    """`audio/ogg; codecs=opus` -> `audio/ogg`."""
    return mimetype.split(";", 1)[0].strip().lower()


def kind_for(data: bytes, mimetype: str, max_bytes: int) -> str:
    """The kind the file goes out as; MediaRefused when it may not be sent."""
    if not data:
        raise MediaRefused(422, "empty_file", "the file is empty")
    if len(data) > max_bytes:
        raise MediaRefused(413, "file_too_large", f"the file is larger than {max_bytes} bytes")
    allowed = ALLOWED.get(base_mimetype(mimetype))
    if allowed is None:
        raise MediaRefused(
            415,
            "unsupported_type",
            "send an image (jpeg, png, webp, gif), a document (pdf, office, text) "
            "or a voice note (audio/ogg)",
        )
    kind, signatures = allowed
    if signatures is not None and not data.startswith(signatures):
        raise MediaRefused(415, "type_mismatch", f"the file is not a {base_mimetype(mimetype)}")
    if base_mimetype(mimetype) == "image/webp" and data[8:12] != b"WEBP":
        raise MediaRefused(415, "type_mismatch", "the file is not a image/webp")
    return kind


def clean_filename(filename: str | None, mimetype: str) -> str:
    """The name the customer sees (and a download is saved as): no path, no odd characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME.sub("_", name).strip(" .")[:FILENAME_MAX]
    if not name:
        name = "file." + _EXTENSIONS.get(base_mimetype(mimetype), "bin")
    return name


def command_id_for(session: str, chat_id: str, name: str, key: str | None) -> str:
    """The command's id for every operator command (api/routes/conversations.py, files): from
    the client's Idempotency-Key, scoped to the conversation and the action (the same key on
    another conversation is another command), or new. A digest: it carries neither the key nor
    the customer's chat id."""
    if key:
        scoped = f"{conversation_token(session, chat_id)}\n{name}\n{key}"
        return "api:" + hashlib.sha256(scoped.encode()).hexdigest()[:32]
    return f"api:{uuid.uuid4().hex}"


KEY_REUSED = (
    "this Idempotency-Key was used for another request to this conversation (another text or "
    "file): nothing was queued; send a new command with a new key"
)


async def same_request(
    queue: CommandQueue, session: str, chat_id: str, command_id: str, request: dict[str, Any]
) -> bool:
    """Whether a client's key (`command_id`, from command_id_for) names this request: True the
    first time (its digest is kept as long as the command's dedupe marker, next to it) and for
    a retry of the same request; False when the key was first sent with another one (a retry
    would otherwise answer "queued" for a text or file that is never sent). Atomic: of two
    different requests racing with one key, one wins."""
    digest = hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()
    shard = keys_for_conversation(session, chat_id, queue.shards, queue.prefix).shard_keys
    # Named by a digest of the command id, like the command's own marker: no key names the
    # customer (an erase leaves nothing that does).
    named = "req_" + hashlib.sha256(command_id.encode()).hexdigest()[:32]
    marker = shard.seen_event(session, named)
    first = await queue.redis.set(marker, digest, nx=True, get=True, ex=queue.dedupe_ttl_seconds)
    return first is None or as_text(first) == digest


def message_id_for(command_id: str) -> str:
    """The reply's history id, from the command's: a retried request follows the same reply."""
    return hashlib.sha256(f"media\n{command_id}".encode()).hexdigest()[:32]


async def files_refused(redis: RedisClient, session: str, prefix: str) -> bool:
    return bool(await redis.exists(WahaSessionKeys(session, prefix).files_refused))


async def send_media(
    parts: MediaSendParts,
    *,
    session: str,
    chat_id: str,
    agent_id: str,
    agent_name: str | None,
    data: bytes,
    mimetype: str,
    filename: str | None,
    caption: str = "",
    idempotency_key: str | None = None,
) -> MediaSent:
    """Check, store, queue and wait (module docstring). Raises MediaRefused with nothing
    stored or queued."""
    redis, prefix = parts.redis, parts.prefix
    keys = engine_keys_for(session, chat_id, parts.shards, prefix)
    if not await redis.exists(keys.state):
        raise MediaRefused(404, "no_conversation", "no such conversation")
    if await files_refused(redis, session, prefix):
        raise MediaRefused(422, WAHA_PLUS_REQUIRED, PLUS_DETAIL)
    kind = kind_for(data, mimetype, parts.max_bytes)
    caption = caption.strip()
    if len(caption) > CAPTION_MAX:
        raise MediaRefused(422, "caption_too_long", f"a caption has at most {CAPTION_MAX} chars")
    if kind == "voice":
        caption = ""  # WhatsApp shows no caption on a voice note
    mimetype = "audio/ogg; codecs=opus" if kind == "voice" else base_mimetype(mimetype)
    name = clean_filename(filename, mimetype)
    command_id = command_id_for(session, chat_id, commands.AGENT_MEDIA, idempotency_key)
    request = {
        "agent_id": agent_id,
        "agent_name": agent_name or agent_id,
        "caption": caption,
        "mimetype": mimetype,
        "filename": name,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if idempotency_key and not await same_request(
        parts.queue, session, chat_id, command_id, request
    ):
        raise MediaRefused(422, "idempotency_key_reused", KEY_REUSED)

    token = conversation_token(session, chat_id)
    # Stored and indexed under the conversation like a customer's file: GET /api/media/<id>
    # serves it, the history names it, an erase removes it.
    stored = await parts.library.save(token, data, mimetype, name)
    mid = message_id_for(command_id)
    media = {
        "id": stored.id,
        "mimetype": stored.mimetype,
        "filename": stored.filename or name,
        "size": stored.size,
        "sha256": stored.sha256,
    }
    payload = {
        "agent_id": agent_id,
        "agent_name": agent_name or agent_id,
        "kind": kind,
        "mid": mid,
        "caption": caption,
        "media": media,
    }
    queued = await parts.queue.send(
        session, chat_id, commands.AGENT_MEDIA, payload, event_id=command_id
    )
    status = await outcome(redis, keys.history_meta, mid, parts.wait_seconds)
    return MediaSent(status, command_id, mid, str(stored.id), kind, replayed=not queued)


async def outcome(redis: RedisClient, meta_key: str, mid: str, wait_seconds: float) -> str:
    """The reply's outcome, waiting at most `wait_seconds` for one: sent,
    waha_plus_required, failed, or queued (none yet)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        status, error = await redis.hmget(meta_key, [f"{mid}:status", f"{mid}:error"])
        if status is not None:
            current = as_text(status)
            if current in SENT_STATUSES:
                return "sent"
            if current in ("failed", "error"):
                if error is not None and as_text(error) == WAHA_PLUS_REQUIRED:
                    return WAHA_PLUS_REQUIRED
                return "failed"
        if time.monotonic() >= deadline:
            return "queued"
        await asyncio.sleep(POLL_SECONDS)
