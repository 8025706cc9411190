"""The lean HTTP/1.1 transport under the webhook client, against a raw asyncio server that
misbehaves on purpose: keep-alive reuse, servers closing idle connections, `Connection:
close`, chunked bodies, silence and refusal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from shared.embedded_redis import free_port
from wsm.waha_sim.transport import LeanHTTPTransport

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 19\r\n\r\n"
OK_BODY = b'{"status":"queued"}'


@dataclass
class RawServer:
    port: int = 0
    connections: int = 0
    bodies: list[bytes] = field(default_factory=list)
    # What to do for each request: gets the writer, returns whether to keep the connection.
    behaviour: Callable[[asyncio.StreamWriter], bool] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    state = RawServer()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while True:
                body = await _read_request(reader)
                if body is None:
                    return
                state.bodies.append(body)
                keep = state.behaviour(writer) if state.behaviour else _ok(writer)
                await writer.drain()
                if not keep:
                    return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def _ok(writer: asyncio.StreamWriter) -> bool:
    writer.write(OK + OK_BODY)
    return True


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=LeanHTTPTransport(), timeout=httpx.Timeout(2.0)) as http:
        yield http


async def test_connections_are_kept_alive_and_bodies_arrive_whole(
    raw_server: RawServer, client: httpx.AsyncClient
) -> None:
    for i in range(3):
        response = await client.post(raw_server.url, content=b'{"n":%d}' % i)
        assert (response.status_code, response.content) == (200, OK_BODY)
        assert response.json() == {"status": "queued"}
    assert raw_server.bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert raw_server.connections == 1


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    raw_server: RawServer, client: httpx.AsyncClient
) -> None:
    # Answers keep-alive, then hangs up: what a server's keep-alive timeout does.
    def answer_then_hang_up(writer: asyncio.StreamWriter) -> bool:
        writer.write(OK + OK_BODY)
        return False

    raw_server.behaviour = answer_then_hang_up
    for _ in range(3):
        assert (await client.post(raw_server.url, content=b"{}")).status_code == 200
    assert raw_server.connections == 3


async def test_connection_close_is_honoured(
    raw_server: RawServer, client: httpx.AsyncClient
) -> None:
    def close(writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 2\r\n"
            b"content-length: 0\r\n\r\n"
        )
        return True  # the client must not reuse it even though the server would

    raw_server.behaviour = close
    first = await client.post(raw_server.url, content=b"{}")
    assert (first.status_code, first.headers["retry-after"]) == (503, "2")
    await client.post(raw_server.url, content=b"{}")
    assert raw_server.connections == 2


async def test_chunked_answers_are_read(raw_server: RawServer, client: httpx.AsyncClient) -> None:
    def chunked(writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b'7\r\n{"ok":1\r\n1\r\n}\r\n0\r\n\r\n'
        )
        return True

    raw_server.behaviour = chunked
    response = await client.post(raw_server.url, content=b"{}")
    assert response.json() == {"ok": 1}


async def test_silence_is_a_read_timeout(raw_server: RawServer) -> None:
    raw_server.behaviour = lambda writer: True  # reads the request, never answers
    async with httpx.AsyncClient(transport=LeanHTTPTransport(), timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(raw_server.url, content=b"{}")


async def test_hanging_up_without_an_answer_is_a_protocol_error(
    raw_server: RawServer, client: httpx.AsyncClient
) -> None:
    raw_server.behaviour = lambda writer: False
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(raw_server.url, content=b"{}")


async def test_nobody_listening_is_a_connect_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{free_port()}/webhook", content=b"{}")
