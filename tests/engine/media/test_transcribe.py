"""Groq's speech to text (engine/media/transcribe.py) against a respx stand-in for
`POST {GROQ_BASE_URL}/openai/v1/audio/transcriptions`, answering as Groq does: 200
`{"text": ..., "x_groq": {"id": ...}}` for `response_format=json`, errors as
`{"error": {"message", "type", "code"?}}`. The transcriber is built as a worker builds it
(engine/parts.py `transcriber`), so the client, retries and breaker settings are the real ones.

Every failure returns None (the menu's audio answer follows, tests/engine/agent/
test_media_turns.py), is counted, and tells the breaker what the chat calls would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from engine.agent.breaker import BreakerState
from engine.media.transcribe import MAX_UPLOAD_BYTES, GroqTranscriber, upload_name
from engine.parts import transcriber
from shared.settings import Settings
from tests.engine.agent.fake_groq import trickled
from tests.engine.media.support import (
    GROQ,
    VOICE,
    VOICE_MIME,
    FakeWhisper,
    form_of,
    groq_error,
    groq_text,
)
from tests.support.closing import closing_all
from tests.support.metrics import Counted


@pytest.fixture
def whisper(router: respx.MockRouter) -> FakeWhisper:
    return FakeWhisper(router)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "groq_api_key": "gsk_test",
        "groq_base_url": GROQ,
        "llm_max_retries": 0,
        "llm_breaker_failures": 2,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., GroqTranscriber]]:
    def build(**overrides: Any) -> GroqTranscriber:
        built = transcriber(settings(**overrides))
        assert built is not None
        return built

    async with closing_all(build) as made:
        yield made


async def test_a_voice_note_goes_to_groq_with_its_bytes_model_and_language(
    whisper: FakeWhisper, make: Callable[..., GroqTranscriber]
) -> None:
    ok = Counted("wsm_transcriptions_total", result="ok", reason="")
    whisper.then(groq_text(" Quero marcar uma consulta amanhã. "))
    text = await make().transcribe(VOICE, filename="", mimetype=VOICE_MIME)
    assert text == "Quero marcar uma consulta amanhã."
    [request] = whisper.requests
    assert request.headers["authorization"] == "Bearer gsk_test"
    form = form_of(request)
    # WAHA's voice notes have no file name: Groq tells the format by the extension.
    assert form["file"] == ("audio.ogg", "audio/ogg", VOICE)
    assert form["model"][2] == b"whisper-large-v3-turbo"
    assert form["language"][2] == b"pt"
    assert form["response_format"][2] == b"json"
    assert ok.delta == 1


async def test_the_model_is_the_configured_one(
    whisper: FakeWhisper, make: Callable[..., GroqTranscriber]
) -> None:
    whisper.then(groq_text("Bom dia"))
    built = make(groq_transcribe_model="whisper-large-v3")
    assert await built.transcribe(VOICE, filename="nota.opus", mimetype="audio/opus") == "Bom dia"
    form = form_of(whisper.requests[0])
    assert form["model"][2] == b"whisper-large-v3"
    assert form["file"][0] == "nota.opus"


def test_without_a_key_no_transcriber_is_built() -> None:
    assert transcriber(settings(groq_api_key=None)) is None
    assert transcriber(settings(groq_api_key="")) is None


async def test_an_upload_over_25_mb_is_refused_without_calling_groq(
    whisper: FakeWhisper, make: Callable[..., GroqTranscriber]
) -> None:
    too_large = Counted("wsm_transcriptions_total", result="skipped", reason="too_large")
    empty = Counted("wsm_transcriptions_total", result="skipped", reason="empty")
    built = make()
    big = b"\x00" * (MAX_UPLOAD_BYTES + 1)
    assert await built.transcribe(big, filename="long.ogg", mimetype=VOICE_MIME) is None
    assert await built.transcribe(b"", filename="", mimetype=VOICE_MIME) is None
    assert whisper.requests == []
    assert too_large.delta == 1 and empty.delta == 1
    # Exactly 25 MB is allowed.
    whisper.then(groq_text("ok"))
    at_limit = b"\x00" * MAX_UPLOAD_BYTES
    assert await built.transcribe(at_limit, filename="", mimetype=VOICE_MIME) == "ok"
    assert len(whisper.requests) == 1


async def test_server_errors_and_timeouts_fail_softly_and_open_the_breaker(
    whisper: FakeWhisper, make: Callable[..., GroqTranscriber]
) -> None:
    server_error = Counted("wsm_transcriptions_total", result="failed", reason="server_error")
    timeout = Counted("wsm_transcriptions_total", result="failed", reason="timeout")
    breaker_open = Counted("wsm_transcriptions_total", result="skipped", reason="breaker_open")
    built = make()  # two failures in a row open the breaker
    whisper.then(
        groq_error(500, "Internal Server Error", "internal_server_error"),
        httpx.ReadTimeout("timed out"),
    )
    assert await built.transcribe(VOICE, filename="", mimetype=VOICE_MIME) is None
    assert built.breaker.state is BreakerState.CLOSED
    assert await built.transcribe(VOICE, filename="", mimetype=VOICE_MIME) is None
    assert built.breaker.state is BreakerState.OPEN
    assert server_error.delta == 1 and timeout.delta == 1
    # Open: nobody waits on Groq; nothing is sent.
    assert await built.transcribe(VOICE, filename="", mimetype=VOICE_MIME) is None
    assert len(whisper.requests) == 2
    assert breaker_open.delta == 1


async def test_a_failure_a_repeat_can_fix_is_retried(
    whisper: FakeWhisper, make: Callable[..., GroqTranscriber]
) -> None:
    whisper.then(
        groq_error(503, "Service Unavailable", "internal_server_error"), groq_text("oi, tudo bem")
    )
    built = make(llm_max_retries=1)
    assert await built.transcribe(VOICE, filename="", mimetype=VOICE_MIME) == "oi, tudo bem"
    assert len(whisper.requests) == 2
    assert form_of(whisper.requests[1])["file"][2] == VOICE


async def test_a_file_groq_cannot_decode_fails_alone(
    whisper: FakeWhisper, make: Callable[..., GroqTranscriber]
) -> None:
    """A 400 is the file's fault (a broken or unsupported upload), not the configuration's:
    it is not retried and does not open the breaker for every other voice note."""
    bad = Counted("wsm_transcriptions_total", result="failed", reason="bad_request")
    built = make(llm_breaker_failures=1, llm_max_retries=1)
    whisper.then(
        groq_error(
            400, "could not process file - is it a valid media file?", "invalid_request_error"
        )
    )
    assert await built.transcribe(b"not audio", filename="", mimetype=VOICE_MIME) is None
    assert len(whisper.requests) == 1 and bad.delta == 1
    assert built.breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("answer", "result", "reason", "breaker_failures", "breaker"),
    [
        # A wrong key or model opens the breaker (at once, with a breaker of one failure).
        (
            groq_error(401, "Invalid API Key", "invalid_request_error", "invalid_api_key"),
            "failed",
            "auth_error",
            1,
            BreakerState.OPEN,
        ),
        # Silence is no transcript, and no failure.
        (groq_text("  "), "ok", "empty", 2, BreakerState.CLOSED),
        # An answer without text is a failure (one, below the breaker's two).
        (
            httpx.Response(200, json={"x_groq": {"id": "req_1"}}),
            "failed",
            "bad_response",
            2,
            BreakerState.CLOSED,
        ),
    ],
    ids=["wrong-key-or-model", "silence", "answer-without-text"],
)
async def test_an_answer_that_is_no_transcript(
    whisper: FakeWhisper,
    make: Callable[..., GroqTranscriber],
    answer: httpx.Response,
    result: str,
    reason: str,
    breaker_failures: int,
    breaker: BreakerState,
) -> None:
    counted = Counted("wsm_transcriptions_total", result=result, reason=reason)
    built = make(llm_breaker_failures=breaker_failures)
    whisper.then(answer)
    assert await built.transcribe(VOICE, filename="", mimetype=VOICE_MIME) is None
    assert counted.delta == 1 and built.breaker.state is breaker


@pytest.mark.parametrize(
    ("mimetype", "expected"),
    [
        ("audio/ogg; codecs=opus", "audio.ogg"),
        ("audio/mpeg", "audio.mp3"),
        ("audio/mp4", "audio.m4a"),
        ("application/octet-stream", "audio.ogg"),
    ],
)
def test_a_nameless_upload_is_named_for_its_mimetype(mimetype: str, expected: str) -> None:
    # WAHA's voice notes come without a file name: Groq tells the format by the extension.
    assert upload_name("", mimetype) == expected


@pytest.mark.parametrize(
    ("filename", "mimetype", "expected"),
    [
        ("gravação.m4a", "audio/mp4", "gravação.m4a"),
        ("../../etc/x.wav", "audio/wav", "x.wav"),  # never a path
        ("nota", "audio/wav", "nota.wav"),
    ],
)
def test_a_named_upload_keeps_its_name_with_an_extension_groq_knows(
    filename: str, mimetype: str, expected: str
) -> None:
    assert upload_name(filename, mimetype) == expected


async def test_a_trickled_transcription_is_cut_at_the_request_timeout(
    whisper: FakeWhisper, make: Callable[..., GroqTranscriber]
) -> None:
    """WSM_LLM_TIMEOUT_SECONDS bounds the request as a whole: a Groq sending its answer a few
    bytes at a time, each gap far shorter than the timeout, is a timeout at the timeout."""
    timed_out = Counted("wsm_transcriptions_total", result="failed", reason="timeout")
    whisper.then(trickled({"text": "tarde demais"}, seconds=3.0))
    built = make(llm_timeout_seconds=0.3)
    started = time.monotonic()
    assert await built.transcribe(VOICE, filename="", mimetype=VOICE_MIME) is None
    took = time.monotonic() - started
    assert 0.3 <= took < 0.8, took
    assert timed_out.delta == 1 and len(whisper.requests) == 1
