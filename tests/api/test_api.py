"""The operator API on a real Redis, with the engine handling what it queues."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from engine.identity import Conversation
from shared.keys import keys_for_conversation
from tests.conftest import keys_with_prefix
from tests.engine.erase_support import booking_store, content, live_a_life, values_of
from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.support.waha import text_message

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-0123456789abcdef0123456"  # >= 32 characters
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


async def test_operator_flow(harness: Harness, client, waha: FakeWaha) -> None:
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
    assert (await client.post("/api/queue/next?agent_id=maria", headers=AUTH)).status_code == 409
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
    assert (await client.get("/api/conversations/default/5511900009999@c.us",
                             headers=AUTH)).status_code == 404  # fmt: skip


async def test_an_unknown_conversations_history_is_an_empty_page(
    client, sync_redis, key_prefix
) -> None:
    """docs/conversations.md: a client polls a chat's history from its first message on,
    before a worker has handled it, so an unknown conversation's history answers an empty page
    (the fleet's tests and `wsm loadtest` poll so), while the conversation itself answers 404.
    Neither stores anything."""
    path = f"/api/conversations/default/{BIA}"
    page = await client.get(f"{path}/messages", params={"limit": 5}, headers=AUTH)
    assert page.status_code == 200
    assert page.json() == {"messages": [], "next_before": None}
    missing = await client.get(path, headers=AUTH)
    assert missing.status_code == 404 and missing.json() == {"detail": "no such conversation"}
    assert keys_with_prefix(sync_redis, key_prefix) == []


async def test_erase_leaves_nothing_that_names_that_customer(
    harness: Harness, sync_redis, key_prefix, client, waha: FakeWaha
) -> None:
    """Every key and every value in Redis (all types) is searched for the erased customer's
    phone number, chat id, conversation token and name: nothing is left, the lid cache entry
    that maps a lid to her number included (her own chat is `@c.us`)."""
    await client.post("/api/agents/maria/online", json={"name": "Maria"}, headers=AUTH)
    store = booking_store(harness)
    names = {ANA: "Ana Souza", BIA: "Bia Lima"}
    for n, chat in enumerate((ANA, BIA)):
        await live_a_life(harness, waha, Conversation("default", chat), names[chat], store, n)
    assert await store.erase_customer("nobody") == 0  # the erase is scoped to one customer
    token = Conversation("default", ANA).token
    needles = [b"5511987650001", ANA.encode(), token.encode(), b"Ana Souza"]
    # She is everywhere before (dead letters, hooks:dead, the lid cache, ...).
    found_before = {
        needle for needle in needles if everything_naming(sync_redis, key_prefix, needle)
    }
    assert found_before == set(needles)
    lid_entries = everything_naming(sync_redis, key_prefix, b"5511987650001")
    assert any(b":lid:" in key for key, _ in lid_entries)
    assert any(key.endswith(b":hooks:dead") for key, _ in lid_entries)
    response = await client.delete(f"/api/contacts/default/{ANA}", headers=AUTH)
    assert response.status_code == 200 and response.json()["removed"] > 0
    for needle in needles:
        assert everything_naming(sync_redis, key_prefix, needle) == [], needle
    # The other customer is untouched.
    assert everything_naming(sync_redis, key_prefix, b"Bia Lima")
    assert (await client.get(f"/api/conversations/default/{BIA}", headers=AUTH)).status_code == 200


def everything_naming(client, prefix: str, needle: bytes) -> list[tuple[bytes, bytes]]:
    """Every (key, key-or-value) of the test's keys whose name or any value holds `needle`."""
    hits = []
    for key in keys_with_prefix(client, prefix):
        if needle in key:
            hits.append((key, key))
        kind, value = content(client, key)
        hits += [(key, v) for v in values_of(kind, value) if needle in v]
    return hits


@pytest.mark.parametrize("state", ["ready", "leased", "delayed"])
async def test_erase_answers_409_while_the_conversation_is_busy(
    harness: Harness, sync_redis, key_prefix, client, waha: FakeWaha, state: str
) -> None:
    """Messages of hers are queued, being handled, or waiting for a retry: 409 (retry
    shortly), and nothing at all was deleted or changed."""
    for text in ("oi", "Ana Souza"):
        await harness.webhook(text_message(ANA, text))
    await harness.drain()
    assert await harness.webhook(text_message(ANA, "mais uma"))
    keys = keys_for_conversation("default", ANA, harness.settings.queue_shards, key_prefix)
    if state != "ready":
        shard = keys.shard_keys
        lease = await harness.consumer.claim(
            shard, await harness.consumer.pop_ready(shard) or "", "worker-1"
        )
        assert lease is not None
        if state == "delayed":
            await harness.consumer.fail(lease, lease.messages[0].id, "try again later")
    assert sync_redis.hget(keys.meta, "state") == state.encode()
    before = {key: sync_redis.dump(key) for key in keys_with_prefix(sync_redis, key_prefix)}
    response = await client.delete(f"/api/contacts/default/{ANA}", headers=AUTH)
    assert response.status_code == 409
    after = {key: sync_redis.dump(key) for key in keys_with_prefix(sync_redis, key_prefix)}
    assert after == before


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
