"""The WAHA client as the workers build it (engine/parts.py): each call handed straight to the
lean HTTP/1.1 transport (shared/lean_http.py). Against a real local HTTP server answering in
WAHA's shapes: the same requests go out (method, path, API key, JSON body), and WAHA's answers
map to the same outcomes as on httpx's own client (201 with its id, 422, 5xx with
Retry-After, other 4xx, a refused connection)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from engine.parts import waha_client
from engine.waha_client import (
    WahaClient,
    WahaRetryable,
    WahaSessionNotWorking,
    WahaTerminal,
)
from shared.embedded_redis import free_port
from shared.lean_http import LeanHTTPTransport, Origin
from tests.engine.harness import settings_for

CHAT = "5511987650052@c.us"


class FakeWahaServer:
    """Answers each request with the next canned (status, body, headers); records requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.port = free_port()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break  # the client closed its kept-alive connection
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            headers = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines[1:] if x)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            status, answer, extra = self.answers.pop(0)
            content = orjson.dumps(answer)
            reason = {201: "Created", 200: "OK"}.get(status, "Error")
            out = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(content)}"]
            out += ["Content-Type: application/json", *(f"{k}: {v}" for k, v in extra.items())]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + content)
            await writer.drain()
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[FakeWahaServer]:
    fake = FakeWahaServer()
    listening = await asyncio.start_server(fake.handle, "127.0.0.1", fake.port)
    async with listening:
        yield fake


def client_for(server: FakeWahaServer) -> WahaClient:
    settings = settings_for(
        "t", "redis://127.0.0.1:1/0", waha_url=f"http://127.0.0.1:{server.port}"
    )
    settings = settings.model_copy(update={"waha_api_key": None})
    client = waha_client(settings)
    assert isinstance(client._transport, LeanHTTPTransport)  # as the workers build it
    return client


async def test_calls_and_answers_over_the_lean_transport(server: FakeWahaServer) -> None:
    client = client_for(server)
    server.answers = [
        (201, {}, {}),
        (201, {"id": f"true_{CHAT}_3EB0AA", "fromMe": True}, {}),
        (200, {"name": "default", "status": "WORKING"}, {}),
        (422, {"statusCode": 422, "message": "Session status is not as expected"}, {}),
        (500, {"statusCode": 500, "message": "Internal server error"}, {"Retry-After": "3"}),
        (400, {"statusCode": 400, "message": "Bad Request"}, {}),
    ]
    await client.send_seen("default", CHAT)
    sent = await client.send_text("default", CHAT, "olá")
    assert sent.id == f"true_{CHAT}_3EB0AA" and sent.short_id == "3EB0AA"
    assert await client.session_status("default") == "WORKING"
    with pytest.raises(WahaSessionNotWorking):
        await client.send_text("default", CHAT, "olá")
    with pytest.raises(WahaRetryable) as retryable:
        await client.send_text("default", CHAT, "olá")
    assert retryable.value.status == 500 and retryable.value.retry_after == 3
    with pytest.raises(WahaTerminal) as terminal:
        await client.send_text("default", CHAT, "olá")
    assert "Bad Request" in terminal.value.answer
    await client.aclose()
    assert [(r["method"], r["path"]) for r in server.requests] == [
        ("POST", "/api/sendSeen"), ("POST", "/api/sendText"), ("GET", "/api/sessions/default"),
        ("POST", "/api/sendText"), ("POST", "/api/sendText"), ("POST", "/api/sendText"),
    ]  # fmt: skip
    assert orjson.loads(server.requests[1]["body"]) == {
        "session": "default", "chatId": CHAT, "text": "olá",
    }  # fmt: skip
    assert server.requests[1]["headers"]["content-type"] == "application/json"
    assert "content-type" not in server.requests[2]["headers"]


async def test_the_api_key_is_sent_and_a_refused_connection_is_retryable() -> None:
    port = free_port()
    client = WahaClient(f"http://127.0.0.1:{port}", api_key="s3cret", transport=LeanHTTPTransport())
    with pytest.raises(WahaRetryable) as refused:
        await client.send_text("default", CHAT, "olá")
    assert refused.value.status is None
    await client.aclose()
    fake = FakeWahaServer()
    fake.port = port
    fake.answers = [(201, {"id": f"true_{CHAT}_3EB0BB"}, {})]
    listening = await asyncio.start_server(fake.handle, "127.0.0.1", port)
    async with listening:
        client = WahaClient(
            f"http://127.0.0.1:{port}", api_key="s3cret", transport=LeanHTTPTransport()
        )
        assert (await client.send_text("default", CHAT, "olá")).short_id == "3EB0BB"
        await client.aclose()
    assert fake.requests[0]["headers"]["x-api-key"] == "s3cret"


async def test_requests_are_written_as_httpx_wrote_them_below_a_base_path(
    server: FakeWahaServer,
) -> None:
    """The calls are written out as bytes on the lean transport (`Origin`): the Host field with
    its port, the API key, the JSON body's length in bytes, and a WAHA published below a path
    (behind a proxy) reached there."""
    server.answers = [(201, {"id": f"true_{CHAT}_3EB0CC"}, {}), (200, {"status": "WORKING"}, {})]
    base = f"http://127.0.0.1:{server.port}/waha/"
    client = WahaClient(base, api_key="k3y", transport=LeanHTTPTransport())
    assert (await client.send_text("default", CHAT, "olá, tudo bem? 😀")).short_id == "3EB0CC"
    assert await client.session_status("default") == "WORKING"
    await client.aclose()
    sent, read = server.requests
    assert (sent["method"], sent["path"]) == ("POST", "/waha/api/sendText")
    assert (read["method"], read["path"]) == ("GET", "/waha/api/sessions/default")
    assert sent["headers"]["host"] == f"127.0.0.1:{server.port}"
    assert sent["headers"]["x-api-key"] == read["headers"]["x-api-key"] == "k3y"
    assert sent["headers"]["accept"] == "application/json"
    assert int(sent["headers"]["content-length"]) == len(sent["body"])
    assert orjson.loads(sent["body"])["text"] == "olá, tudo bem? 😀"


async def test_no_answer_in_time_is_retryable_on_the_lean_transport() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(5)
        writer.close()

    port = free_port()
    listening = await asyncio.start_server(silent, "127.0.0.1", port)
    async with listening:
        client = WahaClient(
            f"http://127.0.0.1:{port}", timeout_seconds=0.2, transport=LeanHTTPTransport()
        )
        with pytest.raises(WahaRetryable, match="ReadTimeout") as timed_out:
            await client.send_text("default", CHAT, "olá")
        await client.aclose()
    assert timed_out.value.status is None


def test_an_origin_writes_the_request_line_fields_and_body() -> None:
    origin = Origin.of("http://waha:3000", {"Accept": "application/json"})
    assert origin is not None and origin.key == ("http", "waha", 3000)
    body = '{"text":"olá"}'.encode()
    assert origin.request("POST", "/api/sendText", body, "application/json") == (
        b"POST /api/sendText HTTP/1.1\r\nHost: waha:3000\r\nAccept: application/json\r\n"
        b"Content-Type: application/json\r\nContent-Length: 15\r\n\r\n" + body
    )
    assert origin.request("GET", "/api/sessions/default", None) == (
        b"GET /api/sessions/default HTTP/1.1\r\nHost: waha:3000\r\nAccept: application/json\r\n\r\n"
    )
    assert Origin.of("http://[::1]:3000/", {}) == Origin(
        ("http", "::1", 3000), b"", b"Host: [::1]:3000\r\n"
    )
    assert Origin.of("https://waha.example", {}).key == ("https", "waha.example", 443)  # type: ignore[union-attr]
    assert Origin.of("ftp://waha", {}) is None
