"""The operator API on a real Redis, with the engine handling what it queues."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from engine.agent.bookings import BookingStore, Customer
from engine.agent.service import calendar_from
from engine.identity import Conversation
from tests.conftest import keys_with_prefix
from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.support.waha import text_message

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ANA = "5511987650001@c.us"
BIA = "5511987650002@c.us"

ROUTES = [
    ("GET", "/api/conversations", None),
    ("GET", f"/api/conversations/default/{ANA}", None),
    ("GET", f"/api/conversations/default/{ANA}/messages", None),
    ("POST", f"/api/conversations/default/{ANA}/messages", {"agent_id": "a", "text": "oi"}),
    ("POST", f"/api/conversations/default/{ANA}/close", None),
    ("POST", f"/api/conversations/default/{ANA}/handback", None),
    ("GET", "/api/queue", None),
    ("POST", "/api/agents/maria/online", {"name": "Maria"}),
    ("POST", "/api/agents/maria/offline", None),
    ("GET", "/api/agents", None),
    ("POST", "/api/queue/next?agent_id=maria", None),
    ("DELETE", f"/api/contacts/default/{ANA}", None),
    ("GET", "/api/sessions", None),
]


@pytest.fixture
async def client(aredis, redis_url, key_prefix):
    settings = settings_for(key_prefix, redis_url, api_token=TOKEN)
    app = create_app(settings, aredis)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield http


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic czNjcmV0LXRva2Vu"}])  # fmt: skip
async def test_every_route_refuses_a_missing_or_wrong_token(
    client, sync_redis, key_prefix, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    before = keys_with_prefix(sync_redis, key_prefix)
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert keys_with_prefix(sync_redis, key_prefix) == before == []


def test_refuses_to_start_without_a_token(redis_url, key_prefix) -> None:
    with pytest.raises(ValueError, match="WSM_API_TOKEN"):
        create_app(settings_for(key_prefix, redis_url), None)
    result = subprocess.run(
        [sys.executable, "-m", "api", "--port", "1"],
        env={"PATH": "/usr/bin:/bin", "WSM_API_TOKEN": "", "REDIS_URL": redis_url},
        capture_output=True, text=True, timeout=60, cwd=str(ROOT),
    )  # fmt: skip
    assert result.returncode == 2
    assert "WSM_API_TOKEN is not set" in result.stderr


async def test_operator_flow(aredis, redis_url, key_prefix, client, waha: FakeWaha) -> None:
    harness = Harness(aredis, settings_for(key_prefix, redis_url))
    try:
        assert (await client.post("/api/agents/maria/online", json={"name": "Maria"},
                                  headers=AUTH)).status_code == 200  # fmt: skip
        # Keep Maria busy so the next two customers wait in line.
        for chat in ("5511900000000@c.us", ANA, BIA):
            for text in ("oi", "Fulano", "3"):
                await harness.webhook(text_message(chat, text))
            await harness.drain()
        line = (await client.get("/api/queue?session=default", headers=AUTH)).json()
        assert [(w["chat_id"], w["position"]) for w in line] == [(ANA, 1), (BIA, 2)]
        assert all(w["waited_seconds"] >= 0 for w in line)
        waiting = (await client.get("/api/conversations?state=waiting", headers=AUTH)).json()
        assert sorted(c["chat_id"] for c in waiting) == [ANA, BIA]
        detail = (await client.get(f"/api/conversations/default/{ANA}", headers=AUTH)).json()
        assert detail["state"] == "waiting" and detail["queue_position"] == 1
        assert detail["phone"] == "5511987650001" and detail["collected"] == {"name": "Fulano"}
        # Maria is full: queue/next refuses; a second agent takes the longest-waiting.
        assert (
            await client.post("/api/queue/next?agent_id=maria", headers=AUTH)
        ).status_code == 409
        await client.post("/api/agents/joao/online", json={"name": "João"}, headers=AUTH)
        await harness.drain()
        assert waha.to(ANA)[-1] == "João vai te atender agora. 🙋"
        assert waha.to(BIA)[-1].startswith("Você é o próximo da fila!")
        # An agent writes; then hands the customer back to the bot.
        response = await client.post(
            f"/api/conversations/default/{ANA}/messages",
            json={"agent_id": "joao", "agent_name": "João", "text": "Olá, sou o João!"},
            headers=AUTH,
        )
        assert response.status_code == 202 and response.json()["queued"] is True
        await harness.drain()
        assert waha.to(ANA)[-1] == "Olá, sou o João!"
        page = (await client.get(f"/api/conversations/default/{ANA}/messages?limit=2",
                                 headers=AUTH)).json()  # fmt: skip
        assert [m["text"] for m in page["messages"]][-1] == "Olá, sou o João!"
        assert page["messages"][-1]["direction"] == "out"
        assert page["messages"][-1]["status"] == "sent" and page["messages"][-1]["waha_id"]
        older = (await client.get(
            f"/api/conversations/default/{ANA}/messages?limit=100&before={page['next_before']}",
            headers=AUTH,
        )).json()  # fmt: skip
        assert older["messages"][0]["text"] == "oi" and older["next_before"] is None
        bad = await client.get(f"/api/conversations/default/{ANA}/messages?before=x", headers=AUTH)
        assert bad.status_code == 400
        await client.post(f"/api/conversations/default/{ANA}/handback", headers=AUTH)
        await harness.drain()
        assert waha.to(ANA)[-1] == "Você voltou ao atendimento automático."
        assert (await client.get(f"/api/conversations/default/{ANA}", headers=AUTH)).json()[
            "state"
        ] == "bot"
        await client.post(f"/api/conversations/default/{BIA}/close", headers=AUTH)
        await harness.drain()
        assert (await client.get(f"/api/conversations/default/{BIA}", headers=AUTH)).json()[
            "state"
        ] == "closed"
        metrics = (await client.get("/metrics")).text
        assert 'wsm_conversations{state="closed"} 1.0' in metrics
        assert 'wsm_waiting_line_length{session="default"} 0.0' in metrics
        assert "wsm_outbox_pending 0.0" in metrics
        assert (await client.get("/api/conversations/default/nobody@c.us",
                                 headers=AUTH)).status_code == 404  # fmt: skip
    finally:
        await harness.aclose()


async def test_erase_leaves_no_key_of_that_customer(
    aredis, sync_redis, redis_url, key_prefix, client, waha: FakeWaha
) -> None:
    harness = Harness(aredis, settings_for(key_prefix, redis_url))
    try:
        await client.post("/api/agents/maria/online", json={"name": "Maria"}, headers=AUTH)
        for chat in (ANA, BIA):
            for text in ("oi", "Ana Souza", "3"):
                await harness.webhook(text_message(chat, text))
            await harness.drain()
        lid = "123456789@lid"
        await aredis.set(f"{key_prefix}:{{s:default}}:lid:{lid}", "5511987650001")
        # A booking of hers, made by the agent's tools (it lives under the calendar's keys).
        settings = settings_for(key_prefix, redis_url)
        calendar = calendar_from(settings)
        store = BookingStore(
            aredis, calendar, prefix=key_prefix, max_per_customer=3,
            retention_seconds=3600, webhook_enabled=False,
        )  # fmt: skip
        now = calendar.now()
        slot = next(
            calendar.slots(calendar.services[0], now.date(), now.date() + timedelta(days=14), now)
        )
        ana_token = Conversation("default", ANA).token
        await store.book(Customer(ana_token, "Ana Souza", "5511987650001"), slot, booking_id="bk1")
        assert await store.erase_customer("nobody") == 0  # the erase is scoped to one customer
        response = await client.delete(f"/api/contacts/default/{ANA}", headers=AUTH)
        assert response.status_code == 200 and response.json()["removed"] > 0
        token = Conversation("default", ANA).token
        for key in keys_with_prefix(sync_redis, key_prefix):
            assert ANA.encode() not in key, key
            kind = sync_redis.type(key)
            if kind == b"string":
                values = [sync_redis.get(key) or b""]
            elif kind == b"hash":
                values = [b"%s=%s" % kv for kv in sync_redis.hgetall(key).items()]
            elif kind == b"list":
                values = sync_redis.lrange(key, 0, -1)
            elif kind == b"set":
                values = list(sync_redis.smembers(key))
            elif kind == b"zset":
                values = sync_redis.zrange(key, 0, -1)
            else:  # stream
                values = [repr(e).encode() for e in sync_redis.xrange(key)]
            for value in values:
                assert ANA.encode() not in value and token.encode() not in value, (key, value)
        # The other customer is untouched.
        assert (
            await client.get(f"/api/conversations/default/{BIA}", headers=AUTH)
        ).status_code == 200
    finally:
        await harness.aclose()


async def test_redis_down_answers_503_with_retry_after(private_redis, key_prefix) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(private_redis.url, socket_connect_timeout=0.5)
    settings = settings_for(key_prefix, private_redis.url, api_token=TOKEN)
    app = create_app(settings, client)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            assert (await http.get("/api/conversations", headers=AUTH)).status_code == 200
            private_redis.kill()
            response = await http.get("/api/conversations", headers=AUTH)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
    finally:
        await client.aclose()
