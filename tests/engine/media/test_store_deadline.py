"""Storing a customer's file is inside the turn's budget (engine/media/ingest.py), like its
download and its transcription: a store that stalls is cut at the turn's deadline less
Settings.turn_reserve_seconds, the message is recorded without its file (`store_failed`) and
the turn goes on to answer. The store is the product's S3Store, built from the settings as a
worker builds it (boto3 in a thread), on a bucket whose endpoint is a real socket that takes
the upload and never answers; WAHA's files are the respx stand-in of support.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import respx

from engine.identity import Conversation
from engine.media.ingest import STORE_FAILED
from engine.parts import media_ingest
from tests.engine.harness import settings_for
from tests.engine.media.support import KEY, WahaFiles, chat_of, served_image

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
async def silent_bucket(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[SilentBucket, str]]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # One attempt: once released, the upload's thread ends at once, without retrying.
        "AWS_RETRY_MODE": "standard",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(name, value)
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
