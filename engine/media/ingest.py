"""A customer's media message, made ready for the history and the brain: its kind (kinds.py),
its bytes fetched from WAHA (fetch.py) and stored (store.py), and, for voice notes and audio,
its transcript (an optional Transcriber, engine/media/transcribe.py).

`MediaIngest.ingest` runs in the customer's turn, before the commit, and never raises: a file
WAHA did not download, cannot serve, or that is too big becomes an item without media and with
a reason, and the conversation goes on. Storing is idempotent (a file is named by its hash),
and a redelivered message (the turn crashed before its commit) finds its file, and its
transcript, by its WhatsApp id: nothing is fetched, stored or transcribed twice. A message
already in the history never gets here (engine/turn/customer.py returns before).

Bounded by the turn: given the turn's deadline (when the worker cancels the handler,
WSM_HANDLER_TIMEOUT_SECONDS after it started), the download, the storing and the transcription
get only the time before it less `reserve_seconds`, what the turn may still need after the file
to answer (Settings.turn_reserve_seconds: WAHA's phone lookup, the agent's answer, Redis). A
file not downloaded by then is `timeout`, one not stored by then (a stalled disk or bucket;
found by an audit: the store was outside the bound) `store_failed`, a transcription cut then
leaves the voice note untranscribed (stored: an attendant can still play it), and the customer
gets the brain's answer to a file it cannot read (the menu's `audio_unsupported` for a voice
note) in this delivery, instead of a turn the worker cancels, retries and dead-letters
unanswered. A store cut at the deadline may still finish writing in its thread: the file,
named by its hash and not indexed, goes with the retention's sweep. A redelivery's voice note,
stored but not transcribed, is read back within the same budget: a stalled disk or bucket
leaves it untranscribed, as a transcription cut would, instead of holding the turn past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
# A transcription skipped or cut because the turn had no time left for it (the metrics' reason).
TURN_DEADLINE = "turn_deadline"


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


def _left(until: float | None) -> float | None:
    """What is left of the turn's time for the next step (None: no bound)."""
    return None if until is None else until - time.monotonic()


class MediaIngest:
    def __init__(
        self,
        library: MediaLibrary,
        fetcher: MediaFetcher,
        *,
        transcriber: Transcriber | None = None,
        admit: Callable[[str], Awaitable[bool]] | None = None,
        reserve_seconds: float = 0.0,
    ) -> None:
        """`admit(conversation token)`: whether this conversation may have a voice note
        transcribed now (engine/agent/limits.py); not admitted, it is kept untranscribed.
        `reserve_seconds`: what the turn keeps for itself before its deadline (see above)."""
        self.library = library
        self.fetcher = fetcher
        self.transcriber = transcriber
        self.admit = admit
        self.reserve_seconds = reserve_seconds

    async def ingest(
        self,
        conversation: Conversation,
        payload: Mapping[str, Any],
        *,
        deadline: float | None = None,
    ) -> MediaItem:
        """`deadline`: the turn's (time.monotonic()); None: each step's own bounds only."""
        ref = describe(payload)
        if ref is None or not ref.is_media or not ref.downloaded or ref.url is None:
            return item_of(ref)
        until = None if deadline is None else deadline - self.reserve_seconds
        token = conversation.token
        message_id = str(payload.get("id") or "")
        if message_id:
            known = await self.library.of_message(token, message_id)
            if known is not None:
                stored, entry = known
                transcript = entry.get("transcript")
                if not isinstance(transcript, str):
                    transcript = await self._transcribe_stored(token, ref, stored, until)
                return self._item(ref, stored, transcript)
        fetched = await self.fetcher.fetch(ref.url, deadline=until)
        if fetched.data is None:
            return item_of(ref, reason=fetched.reason)
        mimetype = ref.mimetype or fetched.mimetype.split(";")[0].strip()
        budget = asyncio.timeout(_left(until))
        try:
            async with budget:
                stored = await self.library.save(
                    token, fetched.data, mimetype, ref.filename, message_id=message_id
                )
        except MediaTooBig:
            return item_of(ref, reason="too_big")
        except Exception:
            # Our store failed (disk full, bucket down) or stalled past the turn's time: the
            # message is recorded without its file rather than retried until it is a dead
            # letter; the log says why.
            if budget.expired():
                log.warning(
                    "storing a customer's media cut at the turn's deadline",
                    extra={"conversation": token},
                )
            else:
                log.exception("storing a customer's media failed", extra={"conversation": token})
            return item_of(ref, reason=STORE_FAILED)
        transcript = await self._transcribe(token, ref, stored, fetched.data, until)
        return self._item(ref, stored, transcript)

    def _item(self, ref: MediaRef, stored: StoredMedia, transcript: str | None) -> MediaItem:
        return MediaItem(kind=ref.kind, caption=ref.caption, media=stored, transcript=transcript)

    async def _transcribe_stored(
        self, token: str, ref: MediaRef, stored: StoredMedia, until: float | None
    ) -> str | None:
        if ref.kind not in TRANSCRIBED_KINDS or self.transcriber is None:
            return None
        budget = asyncio.timeout(_left(until))
        try:
            async with budget:
                data = await self.library.read(stored)
        except Exception:
            if budget.expired():
                # Nothing was sent to Groq: skipped, as a transcription with no time left is.
                TRANSCRIPTIONS.labels("skipped", TURN_DEADLINE).inc()
                log.warning(
                    "reading a stored voice note cut at the turn's deadline",
                    extra={"conversation": token},
                )
            else:
                # Our store failed (a disk error, a bucket down): as on the first delivery, the
                # message goes on without what the file would have given (ingest never raises:
                # a raise would retry the message until it is a dead letter).
                TRANSCRIPTIONS.labels("failed", "error").inc()
                log.exception("reading a stored voice note failed", extra={"conversation": token})
            return None
        return None if data is None else await self._transcribe(token, ref, stored, data, until)

    async def _transcribe(
        self, token: str, ref: MediaRef, stored: StoredMedia, data: bytes, until: float | None
    ) -> str | None:
        if ref.kind not in TRANSCRIBED_KINDS or self.transcriber is None:
            return None
        if until is not None and until <= time.monotonic():
            # Nothing left of the turn's time: not sent (nor counted against the conversation).
            TRANSCRIPTIONS.labels("skipped", TURN_DEADLINE).inc()
            return None
        if self.admit is not None and not await self.admit(token):
            TRANSCRIPTIONS.labels("skipped", "turn_limit").inc()
            return None
        budget = asyncio.timeout(_left(until))
        try:
            async with budget:
                transcript = await self.transcriber.transcribe(
                    data, filename=ref.filename or "", mimetype=stored.mimetype
                )
        except Exception:  # the Protocol says None on failure; a transcriber that raises anyway
            if budget.expired():
                # Cut at the turn's deadline (GroqTranscriber leaves its breaker unjudged): the
                # voice note stays stored, untranscribed.
                TRANSCRIPTIONS.labels("failed", TURN_DEADLINE).inc()
                log.warning(
                    "transcription cut at the turn's deadline", extra={"conversation": token}
                )
            else:
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
