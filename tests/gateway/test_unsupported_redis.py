"""A Redis too old for wsm (before 7.0): the gateway never writes to it and keeps every event
in its spool (docs/gateway.md, "Unsupported Redis"); started against one, it refuses to start.

The old server is the suite's real Redis behind a small TCP proxy that reports its version as
6.x in INFO (the one thing the version check reads); everything else passes through, so a
write that slipped past the check would show up in the real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis

from shared.embedded_redis import free_port
from tests.conftest import keys_with_prefix
from tests.gateway.conftest import (
    REPO,
    gateway_environment,
    gateway_settings,
    inprocess_gateway,
    signed,
)
from tests.support.polling import async_wait_until
from tests.support.waha import compact, text_message

CHAT = "5511988886666@c.us"


@contextlib.asynccontextmanager
async def old_redis_proxy(redis_url: str, port: int) -> AsyncIterator[str]:
    """redis://127.0.0.1:<port>/0, a proxy to `redis_url` whose INFO says Redis 6.
    "7." and "6." have the same length, so RESP's bulk lengths stay right."""
    target = urlsplit(redis_url)
    assert target.hostname and target.port

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, old: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if old:
                    data = data.replace(b"redis_version:7.", b"redis_version:6.")
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True))

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


async def test_proxy_reports_an_old_version(redis_url: str) -> None:
    """The stand-in is what it claims: an old version, a working server."""
    async with old_redis_proxy(redis_url, free_port()) as url:
        client = redis.asyncio.Redis.from_url(url)
        try:
            assert (await client.info("server"))["redis_version"].startswith("6.")
            assert await client.ping()
        finally:
            await client.aclose()


async def test_events_stay_in_the_spool_when_redis_comes_back_too_old(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    port = free_port()
    settings = gateway_settings(f"redis://127.0.0.1:{port}/0", key_prefix, tmp_path / "spool")

    async def post(client: httpx.AsyncClient, text: str) -> httpx.Response:
        body = compact(text_message(CHAT, text))
        return await client.post("/webhook", content=body, headers=signed(body))

    async with inprocess_gateway(settings, redis_down=True) as client:
        # Redis down at start: the gateway spools.
        for n in range(2):
            assert (await post(client, f"m{n}")).json() == {"status": "spooled"}

        async with old_redis_proxy(redis_url, port):

            async def refused() -> dict | None:
                body = (await client.get("/readyz")).json()
                return body if "too old" in body["redis"].get("error", "") else None

            ready = await async_wait_until(refused, timeout=10, what="the version check")
            assert ready["status"] == "unavailable"
            assert ready["redis"]["ok"] is False
            # Reachable, but never written to: new events join the spool too.
            for n in range(2, 4):
                assert (await post(client, f"m{n}")).json() == {"status": "spooled"}
            # A negative has no event to wait for: give the replayer some of its knocks (every
            # 50-500 ms) to show that it still moves nothing. Not a timed assertion: a slow
            # machine only makes this check weaker, never failing.
            await asyncio.sleep(1.0)
            ready = (await client.get("/readyz")).json()
            assert ready["spool"] == {"in_use": True, "events": 4, "writable": True}
            assert keys_with_prefix(sync_redis, key_prefix) == []
    assert len(list((tmp_path / "spool").glob("spool-*.wal"))) == 1  # kept for a newer Redis


async def test_the_gateway_refuses_to_start_against_a_redis_too_old(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    async with old_redis_proxy(redis_url, free_port()) as url:
        environment = gateway_environment(url, key_prefix, tmp_path / "spool")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(free_port()),
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **environment},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2  # every refusal of `wsm gateway` exits 2
    assert b"is too old: wsm needs Redis 7.0" in output
