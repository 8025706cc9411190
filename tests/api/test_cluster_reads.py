"""The operator API's pipelined reads on a Redis Cluster: a page's details sit on several
nodes (each conversation's shard tag, the line's tag), and redis-py's cluster pipeline sends
each node its part."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.cluster import RedisCluster

from api.app import create_app
from engine.state import State
from shared.keys import engine_keys_for
from shared.redis_client import connect
from tests.api.conftest import API_AUTH, API_TOKEN
from tests.api.support import T0, chat, outbox_gauge, pend, seed
from tests.engine.harness import settings_for

SHARDS = 6  # the conversations spread over the three masters


@pytest.fixture
async def on_cluster(
    redis_cluster_url: str, key_prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    client = connect(redis_cluster_url)
    sync = RedisCluster.from_url("redis://" + redis_cluster_url.removeprefix("redis+cluster://"))
    settings = settings_for(key_prefix, redis_cluster_url, api_token=API_TOKEN, queue_shards=SHARDS)
    transport = httpx.ASGITransport(app=create_app(settings, client))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            yield http, sync
    finally:
        sync.close()
        await client.aclose()


async def test_a_page_and_a_scrape_on_the_cluster(
    on_cluster: tuple[httpx.AsyncClient, Any], key_prefix: str
) -> None:
    http, sync = on_cluster
    for n in range(12):
        state = State.WAITING if n % 2 else State.BOT
        seed(sync, key_prefix, "default", chat(n), state, T0 + n, shards=SHARDS)
        pend(sync, key_prefix, chat(n), replies=1, due=T0 + n, shards=SHARDS)
    # The page's details are on more than one node.
    nodes = {
        sync.nodes_manager.get_node_from_slot(
            sync.keyslot(engine_keys_for("default", chat(n), SHARDS, key_prefix).state)
        ).name
        for n in (11, 10, 9, 8)
    }
    assert len(nodes) > 1
    page = (await http.get("/api/conversations?limit=4", headers=API_AUTH)).json()
    assert [c["chat_id"] for c in page] == [chat(n) for n in (11, 10, 9, 8)]
    assert [c["outbox_pending"] for c in page] == [1, 1, 1, 1]
    waiting = (await http.get("/api/conversations?state=waiting&limit=2", headers=API_AUTH)).json()
    assert [c["chat_id"] for c in waiting] == [chat(11), chat(9)]
    one = await http.get(f"/api/conversations/default/{chat(3)}", headers=API_AUTH)
    assert one.json()["state"] == "waiting"
    metrics = (await http.get("/metrics")).text
    assert outbox_gauge(metrics) == 12
    assert 'wsm_conversations{state="waiting"} 6.0' in metrics
