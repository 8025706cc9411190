"""Storing a customer's file is inside the turn's budget (engine/media/ingest.py), like its
download and its transcription: a store that stalls is cut at the turn's deadline less
Settings.turn_reserve_seconds, the message is recorded without its file (`store_failed`) and
the turn goes on to answer. The store is the product's S3Store, built from the settings as a
worker builds it (boto3 in a thread), on a bucket whose endpoint is a real socket that takes
the upload and never answers; WAHA's files are the respx stand-in of support.py. Reading a
stored voice note back (its redelivery) is inside the same budget."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import respx

from engine.identity import Conversation
from engine.media.ingest import STORE_FAILED
from engine.media.store import DirectoryStore
from engine.parts import media_ingest, transcriber
from tests.engine.harness import settings_for
from tests.engine.media.support import (
    GROQ,
    KEY,
    OGG,
    FakeWhisper,
    WahaFiles,
    chat_of,
    groq_error,
    served,
    served_image,
    voice,
)
from tests.support.metrics import Counted

BUDGET = 0.4  # what is left of the turn for the file


class SilentBucket:
    """An S3 endpoint that reads each request's head and never answers, until released."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.released = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head.split(b"\r\n", 1)[0].decode())
            await self.released.wait()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def silent_bucket(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[SilentBucket, str]]:
    # One attempt: once released, the upload's thread ends at once, without retrying.
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    bucket = SilentBucket()
    server = await asyncio.start_server(bucket.serve, "127.0.0.1", 0)
    yield bucket, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    bucket.released.set()  # the connections close: the upload's thread gets its answer
    await server.wait_closed()


async def test_a_store_that_stalls_is_cut_at_the_turns_deadline(
    aredis: Any, redis_url: str, key_prefix: str, router: respx.MockRouter, silent_bucket: Any
) -> None:
    bucket, endpoint = silent_bucket
    settings = settings_for(
        key_prefix,
        redis_url,
        waha_api_key=KEY,
        media_s3_bucket="media",
        media_s3_endpoint_url=endpoint,
    )
    ingest = media_ingest(aredis, settings)
    document = served_image(WahaFiles(router))
    conversation = Conversation(*chat_of(document))
    try:
        started = time.monotonic()
        deadline = started + settings.turn_reserve_seconds + BUDGET
        # A bound of the test's own: a store outside the budget would wait for boto3's
        # read timeout (60 s).
        item = await asyncio.wait_for(
            ingest.ingest(conversation, document["payload"], deadline=deadline), 5
        )
        took = time.monotonic() - started
    finally:
        await ingest.aclose()
    assert BUDGET <= took < BUDGET + 0.5, took
    assert (item.kind, item.media, item.reason) == ("image", None, STORE_FAILED)
    assert [r.split(" ", 1)[0] for r in bucket.requests] == ["PUT"]  # the upload had begun
    # Nothing indexed: the message has no file to find again.
    message_id = document["payload"]["id"]
    assert await ingest.library.of_message(conversation.token, message_id) is None


class StoredVoice(NamedTuple):
    """A voice note served by WAHA, to be stored by a first delivery whose transcription fails
    (Groq answers 500): what a redelivery then finds stored, untranscribed."""

    settings: Any
    whisper: FakeWhisper
    speech: Any
    ingest: Any
    files: WahaFiles
    document: dict[str, Any]
    conversation: Conversation


@pytest.fixture
def stored_voice(
    aredis: Any, redis_url: str, key_prefix: str, router: respx.MockRouter, tmp_path: Path
) -> StoredVoice:
    settings = settings_for(
        key_prefix,
        redis_url,
        waha_api_key=KEY,
        media_dir=tmp_path / "media",
        groq_api_key="gsk_test",
        groq_base_url=GROQ,
        llm_max_retries=0,
    )
    whisper = FakeWhisper(router).then(groq_error(500, "Internal Server Error", "server_error"))
    speech = transcriber(settings)
    ingest = media_ingest(aredis, settings, transcriber=speech)
    files = WahaFiles(router)
    document = voice()
    served(files, document, OGG, "audio/ogg")
    conversation = Conversation(*chat_of(document))
    return StoredVoice(settings, whisper, speech, ingest, files, document, conversation)


async def test_a_redelivered_voice_note_is_read_back_within_the_turns_budget(
    stored_voice: StoredVoice,
) -> None:
    """The first delivery stored the voice note but got no transcript (Groq failed; or the turn
    crashed before its commit); the redelivery reads the stored file back to transcribe it.
    That read stalls (a hung disk: the file is a FIFO no one writes, so opening it waits) and
    is cut at the turn's deadline less the reserve: the voice note kept, untranscribed."""
    settings, whisper, speech, ingest, files, document, conversation = stored_voice
    skipped = Counted("wsm_transcriptions_total", result="skipped", reason="turn_deadline")
    fifo: Path | None = None
    try:
        first = await ingest.ingest(conversation, document["payload"])
        assert first.media is not None and first.transcript is None
        store = ingest.library.store
        assert isinstance(store, DirectoryStore)
        fifo = store.path_of(conversation.token, first.media.sha256)
        fifo.unlink()
        os.mkfifo(fifo)
        started = time.monotonic()
        deadline = started + settings.turn_reserve_seconds + BUDGET
        # A bound of the test's own: a read outside the budget would wait for ever.
        item = await asyncio.wait_for(
            ingest.ingest(conversation, document["payload"], deadline=deadline), 3
        )
        took = time.monotonic() - started
    finally:
        if fifo is not None:
            # A writer that closes at once: the read's thread gets its end of file and ends.
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        await ingest.aclose()
        if speech is not None:
            await speech.aclose()
    assert BUDGET <= took < BUDGET + 0.5, took
    assert (item.kind, item.media, item.transcript) == ("voice", first.media, None)
    # Found by its message id: not fetched nor stored again, and nothing sent to Groq.
    assert len(files.requests) == 1 and len(whisper.requests) == 1
    assert skipped.delta == 1


async def test_a_redelivered_voice_note_whose_stored_file_cannot_be_read_goes_on(
    stored_voice: StoredVoice,
) -> None:
    """The redelivery's read of the stored voice note fails (a disk error: the file is now a
    directory): ingest never raises, as on the first delivery, so the message goes on with its
    media, untranscribed, counted as a failed transcription, instead of failing its turn until
    it is a dead letter."""
    settings, whisper, speech, ingest, files, document, conversation = stored_voice
    failed = Counted("wsm_transcriptions_total", result="failed", reason="error")
    try:
        first = await ingest.ingest(conversation, document["payload"])
        assert first.media is not None and first.transcript is None
        store = ingest.library.store
        assert isinstance(store, DirectoryStore)
        path = store.path_of(conversation.token, first.media.sha256)
        path.unlink()
        path.mkdir()  # reading it raises IsADirectoryError
        item = await ingest.ingest(
            conversation,
            document["payload"],
            deadline=time.monotonic() + settings.turn_reserve_seconds + 10,
        )
    finally:
        await ingest.aclose()
        if speech is not None:
            await speech.aclose()
    assert (item.kind, item.media, item.transcript) == ("voice", first.media, None)
    assert len(files.requests) == 1 and len(whisper.requests) == 1  # not fetched, not sent
    assert failed.delta == 1
