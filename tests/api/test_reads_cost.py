"""What a read of the operator API costs, counted in commands on a Redis of the test's own
(INFO commandstats, reset just before the request): the conversations list reads one page and
its details, not every conversation ever; a /metrics scrape reads a bounded number of
outboxes. And the erase forgets the bookings while it holds the conversation's lease."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from fastapi import FastAPI

from api.app import create_app
from api.routes import ops
from engine.state import State
from shared.embedded_redis import EmbeddedRedis
from shared.keys import conversation_token, engine_keys_for
from tests.api.conftest import API_AUTH, API_TOKEN
from tests.api.support import T0, chat, outbox_gauge, pend, seed
from tests.engine.harness import settings_for


@dataclass
class Counted:
    app: FastAPI
    http: httpx.AsyncClient
    sync: redis.Redis
    prefix: str

    def reset(self) -> None:
        self.sync.config_resetstat()

    def calls(self) -> dict[str, int]:
        """Commands run since reset(), by name (INFO itself left out)."""
        stats = self.sync.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(stat["calls"])
            for name, stat in stats.items()
            if name != "cmdstat_info"
        }


@pytest.fixture
def sync_private(private_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis.url)
    yield client
    client.close()


@pytest.fixture
async def counted(
    private_redis: EmbeddedRedis, sync_private: redis.Redis, key_prefix: str
) -> AsyncIterator[Counted]:
    client = redis.asyncio.Redis.from_url(private_redis.url)
    settings = settings_for(key_prefix, private_redis.url, api_token=API_TOKEN, queue_shards=1)
    app = create_app(settings, client)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            yield Counted(app, http, sync_private, key_prefix)
    finally:
        await client.aclose()


async def test_the_list_reads_one_page_not_every_conversation(counted: Counted) -> None:
    for n in range(30):
        seed(counted.sync, counted.prefix, "default", chat(n), State.BOT, T0 + n)
    counted.reset()
    response = await counted.http.get("/api/conversations?limit=5", headers=API_AUTH)
    assert response.status_code == 200
    assert [c["chat_id"] for c in response.json()] == [chat(n) for n in (29, 28, 27, 26, 25)]
    calls = counted.calls()
    # One range of the index, then the page's details: state, place in line, outbox.
    assert calls.get("zrevrange") == 1
    assert calls.get("hgetall") == calls.get("zrank") == calls.get("llen") == 5
    assert "smembers" not in calls


async def test_a_filtered_list_reads_only_what_its_page_needs(counted: Counted) -> None:
    for n in range(40):
        session = "a" if n % 2 else "b"
        state = State.WAITING if n % 4 in (0, 1) else State.BOT
        seed(counted.sync, counted.prefix, session, chat(n), state, T0 + n)
    # Listed as waiting, but the state (the truth) moved on: it takes no place in the page.
    stale = chat(99)
    seed(counted.sync, counted.prefix, "a", stale, State.WAITING, T0 + 99)
    key = engine_keys_for("a", stale, 1, counted.prefix).state
    counted.sync.hset(key, "state", State.BOT.value)
    counted.reset()
    response = await counted.http.get(
        "/api/conversations?state=waiting&session=a&limit=3", headers=API_AUTH
    )
    assert response.status_code == 200
    page = response.json()
    assert [c["chat_id"] for c in page] == [chat(n) for n in (37, 33, 29)]
    assert {(c["session"], c["state"]) for c in page} == {("a", "waiting")}
    calls = counted.calls()
    assert calls.get("hgetall") == 4  # the stale one, then the page of three
    assert "smembers" not in calls
    # By session alone: the index is walked in chunks until the page is full.
    counted.reset()
    response = await counted.http.get("/api/conversations?session=b&limit=2", headers=API_AUTH)
    assert [c["chat_id"] for c in response.json()] == [chat(38), chat(36)]
    assert counted.calls().get("hgetall") == 2


async def test_a_scrape_reads_a_bounded_number_of_outboxes(
    counted: Counted, monkeypatch: Any
) -> None:
    for n in range(5):
        pend(counted.sync, counted.prefix, chat(n), replies=n + 1, due=T0 + n)
    counted.reset()
    metrics = (await counted.http.get("/metrics")).text
    assert outbox_gauge(metrics) == 15  # every reply, while the pending are few
    assert counted.calls().get("llen") == 5
    # A backlog: beyond the bound each pending conversation counts as one reply (the least it
    # holds), and the scrape reads no more outboxes than the bound.
    monkeypatch.setattr(ops, "OUTBOXES_READ_PER_SHARD", 2)
    counted.reset()
    metrics = (await counted.http.get("/metrics")).text
    assert outbox_gauge(metrics) == 1 + 2 + 3
    assert counted.calls().get("llen") == 2


async def test_the_erase_forgets_bookings_while_it_holds_the_conversation(
    counted: Counted, monkeypatch: Any
) -> None:
    token = conversation_token("default", chat(1))
    meta = engine_keys_for("default", chat(1), 1, counted.prefix).conversation.meta
    bookings = counted.app.state.api.bookings
    erase_bookings = bookings.erase_customer
    seen: list[Any] = []

    async def watched(customer: str) -> int:
        seen.append((customer, counted.sync.hget(meta, "owner")))
        return await erase_bookings(customer) + 7  # as if seven bookings went

    monkeypatch.setattr(bookings, "erase_customer", watched)
    response = await counted.http.delete(f"/api/contacts/default/{chat(1)}", headers=API_AUTH)
    assert response.status_code == 200 and response.json()["removed"] >= 7
    [(customer, owner)] = seen
    assert customer == token
    assert owner is not None and owner.startswith(b"erase:")
