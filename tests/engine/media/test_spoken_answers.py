"""A voice note answers the line's own questions as typed words do: "which team?" and *sair*
in line (found by an audit: the line's steps read the caption, empty for a voice note, so a
transcribed "Dois." got "Não entendi"). On the real queue protocol and Redis, with WAHA's
voice-note body, its file served behind the API key, and a stand-in transcriber."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import respx

from engine.parts import media_ingest
from engine.state import State, load_state
from engine.texts import DEFAULTS
from shared.keys import engine_keys_for
from tests.engine.harness import Harness, settings_for
from tests.engine.line_support import business_file
from tests.engine.media.support import KEY, OGG, WahaFiles, chat_of, served, voice
from tests.support.waha import text_message

__all__ = ["business_file"]  # the two-team business file fixture

PT = DEFAULTS["pt-BR"]
QUESTION = PT["team_question"].format(teams="1. Recepção\n2. Financeiro", leave_word="sair")


class Transcriber:
    """Groq's transcription, answering each voice note with the next of `answers`."""

    def __init__(self) -> None:
        self.answers: list[str | None] = []

    async def transcribe(self, audio: bytes, *, filename: str, mimetype: str) -> str | None:
        return self.answers.pop(0)


@pytest.fixture
def files(router: respx.MockRouter) -> WahaFiles:
    return WahaFiles(router)


@pytest.fixture
async def clinic(
    aredis: Any, redis_url: str, key_prefix: str, tmp_path: Path, business_file: Path
) -> AsyncIterator[tuple[Harness, Transcriber]]:
    """The two-team clinic, keeping media and transcribing voice notes."""
    settings = settings_for(
        key_prefix, redis_url, waha_api_key=KEY, media_dir=tmp_path / "media",
        calendar_file=business_file,
    )  # fmt: skip
    harness = Harness(aredis, settings)
    transcriber = Transcriber()
    ingest = media_ingest(aredis, settings, transcriber=transcriber)
    engine = harness.service.engine
    engine.tools = replace(engine.tools, media=ingest)
    yield harness, transcriber
    await harness.aclose()
    await ingest.aclose()


def a_voice_note(files: WahaFiles) -> dict[str, Any]:
    """WAHA's voice-note body (a new message each time), its file served."""
    document = voice()
    document["id"] = "evt_" + uuid.uuid4().hex[:26]
    _, chat = chat_of(document)
    document["payload"]["id"] = f"false_{chat}_{uuid.uuid4().hex.upper()}"
    served(files, document, OGG, "audio/ogg")
    return document


async def turn(harness: Harness, *documents: dict[str, Any]) -> None:
    for document in documents:
        assert await harness.webhook(document)
        await harness.drain()


Say = Callable[..., dict[str, Any]]


def typed(document: dict[str, Any]) -> Say:
    session, chat = chat_of(document)
    return lambda text: text_message(chat, text, session=session)


async def test_a_team_said_in_a_voice_note_enters_that_teams_line(
    aredis: Any, key_prefix: str, waha: Any, files: WahaFiles, clinic: Any
) -> None:
    harness, transcriber = clinic
    first = a_voice_note(files)
    session, chat = chat_of(first)
    say = typed(first)
    await turn(harness, say("oi"), say("Ana"), say("3"))
    assert waha.to(chat)[-1] == QUESTION

    # Nobody could transcribe it: told so, and asked again (not "Não entendi").
    transcriber.answers = [None]
    await turn(harness, first)
    assert waha.to(chat)[-2:] == [PT["team_audio_unsupported"], QUESTION]
    assert await harness.service.coordinator.line.members(session, "financeiro") == []

    # Whisper writes a spoken number as a word with a full stop.
    transcriber.answers = ["Dois."]
    await turn(harness, a_voice_note(files))
    members = await harness.service.coordinator.line.members(session, "financeiro")
    assert [m.token for m in members] == [f"{session}|{chat}"]
    assert waha.to(chat)[-1].startswith("Você é o 1º da fila.")

    # In line, *sair* said leaves it.
    transcriber.answers = ["Sair."]
    await turn(harness, a_voice_note(files))
    assert waha.to(chat)[-1] == PT["line_left"]
    assert await harness.service.coordinator.line.members(session, "financeiro") == []
    state = await load_state(aredis, engine_keys_for(session, chat, 1, key_prefix).state)
    assert state.state is not State.WAITING


@pytest.mark.parametrize("answer", ["2️⃣", "dois", "Duas", "2)"])
async def test_a_team_number_as_an_emoji_or_in_words(
    aredis: Any, key_prefix: str, waha: Any, files: WahaFiles, clinic: Any, answer: str
) -> None:
    harness, _ = clinic
    document = a_voice_note(files)
    session, chat = chat_of(document)
    say = typed(document)
    await turn(harness, say("oi"), say("Ana"), say("3"), say(answer))
    members = await harness.service.coordinator.line.members(session, "financeiro")
    assert [m.token for m in members] == [f"{session}|{chat}"]
