"""The real gateway behind the real nginx (the project's template) on loopback.

Clients speak from different loopback addresses (127.0.0.x), so each test is its own client
IP to nginx's per-IP limits. The /api/ upstream is a recording stand-in: it shows what nginx
passes on, and any upstream answer is fine where nginx's own 429 is what is tested.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from shared.keys import keys_for_conversation
from tests.ops.conftest import API_TOKEN, HMAC_KEY, Api, Gateway
from tests.ops.nginx_harness import (
    NGINX_PROGRAM,
    NginxPrefix,
    free_port,
    loopback_values,
    running_nginx,
)
from tests.ops.standins import RecordingUpstream
from tests.support.tools import require_program
from tests.support.waha import compact, text_message, webhook_headers

SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
WEBHOOK_BURST = 10
API_BURST = 5


@dataclass
class Edge:
    url: str
    prefix: NginxPrefix
    gateway: Gateway
    api: RecordingUpstream


@pytest.fixture(scope="module")
def edge(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    nginx = require_program(NGINX_PROGRAM)
    port, api_port = free_port(), free_port()
    values = loopback_values(
        port=port,
        gateway=f"127.0.0.1:{gateway.port}",
        api=f"127.0.0.1:{api_port}",
        # One request a minute beyond the burst: however slow the machine, a burst of sequential
        # requests gets exactly burst + 1 through. Each test speaks from its own address.
        webhook_rate="1r/m",
        webhook_burst=WEBHOOK_BURST,
        api_rate="1r/m",
        api_burst=API_BURST,
    )
    prefix = NginxPrefix(tmp_path_factory.mktemp("nginx"), values)
    with (
        RecordingUpstream("127.0.0.1", api_port, "api") as api,
        running_nginx(nginx, prefix, port),
    ):
        yield Edge(f"http://127.0.0.1:{port}", prefix, gateway, api)


def client_from(address: str) -> httpx.Client:
    """An HTTP client whose connections come from `address` (any 127.0.0.0/8 address is local)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10.0)


def signed_message(chat: str, text: str = "Olá, tudo bem? 😊") -> tuple[bytes, dict[str, str]]:
    body = compact(text_message(chat, text))
    return body, webhook_headers(body, HMAC_KEY)


def new_chat() -> str:
    return f"55119{uuid.uuid4().int % 10**8:08d}@c.us"


def queued_ids(client: redis.Redis, prefix: str, chat: str) -> list[bytes | str]:
    keys = keys_for_conversation("default", chat, 1, prefix)
    ids: list[bytes | str] = client.lrange(keys.messages, 0, -1)
    return ids


def keys_mentioning(client: redis.Redis, prefix: str, text: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}:*{text}*", count=1000))


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.status_code)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers.get("x-request-id", ""))


def gateway_counter(gateway: Gateway, outcome: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    match = re.search(rf'^wsm_webhook_requests_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    assert match, f"no wsm_webhook_requests_total{{outcome={outcome!r}}} in the gateway's metrics"
    return float(match.group(1))


def test_signed_webhook_through_nginx_is_queued(edge: Edge, sync_redis: redis.Redis) -> None:
    chat = new_chat()
    body, headers = signed_message(chat, "Quero marcar uma consulta, por favor 🙏")
    with client_from("127.0.0.2") as client:
        response = client.post(f"{edge.url}/webhook", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "queued"}
    assert_security_headers(response)

    ids = queued_ids(sync_redis, edge.gateway.prefix, chat)
    assert len(ids) == 1
    keys = keys_for_conversation("default", chat, 1, edge.gateway.prefix)
    record = sync_redis.hget(keys.bodies, ids[0])
    assert isinstance(record, bytes)
    assert record.endswith(body), "the raw signed body, byte for byte"

    # nginx's JSON access log has the line, tied to the answer by the request id.
    entry = next(
        e
        for e in edge.prefix.access_entries()
        if e["request_id"] == response.headers["x-request-id"]
    )
    assert (entry["uri"], entry["status"], entry["upstream_status"]) == ("/webhook", 200, "200")
    assert entry["remote_addr"] == "127.0.0.2"
    assert entry["waha_request_id"] == headers["x-webhook-request-id"]


def test_burst_over_the_limit_gets_429_with_security_headers(
    edge: Edge, sync_redis: redis.Redis
) -> None:
    chat = new_chat()
    responses = []
    with client_from("127.0.0.3") as client:
        for n in range(WEBHOOK_BURST * 3):
            body, headers = signed_message(chat, f"mensagem {n}")
            responses.append(client.post(f"{edge.url}/webhook", content=body, headers=headers))
        # Per client IP: another address is not limited by this one's burst.
        with client_from("127.0.0.4") as other:
            body, headers = signed_message(new_chat())
            assert (
                other.post(f"{edge.url}/webhook", content=body, headers=headers).status_code == 200
            )

    statuses = [response.status_code for response in responses]
    # limit_req with burst and nodelay: the first request and `burst` more pass at once.
    assert statuses == [200] * (WEBHOOK_BURST + 1) + [429] * (len(statuses) - WEBHOOK_BURST - 1)
    for response in responses:
        assert_security_headers(response)
    for response in (r for r in responses if r.status_code == 429):
        assert response.json() == {"error": "too_many_requests"}
        assert response.headers["retry-after"] == "1"
    for response in (r for r in responses if r.status_code == 200):
        assert response.json() == {"status": "queued"}
        assert "retry-after" not in response.headers

    # Exactly the accepted ones were queued; the refused ones left nothing in Redis.
    assert len(queued_ids(sync_redis, edge.gateway.prefix, chat)) == statuses.count(200)
    rejected = {
        e["request_id"] for e in edge.prefix.access_entries() if e["limit_req"] == "REJECTED"
    }
    assert {r.headers["x-request-id"] for r in responses if r.status_code == 429} <= rejected


def test_two_mib_body_is_refused_by_nginx(edge: Edge, sync_redis: redis.Redis) -> None:
    chat = new_chat()
    body, headers = signed_message(chat, "x" * (2 * 1024 * 1024))
    too_large_before = gateway_counter(edge.gateway, "too_large")
    with client_from("127.0.0.5") as client:
        response = client.post(f"{edge.url}/webhook", content=body, headers=headers)
    assert response.status_code == 413
    assert response.json() == {"error": "payload_too_large"}
    assert_security_headers(response)
    # nginx refused it: the gateway never saw it, and nothing was stored.
    assert gateway_counter(edge.gateway, "too_large") == too_large_before
    assert keys_mentioning(sync_redis, edge.gateway.prefix, chat) == []
    entry = next(
        e
        for e in edge.prefix.access_entries()
        if e["request_id"] == response.headers["x-request-id"]
    )
    assert entry["upstream_addr"] == ""


def test_a_body_at_the_cap_still_reaches_the_gateway(edge: Edge) -> None:
    """The other side of the 413: nginx's cap is not below the gateway's."""
    body, headers = signed_message(new_chat(), "y")
    padded = body[:-1] + b" " * (1024 * 1024 - len(body)) + body[-1:]
    assert len(padded) == 1024 * 1024
    headers = webhook_headers(padded, HMAC_KEY)
    with client_from("127.0.0.6") as client:
        response = client.post(f"{edge.url}/webhook", content=padded, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "queued"}


@pytest.mark.parametrize(
    "path",
    ["/metrics", "/healthz", "/readyz", "/api/../metrics", "/webhook/../metrics", "/%6detrics"],
)
def test_metrics_are_not_reachable_through_nginx(edge: Edge, path: str) -> None:
    # The gateway does serve them, directly: the refusal is nginx's.
    direct = httpx.get(f"{edge.gateway.url}/metrics", timeout=5)
    assert direct.status_code == 200 and "wsm_webhook_requests_total" in direct.text
    with client_from("127.0.0.7") as client:
        response = client.get(f"{edge.url}{path}")
    assert response.status_code == 404, path
    assert response.json() == {"error": "not_found"}
    assert "wsm_" not in response.text
    assert_security_headers(response)


def test_api_has_its_own_limit(edge: Edge) -> None:
    with client_from("127.0.0.8") as client:
        responses = [client.get(f"{edge.url}/api/conversations") for _ in range(API_BURST * 4)]
        # The webhook limit is separate: this client may still post webhooks.
        body, headers = signed_message(new_chat())
        assert client.post(f"{edge.url}/webhook", content=body, headers=headers).status_code == 200
    statuses = [response.status_code for response in responses]
    assert [status == 429 for status in statuses] == [False] * (API_BURST + 1) + [True] * (
        len(statuses) - API_BURST - 1
    ), statuses
    for response in responses:
        assert_security_headers(response)
        if response.status_code == 429:
            assert response.json() == {"error": "too_many_requests"}
        else:
            assert response.json() == {"upstream": "api"}


def test_client_ip_and_request_id_are_passed_on(edge: Edge) -> None:
    with client_from("127.0.0.9") as client:
        response = client.get(
            f"{edge.url}/api/conversations?state=waiting",
            headers={"x-forwarded-for": "203.0.113.7", "x-request-id": "forged"},
        )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    seen = next(r for r in edge.api.requests if r.headers.get("x-request-id") == request_id)
    assert seen.path == "/api/conversations?state=waiting"
    # This is the edge: a client's own X-Forwarded-For is replaced, not trusted.
    assert seen.headers["x-real-ip"] == "127.0.0.9"
    assert seen.headers["x-forwarded-for"] == "127.0.0.9"
    assert request_id != "forged"


def test_upstream_down_answers_json_503_with_headers(
    gateway: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A gateway that is gone: WAHA gets a fast 503 (and retries), not a hang."""
    nginx = require_program(NGINX_PROGRAM)
    port = free_port()
    values = loopback_values(port=port, gateway=f"127.0.0.1:{free_port()}", api="127.0.0.1:1")
    prefix = NginxPrefix(tmp_path_factory.mktemp("nginx-down"), values)
    with running_nginx(nginx, prefix, port), client_from("127.0.0.10") as client:
        body, headers = signed_message(new_chat())
        response = client.post(f"http://127.0.0.1:{port}/webhook", content=body, headers=headers)
    assert response.status_code == 503
    assert response.json() == {"error": "upstream_unavailable"}
    assert_security_headers(response)


def test_the_real_api_behind_nginx(
    gateway: Gateway, api: Api, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """/api/ reaches the operator API: its own 401 without the token, 200 with it, and nginx's
    headers on both."""
    nginx = require_program(NGINX_PROGRAM)
    port = free_port()
    values = loopback_values(
        port=port, gateway=f"127.0.0.1:{gateway.port}", api=f"127.0.0.1:{api.port}"
    )
    prefix = NginxPrefix(tmp_path_factory.mktemp("nginx-api"), values)
    with running_nginx(nginx, prefix, port), client_from("127.0.0.11") as client:
        refused = client.get(f"http://127.0.0.1:{port}/api/conversations")
        allowed = client.get(
            f"http://127.0.0.1:{port}/api/conversations",
            headers={"authorization": f"Bearer {API_TOKEN}"},
        )
    assert refused.status_code == 401
    assert allowed.status_code == 200, allowed.text
    for response in (refused, allowed):
        assert_security_headers(response)
        assert response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    "path",
    ["/api/conversations/default/5511900000001@c.us/media", "/c/default/5511900000001@c.us/media"],
)
def test_a_file_an_attendant_sends_may_be_larger_than_other_bodies(edge: Edge, path: str) -> None:
    # Files attendants send (API and console forms) go through up to
    # NGINX_MEDIA_MAX_BODY_SIZE; the same body anywhere else under /api/ is refused by nginx.
    body = b"x" * (2 * 1024 * 1024)
    with client_from("127.0.0.9") as client:
        seen = len(edge.api.requests)
        response = client.post(f"{edge.url}{path}", content=body)
        assert response.status_code == 200, response.text
        assert [r.path for r in edge.api.requests[seen:]] == [path]
        refused = client.post(f"{edge.url}/api/conversations/default/5511900000001@c.us/messages",
                              content=body)  # fmt: skip
    assert refused.status_code == 413
    assert [r.path for r in edge.api.requests[seen:]] == [path]  # the refused one never reached it
