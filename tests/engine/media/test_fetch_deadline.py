"""WSM_MEDIA_FETCH_TIMEOUT_SECONDS bounds a whole download, not each wait within it: a WAHA
that trickles a file's bytes (each gap shorter than the timeout) cannot hold the customer's
turn. Against a real socket server standing in for WAHA's /api/files/."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from engine.media.fetch import TIMEOUT, Fetched, MediaFetcher

CHUNKS = 20  # of 25 bytes, one every GAP seconds: 2 s for the whole file
GAP = 0.1


class Trickle:
    """An HTTP server sending a file's head at once and its body a few bytes at a time."""

    def __init__(self) -> None:
        self.sent = 0
        self.cut_off = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\n"
            + f"Content-Length: {CHUNKS * 25}\r\n\r\n".encode()
        )
        try:
            for _ in range(CHUNKS):
                writer.write(b"x" * 25)
                await writer.drain()
                self.sent += 1
                await asyncio.sleep(GAP)
                if reader.at_eof():
                    raise ConnectionResetError
        except (ConnectionError, OSError):
            self.cut_off.set()
        finally:
            writer.close()


@pytest.fixture
async def trickle() -> AsyncIterator[tuple[Trickle, str]]:
    server = Trickle()
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    yield server, f"http://127.0.0.1:{port}"
    listening.close()
    await listening.wait_closed()


async def fetch(url: str, *, timeout_seconds: float) -> Fetched:
    """One try at a voice note on the trickling server, as the worker fetches it."""
    fetcher = MediaFetcher(url, timeout_seconds=timeout_seconds, attempts=1)
    try:
        return await fetcher.fetch(f"{url}/api/files/default/voice.oga")
    finally:
        await fetcher.aclose()


async def test_a_trickled_download_ends_at_the_timeout(trickle: tuple[Trickle, str]) -> None:
    server, url = trickle
    # Each gap (0.1 s) is far below the timeout; the whole file (2 s) is far above it.
    fetched = await fetch(url, timeout_seconds=0.5)
    assert (fetched.data, fetched.reason) == (None, TIMEOUT)
    # The fetch hung up long before the file was sent.
    await asyncio.wait_for(server.cut_off.wait(), timeout=5)
    assert server.sent < CHUNKS // 2


async def test_a_steady_download_within_the_timeout_arrives_whole(
    trickle: tuple[Trickle, str],
) -> None:
    server, url = trickle
    fetched = await fetch(url, timeout_seconds=30)
    assert fetched.reason is None
    assert fetched.data == b"x" * (CHUNKS * 25)
    assert server.sent == CHUNKS
