"""A customer's media message, made ready for the history and the brain: its kind (kinds.py),
its bytes fetched from WAHA (fetch.py) and stored (store.py), and, for voice notes and audio,
its transcript (an optional Transcriber, engine/media/transcribe.py).

`MediaIngest.ingest` runs in the customer's turn, before the commit, and never raises: a file
WAHA did not download, cannot serve, or that is too big becomes an item without media and with
a reason, and the conversation goes on. Storing is idempotent (a file is named by its hash),
and a redelivered message (the turn crashed before its commit) finds its file, and its
transcript, by its WhatsApp id: nothing is fetched, stored or transcribed twice. A message
already in the history never gets here (engine/turn/customer.py returns before).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.agent.metrics import TRANSCRIPTIONS
from engine.identity import Conversation
from engine.media.fetch import MediaFetcher
from engine.media.kinds import Contact, Location, MediaRef, describe
from engine.media.store import MediaLibrary, MediaTooBig, StoredMedia
from engine.media.transcribe import TRANSCRIBED_KINDS

if TYPE_CHECKING:
    from engine.media.transcribe import Transcriber

log = logging.getLogger(__name__)

# Reasons of our own (WAHA's and the fetch's are in kinds.py and fetch.py).
NOT_STORED = "not_stored"  # this engine has no media store
STORE_FAILED = "store_failed"


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One inbound message as the history and the brain see it."""

    kind: str
    caption: str = ""
    media: StoredMedia | None = None
    reason: str | None = None  # why `media` is None, for a media kind
    transcript: str | None = None
    location: Location | None = None
    contact: Contact | None = None

    @property
    def available(self) -> bool:
        return self.media is not None


def item_of(ref: MediaRef | None, *, reason: str | None = None) -> MediaItem:
    """What a message is without its bytes (no store, or before fetching them)."""
    if ref is None:
        return MediaItem(kind="text")
    return MediaItem(
        kind=ref.kind,
        caption=ref.caption,
        reason=(ref.reason or reason) if ref.is_media else None,
        location=ref.location,
        contact=ref.contact,
    )


class MediaIngest:
    def __init__(
        self,
        library: MediaLibrary,
        fetcher: MediaFetcher,
        *,
        transcriber: Transcriber | None = None,
        admit: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """`admit(conversation token)`: whether this conversation may have a voice note
        transcribed now (engine/agent/limits.py); not admitted, it is kept untranscribed."""
        self.library = library
        self.fetcher = fetcher
        self.transcriber = transcriber
        self.admit = admit

    async def ingest(self, conversation: Conversation, payload: Mapping[str, Any]) -> MediaItem:
        ref = describe(payload)
        if ref is None or not ref.is_media or not ref.downloaded or ref.url is None:
            return item_of(ref)
        token = conversation.token
        message_id = str(payload.get("id") or "")
        if message_id:
            known = await self.library.of_message(token, message_id)
            if known is not None:
                stored, entry = known
                transcript = entry.get("transcript")
                if not isinstance(transcript, str):
                    transcript = await self._transcribe_stored(token, ref, stored)
                return self._item(ref, stored, transcript)
        fetched = await self.fetcher.fetch(ref.url)
        if fetched.data is None:
            return item_of(ref, reason=fetched.reason)
        mimetype = ref.mimetype or fetched.mimetype.split(";")[0].strip()
        try:
            stored = await self.library.save(
                token, fetched.data, mimetype, ref.filename, message_id=message_id
            )
        except MediaTooBig:
            return item_of(ref, reason="too_big")
        except Exception:
            # Our store failed (disk full, bucket down): the message is recorded without its
            # file rather than retried until it is a dead letter; the log says why.
            log.exception("storing a customer's media failed", extra={"conversation": token})
            return item_of(ref, reason=STORE_FAILED)
        transcript = await self._transcribe(token, ref, stored, fetched.data)
        return self._item(ref, stored, transcript)

    def _item(self, ref: MediaRef, stored: StoredMedia, transcript: str | None) -> MediaItem:
        return MediaItem(kind=ref.kind, caption=ref.caption, media=stored, transcript=transcript)

    async def _transcribe_stored(
        self, token: str, ref: MediaRef, stored: StoredMedia
    ) -> str | None:
        if ref.kind not in TRANSCRIBED_KINDS or self.transcriber is None:
            return None
        data = await self.library.read(stored)
        return None if data is None else await self._transcribe(token, ref, stored, data)

    async def _transcribe(
        self, token: str, ref: MediaRef, stored: StoredMedia, data: bytes
    ) -> str | None:
        if ref.kind not in TRANSCRIBED_KINDS or self.transcriber is None:
            return None
        if self.admit is not None and not await self.admit(token):
            TRANSCRIPTIONS.labels("skipped", "turn_limit").inc()
            return None
        try:
            transcript = await self.transcriber.transcribe(
                data, filename=ref.filename or "", mimetype=stored.mimetype
            )
        except Exception:  # the Protocol says None on failure; a transcriber that raises anyway
            log.exception("transcription failed")
            return None
        text = transcript.strip() if isinstance(transcript, str) else ""
        if not text:
            return None
        await self.library.note(stored, transcript=text)  # a redelivery reuses it
        return text

    async def aclose(self) -> None:
        """Closes the fetcher; the transcriber belongs to whoever built it."""
        await self.fetcher.aclose()
