"""Speech to text for customers' voice notes and audio, with Groq's Whisper.

`GroqTranscriber` sends the audio to Groq's OpenAI-compatible `POST /openai/v1/audio/
transcriptions` through the `groq` client (`audio.transcriptions.create`: multipart `file`,
`model` = GROQ_TRANSCRIBE_MODEL, `language` = pt, `response_format` = json). What the brains
then read is "[áudio] <transcript>" (engine/brain.py's InboundMessage).

It is treated like the chat model (engine/agent/llm.py), because it is the same provider on
the same key:
- the same client settings: GROQ_BASE_URL, WSM_LLM_TIMEOUT_SECONDS (for each request as a
  whole: a server trickling its answer cannot hold it longer), no SDK retries;
- the same retries (`with_retries`: WSM_LLM_MAX_RETRIES, only for what a repeat can fix);
- the same failure classes (`llm_error`) and the same breaker rules (`count_failure`, with
  WSM_LLM_BREAKER_FAILURES / WSM_LLM_BREAKER_RESET_SECONDS). The breaker is an instance of its
  own (the same CircuitBreaker): a retired Whisper model must not send every chat to the
  menu, nor a chat outage stop transcriptions. A 400 counts as the file's fault (Groq answers
  400 to a file it cannot decode), not the configuration's;
- metrics in the same family (engine/agent/metrics.py): `wsm_transcriptions_total{result,
  reason}` and `wsm_transcription_duration_seconds`.

It never raises (cancellation aside): a transcription that fails, is skipped (over Groq's
25 MB upload limit, empty, breaker open) or comes back empty is None, and the menu tells the
customer it cannot listen to audio yet (engine/menu_brain.py). Without GROQ_API_KEY no
transcriber is built (engine/parts.py `transcriber`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY, dataclass
from typing import Protocol

import groq

from engine.agent.breaker import CircuitBreaker
from engine.agent.llm import (
    LLMError,
    LLMRejected,
    count_failure,
    llm_error,
    request_seconds,
    whole_request,
    with_retries,
)
from engine.agent.metrics import TRANSCRIPTION_DURATION, TRANSCRIPTIONS

log = logging.getLogger(__name__)

# Groq refuses uploads above 25 MB (free tier); such a file is not sent at all.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
LANGUAGE = "pt"
# The kinds of message (engine/media/kinds.py) that are transcribed: a voice note (WhatsApp's
# "ptt") and an audio file.
TRANSCRIBED_KINDS = frozenset({"voice", "audio"})
# How a transcript reads to the brains: "[áudio] quero marcar uma consulta amanhã".
TRANSCRIPT_MARK = "[áudio]"
# Failures that are this file's, not the model's: they leave the breaker as it was.
_FILE_FAULTS = frozenset({"bad_request", "request_too_large", "bad_response"})
# Groq picks the decoder by the file name's extension; WAHA's voice notes come without a name.
_EXTENSIONS = {
    "audio/ogg": "ogg",
    "audio/opus": "opus",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "m4a",
    "audio/m4a": "m4a",
    "audio/x-m4a": "m4a",
    "audio/aac": "m4a",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/webm": "webm",
    "audio/flac": "flac",
    "video/mp4": "mp4",
    "video/webm": "webm",
}


class Transcriber(Protocol):
    async def transcribe(self, audio: bytes, *, filename: str, mimetype: str) -> str | None:
        """The audio's words, or None when there are none to give (never raises)."""
        ...


def upload_name(filename: str, mimetype: str) -> str:
    """A file name Groq can tell the format from: the given one when it has an extension,
    else `audio.<ext>` from the MIME type (`audio/ogg; codecs=opus` -> audio.ogg)."""
    name = filename.strip().rsplit("/", 1)[-1]
    if "." in name.strip("."):
        return name
    base = mimetype.split(";", 1)[0].strip().lower()
    return f"{name or 'audio'}.{_EXTENSIONS.get(base, 'ogg')}"


@dataclass(eq=False)
class GroqTranscriber:
    client: groq.AsyncGroq
    _: KW_ONLY
    # What is asked of Groq,
    model: str
    language: str = LANGUAGE
    max_bytes: int = MAX_UPLOAD_BYTES
    # how its failures are met,
    breaker: CircuitBreaker
    max_retries: int
    # and whether aclose() closes the client (engine/parts.py made it).
    owns_client: bool = False

    async def transcribe(self, audio: bytes, *, filename: str, mimetype: str) -> str | None:
        skipped = (
            "empty" if not audio
            else "too_large" if len(audio) > self.max_bytes
            else "breaker_open" if not self.breaker.allow()
            else None
        )  # fmt: skip
        if skipped is not None:
            TRANSCRIPTIONS.labels("skipped", skipped).inc()
            return None
        name = upload_name(filename, mimetype)
        try:
            text = await with_retries(lambda: self._once(audio, name, mimetype), self.max_retries)
        except LLMError as exc:
            count_failure(self.breaker, exc, request_faults=_FILE_FAULTS)
            TRANSCRIPTIONS.labels("failed", exc.reason).inc()
            log.warning("transcription failed", extra={"reason": exc.reason, "bytes": len(audio)})
            return None
        except Exception:
            # Not Groq's answer (a bug, a local error): says nothing about the model, and the
            # customer still gets the menu's audio answer.
            self.breaker.release()
            TRANSCRIPTIONS.labels("failed", "error").inc()
            log.exception("transcription failed")
            return None
        except BaseException:  # cancelled: the trial (if any) ends unjudged
            self.breaker.release()
            raise
        self.breaker.success()
        if not text:
            TRANSCRIPTIONS.labels("ok", "empty").inc()
            return None
        TRANSCRIPTIONS.labels("ok", "").inc()
        return text

    async def _once(self, audio: bytes, filename: str, mimetype: str) -> str:
        started = time.monotonic()
        try:
            async with whole_request(request_seconds(self.client)):
                answer = await self.client.audio.transcriptions.create(
                    file=(filename, audio, mimetype),
                    model=self.model,
                    language=self.language,
                    response_format="json",
                )
        except groq.APIError as exc:
            raise llm_error(exc) from exc
        finally:
            TRANSCRIPTION_DURATION.observe(time.monotonic() - started)
        text = getattr(answer, "text", None)
        if not isinstance(text, str):
            raise LLMRejected("bad_response", "no text in the transcription")
        return text.strip()

    async def aclose(self) -> None:
        """Close the client if this transcriber made it (engine/parts.py `transcriber`)."""
        if self.owns_client:
            await self.client.close()
