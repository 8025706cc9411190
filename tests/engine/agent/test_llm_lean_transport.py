"""The model's Groq client (engine/agent/llm.py make_client, also the transcriber's) on the lean
HTTP/1.1 transport (shared/lean_http.py): the SDK takes it as its http_client, and a chat
completion over real TLS (a local server with a certificate made at test time, answering in
Groq's shapes: tests/engine/agent/fake_groq.py) comes back as the same ModelTurn, with Groq's
failures sorted as before (429 with its retry-after, a timeout, an untrusted certificate)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from engine.agent.llm import ChatModel, LLMUnavailable, make_client
from engine.parts import transcriber
from shared.lean_http import LeanHTTPTransport
from shared.settings import Settings
from tests.engine.agent.fake_groq import MODEL, completion, rate_limited, ratelimit_headers
from tests.support.tls import Behaviour, Certificate, Seen, TLSServer, answer, self_signed

MESSAGES = [{"role": "user", "content": "Oi! Quero marcar uma consulta"}]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def groq_server(certificate: Certificate) -> AsyncIterator[Callable[[Behaviour], TLSServer]]:
    servers: list[TLSServer] = []

    async def make(behaviour: Behaviour) -> TLSServer:
        server = TLSServer(certificate, behaviour)
        servers.append(server)
        await server.start()
        return server

    yield make  # type: ignore[misc]
    for server in servers:
        await server.stop()


def as_raw(response: httpx.Response) -> bytes:
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    return answer(response.status_code, response.content, headers)


def chat_completion(_: Seen) -> bytes:
    body = orjson.dumps(completion("Olá! Tenho horário amanhã às 10:00."))
    return answer(200, body, {"Content-Type": "application/json", **ratelimit_headers()})


def model_on(server: TLSServer, trusted: Any, timeout_seconds: float = 10.0) -> ChatModel:
    transport = LeanHTTPTransport(ssl_context=trusted)
    client = make_client(
        api_key="gsk_test",
        base_url=server.url,
        timeout_seconds=timeout_seconds,
        http_client=httpx.AsyncClient(transport=transport),
    )
    return ChatModel(client, model=MODEL, max_retries=0, max_completion_tokens=512)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"groq_api_key": "gsk_test", "groq_base_url": "https://api.groq.com"}
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


async def test_the_model_and_transcriber_clients_are_on_the_lean_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = make_client(api_key="k", base_url="https://api.groq.com", timeout_seconds=30)
    built = transcriber(settings())
    assert built is not None
    try:
        assert isinstance(client._client, httpx.AsyncClient)
        assert isinstance(client._client._transport, LeanHTTPTransport)
        assert isinstance(built.client._client._transport, LeanHTTPTransport)
    finally:
        await client.close()
        await built.aclose()


async def test_a_proxy_from_the_environment_keeps_the_sdk_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The lean transport speaks no proxy protocol: a deployment behind HTTPS_PROXY keeps
    # httpx's own client, which honours it; NO_PROXY for Groq's host brings the lean one back.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = make_client(api_key="k", base_url="https://api.groq.com", timeout_seconds=30)
    monkeypatch.setenv("NO_PROXY", "api.groq.com")
    direct = make_client(api_key="k", base_url="https://api.groq.com", timeout_seconds=30)
    try:
        assert not isinstance(proxied._client._transport, LeanHTTPTransport)
        assert isinstance(direct._client._transport, LeanHTTPTransport)
    finally:
        await proxied.close()
        await direct.close()


async def test_a_chat_completion_over_tls(
    groq_server: Callable[[Behaviour], Any], certificate: Certificate
) -> None:
    server: TLSServer = await groq_server(chat_completion)
    model = model_on(server, certificate.trusting_context())
    try:
        first = await model.complete(MESSAGES, [])
        second = await model.complete(MESSAGES, [])
    finally:
        await model.client.close()
    assert first.content == second.content == "Olá! Tenho horário amanhã às 10:00."
    assert first.tokens == 812 + 57
    assert [(r.method, r.path) for r in server.requests] == [
        ("POST", "/openai/v1/chat/completions")
    ] * 2
    sent = orjson.loads(server.requests[0].body)
    assert sent["model"] == MODEL and sent["messages"] == MESSAGES
    assert server.requests[0].headers["authorization"] == "Bearer gsk_test"
    assert server.connections == 1  # kept alive between the two calls


async def test_groq_failures_over_tls_are_sorted_as_before(
    groq_server: Callable[[Behaviour], Any], certificate: Certificate, tmp_path: Path
) -> None:
    limited: TLSServer = await groq_server(lambda _: as_raw(rate_limited(7)))
    model = model_on(limited, certificate.trusting_context())
    with pytest.raises(LLMUnavailable) as refused:
        await model.complete(MESSAGES, [])
    await model.client.close()
    assert refused.value.reason == "rate_limited" and refused.value.retry_after == 7

    silent: TLSServer = await groq_server(lambda _: "hang")
    model = model_on(silent, certificate.trusting_context(), timeout_seconds=0.2)
    with pytest.raises(LLMUnavailable) as slow:
        await model.complete(MESSAGES, [])
    await model.client.close()
    assert slow.value.reason == "timeout"

    answering: TLSServer = await groq_server(chat_completion)
    model = model_on(answering, self_signed(tmp_path).trusting_context())
    with pytest.raises(LLMUnavailable) as untrusted:
        await model.complete(MESSAGES, [])
    await model.client.close()
    assert untrusted.value.reason == "connection_error"
    assert "CERTIFICATE_VERIFY_FAILED" in str(untrusted.value.__cause__.__cause__)
    assert answering.requests == []  # nothing went to a server that was not verified
