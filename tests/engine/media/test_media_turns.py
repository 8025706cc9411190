"""Customers' media through the engine on the real queue protocol and a real Redis: WAHA is a
respx stand-in that serves the files only with the right X-Api-Key; the transcriber a
stand-in recording its calls."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import respx

from engine.brain import Brain, Decision, InboundMessage, Turn
from engine.erase import erase_customer
from engine.media.ingest import MediaIngest
from engine.media.store import folder_name, lookup
from engine.parts import media_ingest
from shared.keys import MediaKeys, conversation_token, engine_keys_for
from tests.engine.harness import Harness, settings_for
from tests.engine.media.support import (
    JPEG,
    KEY,
    OGG,
    WahaFiles,
    chat_of,
    history,
    image,
    served,
    served_image,
    voice,
)
from tests.support.closing import closing_all
from tests.support.waha import load_fixture

TRANSCRIPT = "quero marcar uma consulta amanhã"


@pytest.fixture
def files(router: respx.MockRouter) -> WahaFiles:
    return WahaFiles(router)


class Transcriber:
    def __init__(self, answer: str | None = TRANSCRIPT) -> None:
        self.answer = answer
        self.calls: list[tuple[bytes, str, str]] = []

    async def transcribe(self, audio: bytes, *, filename: str, mimetype: str) -> str | None:
        self.calls.append((audio, filename, mimetype))
        return self.answer


class Recording:
    """The engine's brain, recording what it was given."""

    def __init__(self, brain: Brain) -> None:
        self.brain = brain
        self.seen: list[InboundMessage] = []

    async def decide(self, turn: Turn) -> Decision:
        self.seen.append(turn.message)
        return await self.brain.decide(turn)


@pytest.fixture
async def make_media(
    aredis, redis_url, key_prefix, tmp_path
) -> AsyncIterator[Callable[..., tuple[Harness, MediaIngest, Recording]]]:
    made: list[tuple[Harness, MediaIngest]] = []

    def make(transcriber: Any = None, **overrides: Any) -> tuple[Harness, MediaIngest, Recording]:
        values = {
            "waha_api_key": KEY,
            "media_dir": tmp_path / "media",
            "media_fetch_attempts": 2,
            **overrides,
        }
        harness = Harness(aredis, settings_for(key_prefix, redis_url, **values))
        ingest = media_ingest(aredis, harness.settings, transcriber=transcriber)
        ingest.fetcher.backoff_base = ingest.fetcher.backoff_max = 0.01
        made.append((harness, ingest))
        engine = harness.service.engine
        brain = Recording(engine.tools.brain)
        engine.tools = replace(engine.tools, media=ingest, brain=brain)
        return harness, ingest, brain

    yield make
    for harness, ingest in made:
        await harness.aclose()
        await ingest.aclose()


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def test_image_with_caption_is_stored_and_answered(
    aredis, key_prefix, waha, files, make_media, tmp_path
) -> None:
    harness, _, brain = make_media()
    document = served_image(files)
    assert await harness.webhook(document)
    await harness.drain()
    entry = (await history(aredis, key_prefix, document))[0]
    sha = hashlib.sha256(JPEG).hexdigest()
    assert (entry.kind, entry.text, entry.caption, entry.media_reason) == (
        "image",
        "Hi there's!",
        "Hi there's!",
        None,
    )
    assert entry.media is not None
    assert {k: entry.media[k] for k in ("mimetype", "size", "sha256", "filename")} == {
        "mimetype": "image/jpeg",
        "size": len(JPEG),
        "sha256": sha,
        "filename": None,
    }
    session, chat = chat_of(document)
    token = conversation_token(session, chat)
    assert stored_files(tmp_path / "media") == [tmp_path / "media" / folder_name(token) / sha]
    assert (tmp_path / "media" / folder_name(token) / sha).read_bytes() == JPEG
    found = await lookup(aredis, MediaKeys(key_prefix), entry.media["id"])
    assert found is not None and found.token == token and found.mimetype == "image/jpeg"
    assert entry.public()["media"]["sha256"] == sha
    assert [files.requests[0].headers["x-api-key"]] == [KEY]
    message = brain.seen[0]
    assert (message.kind, message.text, message.caption, message.media_available) == (
        "image",
        "Hi there's!",
        "Hi there's!",
        True,
    )
    assert waha.to(chat)  # the conversation went on: the bot answered


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("missing", "http_404"),
        ("wrong_key", "http_401"),
        ("timeout", "timeout"),
        ("too_big", "too_big"),
    ],
)
async def test_a_file_that_cannot_be_had_leaves_media_null_and_the_bot_answers(
    aredis, key_prefix, waha, files, make_media, tmp_path, setup, reason
) -> None:
    overrides: dict[str, Any] = {}
    if setup == "wrong_key":
        overrides["waha_api_key"] = "another-key"
    if setup == "too_big":
        overrides["media_max_bytes"] = len(JPEG) - 1
    harness, _, brain = make_media(**overrides)
    document = image()
    path = served(files, document, JPEG, "image/jpeg")
    if setup == "missing":
        del files.files[path]
    files.timeouts = setup == "timeout"
    assert await harness.webhook(document)
    await harness.drain()
    entry = (await history(aredis, key_prefix, document))[0]
    assert (entry.kind, entry.caption) == ("image", "Hi there's!")
    assert (entry.media, entry.media_reason) == (None, reason)
    assert entry.public()["media"] is None and entry.public()["media_reason"] == reason
    assert stored_files(tmp_path / "media") == []
    assert await aredis.keys(f"{key_prefix}:{{media}}*") == []
    # Retried only what a repeat can fix (a timeout), within WSM_MEDIA_FETCH_ATTEMPTS.
    assert len(files.requests) == (2 if setup == "timeout" else 1)
    assert brain.seen[0].media_available is False
    assert waha.to(chat_of(document)[1])


async def test_a_url_outside_wahas_files_is_never_fetched(
    aredis, key_prefix, waha, files, make_media, tmp_path
) -> None:
    """The real body's URL points at GitHub (WAHA's docs example): no request leaves, and
    WAHA's key goes nowhere."""
    harness, _, _ = make_media()
    document = image()
    assert await harness.webhook(document)
    await harness.drain()
    entry = (await history(aredis, key_prefix, document))[0]
    assert (entry.media, entry.media_reason) == (None, "foreign_url")
    assert files.requests == [] and stored_files(tmp_path / "media") == []


async def test_not_downloaded_by_waha(aredis, key_prefix, waha, files, make_media) -> None:
    harness, _, brain = make_media(transcriber=Transcriber())
    document = voice()
    document["payload"]["media"] = None
    assert await harness.webhook(document)
    await harness.drain()
    entry = (await history(aredis, key_prefix, document))[0]
    assert (entry.kind, entry.transcript) == ("voice", None)
    assert (entry.media, entry.media_reason) == (None, "not_downloaded")
    assert files.requests == []
    assert brain.seen[0].text == "" and brain.seen[0].transcript is None


async def test_voice_note_is_transcribed_for_history_and_brain(
    aredis, key_prefix, waha, files, make_media
) -> None:
    transcriber = Transcriber()
    harness, _, brain = make_media(transcriber=transcriber)
    document = voice()
    served(files, document, OGG, "audio/ogg")
    assert await harness.webhook(document)
    await harness.drain()
    entry = (await history(aredis, key_prefix, document))[0]
    assert (entry.kind, entry.transcript, entry.text) == ("voice", TRANSCRIPT, "")
    assert entry.media is not None and entry.media["mimetype"] == "audio/ogg; codecs=opus"
    assert transcriber.calls == [(OGG, "", "audio/ogg; codecs=opus")]
    message = brain.seen[0]
    assert message.text == f"[áudio] {TRANSCRIPT}"
    assert (message.kind, message.transcript, message.media_available) == (
        "voice",
        TRANSCRIPT,
        True,
    )


async def test_a_failed_transcription_keeps_the_audio(
    aredis, key_prefix, waha, files, make_media
) -> None:
    harness, _, brain = make_media(transcriber=Transcriber(answer=None))
    document = voice()
    served(files, document, OGG, "audio/ogg")
    assert await harness.webhook(document)
    await harness.drain()
    entry = (await history(aredis, key_prefix, document))[0]
    assert entry.transcript is None and entry.media is not None
    assert brain.seen[0].text == "" and brain.seen[0].media_available is True


async def test_redelivery_stores_and_transcribes_once(
    aredis, key_prefix, waha, files, make_media, tmp_path
) -> None:
    """The first turn stored and transcribed the voice note, then lost its commit; the
    redelivery finds the file and its transcript by the message id."""
    transcriber = Transcriber()
    harness, _, _ = make_media(transcriber=transcriber)
    document = voice()
    served(files, document, OGG, "audio/ogg")
    assert await harness.webhook(document)
    await harness.handle_fenced_out(*chat_of(document))
    await harness.drain()
    entries = await history(aredis, key_prefix, document)
    assert (entries[0].direction, entries[0].kind) == ("in", "voice")
    assert sum(e.direction == "in" for e in entries) == 1
    assert entries[0].transcript == TRANSCRIPT
    assert len(files.requests) == 1 and len(transcriber.calls) == 1
    assert len(stored_files(tmp_path / "media")) == 1


async def test_location_and_contact_are_recorded_without_files(
    aredis, key_prefix, waha, files, make_media
) -> None:
    harness, _, brain = make_media()
    location = copy.deepcopy(load_fixture("message-media-location.json"))
    contact = copy.deepcopy(load_fixture("message-media-contact.json"))
    contact["payload"]["id"] = contact["payload"]["id"] + "C"
    for document in (location, contact):
        assert await harness.webhook(document)
    await harness.drain()
    entries = [e for e in await history(aredis, key_prefix, location) if e.direction == "in"]
    assert [e.kind for e in entries] == ["location", "contact"]
    assert entries[0].location == {
        "latitude": -23.5613496,
        "longitude": -46.6563297,
        "name": "Clínica Paulista",
    }
    assert entries[0].media is None and entries[0].media_reason is None
    # The card itself, for the attendant: who, which number, and the vCard as sent.
    card = contact["payload"]["vCards"][0]
    assert entries[1].contact == {
        "name": "Maria Souza",
        "phone": "+55 11 98765-0099",
        "vcard": card,
    }
    assert entries[1].public()["contact"] == entries[1].contact
    assert files.requests == []
    assert [m.kind for m in brain.seen][:1] == ["location"]


async def test_the_worker_engine_stores_customers_media_with_its_settings(
    aredis, redis_url, key_prefix, waha, files, tmp_path
) -> None:
    # The worker's EngineService (engine/service.py) builds the media ingest from its settings
    # (WSM_MEDIA_DIR, WAHA_API_KEY): nothing else has to be wired for a voice note to be kept.
    settings = settings_for(key_prefix, redis_url, waha_api_key=KEY, media_dir=tmp_path / "m")
    async with closing_all(lambda: Harness(aredis, settings)) as make:
        harness = make()
        document = voice()
        served(files, document, OGG, "audio/ogg")
        assert await harness.webhook(document)
        await harness.drain()
    entry = (await history(aredis, key_prefix, document))[0]
    assert entry.kind == "voice" and entry.media is not None, entry
    assert entry.media["size"] == len(OGG)
    assert [p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()] == [OGG]


async def test_old_history_entries_read_without_media_fields(
    aredis, key_prefix, waha, files, make_media
) -> None:
    document = image()
    session, chat = chat_of(document)
    keys = engine_keys_for(session, chat, 1, key_prefix)
    # An entry as written before media existed.
    await aredis.xadd(
        keys.history,
        {"mid": "OLD", "dir": "in", "text": "oi", "at": "1", "author": "customer", "kind": "media"},
    )
    entry = (await history(aredis, key_prefix, document))[0]
    assert (entry.kind, entry.media, entry.caption, entry.transcript, entry.location) == (
        "media",
        None,
        None,
        None,
        None,
    )
    assert entry.public()["media"] is None


async def test_erase_removes_the_customers_files_and_index(
    aredis, key_prefix, waha, files, make_media, tmp_path
) -> None:
    harness, ingest, _ = make_media()
    document = served_image(files)
    other = voice()  # another customer's file
    served(files, other, OGG, "audio/ogg")
    for doc in (document, other):
        assert await harness.webhook(doc)
    await harness.drain()
    mine = (await history(aredis, key_prefix, document))[0].media
    theirs = (await history(aredis, key_prefix, other))[0].media
    assert mine is not None and theirs is not None
    session, chat = chat_of(document)
    await erase_customer(
        aredis,
        prefix=key_prefix,
        shards=1,
        session=session,
        chat_id=chat,
        media=ingest.library,
    )
    keys = MediaKeys(key_prefix)
    assert await lookup(aredis, keys, mine["id"]) is None
    assert await aredis.exists(keys.conversation(conversation_token(session, chat))) == 0
    assert not (tmp_path / "media" / folder_name(conversation_token(session, chat))).exists()
    assert await lookup(aredis, keys, theirs["id"]) is not None
    assert len(stored_files(tmp_path / "media")) == 1
