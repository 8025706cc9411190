"""The lean HTTP/1.1 transport over `https://` (shared/lean_http.py; Groq's API is https):
asyncio's TLS with the certificate verified and SNI sent, keep-alive per (scheme, host, port),
a stale pooled connection sent again once (never more), timeouts as httpx's exceptions. Against
a real local TLS server with a certificate made at test time (tests/support/tls.py); the
transport trusts it only through the ssl context it is handed."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvloop

from shared.embedded_redis import free_port
from shared.lean_http import LeanHTTPTransport
from tests.support.tls import Behaviour, Certificate, Seen, TLSServer, answer, self_signed

Serve = Callable[..., TLSServer]  # (behaviour, presented certificate=the module's) -> server
Connect = Callable[..., AbstractAsyncContextManager[tuple[TLSServer, httpx.AsyncClient]]]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def serve(certificate: Certificate) -> AsyncIterator[Serve]:
    servers: list[TLSServer] = []

    def make(behaviour: Behaviour, presented: Certificate | None = None) -> TLSServer:
        server = TLSServer(presented or certificate, behaviour)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def echo(seen: Seen) -> bytes:
    body = orjson.dumps({"path": seen.path, "got": orjson.loads(seen.body or b"null")})
    return answer(200, body, {"Content-Type": "application/json"})


@pytest.fixture
def connect(serve: Serve, certificate: Certificate) -> Connect:
    """A started server answering with `behaviour`, and a client to it through the transport,
    trusting the module's certificate (`options`: httpx.AsyncClient's)."""

    @contextlib.asynccontextmanager
    async def make(
        behaviour: Behaviour, **options: Any
    ) -> AsyncIterator[tuple[TLSServer, httpx.AsyncClient]]:
        server = serve(behaviour)
        await server.start()
        transport = LeanHTTPTransport(ssl_context=certificate.trusting_context())
        async with httpx.AsyncClient(transport=transport, **options) as client:
            yield server, client

    return make


async def test_https_answers_with_sni_and_reuses_the_connection(connect: Connect) -> None:
    async with connect(echo) as (server, client):
        first = await client.post(f"{server.url}/openai/v1/chat/completions?x=1", json={"n": 1})
        second = await client.post(f"{server.url}/openai/v1/chat/completions", json={"n": 2})
    assert first.status_code == second.status_code == 200
    assert first.json() == {"path": "/openai/v1/chat/completions?x=1", "got": {"n": 1}}
    assert second.json()["got"] == {"n": 2}
    # One TLS connection for both (kept alive), its handshake named the URL's host.
    assert server.connections == 1 and [r.connection for r in server.requests] == [0, 0]
    assert server.server_names == ["localhost"]
    assert server.requests[0].headers["host"] == f"localhost:{server.port}"


async def test_a_compressed_answer_is_decoded(connect: Connect) -> None:
    body = gzip.compress(orjson.dumps({"ok": True}))
    gzipped = answer(200, body, {"Content-Encoding": "gzip"})
    async with connect(lambda _: gzipped) as (server, client):
        response = await client.get(f"{server.url}/x")
    assert response.json() == {"ok": True}


async def test_a_streamed_body_goes_with_its_length(connect: Connect) -> None:
    # httpx marks a body of unknown length chunked; the transport sends it whole, with its
    # length (the server reads exactly Content-Length bytes).
    async def parts() -> AsyncIterator[bytes]:
        yield b'{"n": '
        yield b"7}"

    async with connect(echo) as (server, client):
        response = await client.post(f"{server.url}/s", content=parts())
    assert response.json()["got"] == {"n": 7}
    assert "transfer-encoding" not in server.requests[0].headers
    assert server.requests[0].headers["content-length"] == "8"


@pytest.mark.parametrize("who", ["default trust store", "another certificate", "wrong name"])
async def test_an_untrusted_certificate_is_an_error(
    serve: Serve, certificate: Certificate, who: str, tmp_path: Path
) -> None:
    trusted = certificate.trusting_context()
    if who == "default trust store":
        server = serve(echo)
        transport = LeanHTTPTransport()  # httpx's trust store: a self-signed cert is not in it
    elif who == "another certificate":
        server = serve(echo)
        transport = LeanHTTPTransport(ssl_context=self_signed(tmp_path).trusting_context())
    else:
        # The trusted certificate, but asked for by a name it does not carry (localhost).
        other_name = self_signed(tmp_path, name="groq.example")
        server = serve(echo, other_name)
        trusted.load_verify_locations(cafile=str(other_name.cert_pem))
        transport = LeanHTTPTransport(ssl_context=trusted)
    await server.start()
    url = f"{server.url}/x"
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(url)
    assert server.requests == []  # nothing was sent


async def test_a_stale_pooled_connection_is_sent_again_once(connect: Connect) -> None:
    # The kept-alive connection dies under the second request (the server's keep-alive
    # timeout raced it): sent again on a new connection, answered there.
    def behaviour(seen: Seen) -> bytes | str:
        return "close" if len(server.requests) == 2 else echo(seen)

    async with connect(behaviour) as (server, client):
        assert (await client.post(f"{server.url}/a", json=1)).json()["got"] == 1
        assert (await client.post(f"{server.url}/b", json=2)).json()["got"] == 2
    assert [(r.connection, r.path) for r in server.requests] == [(0, "/a"), (0, "/b"), (1, "/b")]


async def test_a_request_is_sent_again_at_most_once(connect: Connect) -> None:
    # After the first answer every connection dies under its request: the stale one is
    # retried once on a new connection, whose failure is the caller's error.
    def behaviour(seen: Seen) -> bytes | str:
        return echo(seen) if len(server.requests) == 1 else "close"

    async with connect(behaviour) as (server, client):
        await client.get(f"{server.url}/a")
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{server.url}/b")
    assert [(r.connection, r.path) for r in server.requests] == [(0, "/a"), (0, "/b"), (1, "/b")]


async def test_a_fresh_connection_closed_is_not_retried(connect: Connect) -> None:
    async with connect(lambda _: "close") as (server, client):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(f"{server.url}/a", json=1)
    assert len(server.requests) == 1


async def test_no_answer_in_time_is_httpx_read_timeout(connect: Connect) -> None:
    async with connect(lambda _: "hang", timeout=0.2) as (server, client):
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{server.url}/a")
    assert len(server.requests) == 1


async def test_a_handshake_that_never_ends_is_httpx_connect_timeout(
    certificate: Certificate,
) -> None:
    # A TCP listener that accepts and never speaks TLS back.
    silent: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    port = free_port()
    listening = await asyncio.start_server(accept, "127.0.0.1", port)
    transport = LeanHTTPTransport(ssl_context=certificate.trusting_context())
    try:
        async with httpx.AsyncClient(transport=transport, timeout=0.2) as client:
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(f"https://127.0.0.1:{port}/a")
    finally:
        for writer in silent:
            writer.close()
        listening.close()
        await listening.wait_closed()
    assert len(silent) == 1  # the connection was made; the handshake is what timed out


async def test_http_and_https_to_one_host_port_are_pooled_apart(connect: Connect) -> None:
    # A plain HTTP server on the TLS server's port would be a different origin: a pooled TLS
    # connection must never carry an http:// request (and the reverse).
    async with connect(echo) as (server, client):
        await client.get(f"{server.url}/a")
        with pytest.raises(httpx.HTTPError):
            await client.get(f"http://localhost:{server.port}/b")
    assert [r.path for r in server.requests] == ["/a"]


def test_https_under_uvloop(certificate: Certificate) -> None:
    """The workers run on uvloop: its TLS behaves the same (verified, kept alive)."""

    async def scenario() -> tuple[int, list[int]]:
        server = TLSServer(certificate, echo)
        await server.start()
        try:
            transport = LeanHTTPTransport(ssl_context=certificate.trusting_context())
            async with httpx.AsyncClient(transport=transport) as client:
                codes = [(await client.get(f"{server.url}/{n}")).status_code for n in range(3)]
            untrusted = LeanHTTPTransport()
            async with httpx.AsyncClient(transport=untrusted) as client:
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"{server.url}/x")
        finally:
            await server.stop()
        return server.connections, codes

    connections, codes = uvloop.run(scenario())
    assert codes == [200, 200, 200]
    assert connections == 1  # one kept alive for the three; the refused one never got in
