"""The simulator against the real gateway (`python -m gateway`, real Redis): every event it
sends passes the gateway's HMAC check and is queued; signed with another key, none is."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.ops.processes import running_gateway
from tests.support.polling import async_wait_until
from tests.wsm.waha_sim.conftest import HMAC_KEY, Sim, SimFactory

CHAT = "5511987650052@c.us"


@dataclass
class RunningGateway:
    url: str


@pytest.fixture
def gateway(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway(redis_url, HMAC_KEY, key_prefix, tmp_path / "gateway") as (_, port):
        yield RunningGateway(f"http://127.0.0.1:{port}/webhook")


def stored_keys(client: redis.Redis, prefix: str) -> set[bytes]:
    return set(client.scan_iter(match=f"{prefix}:*", count=1000))


async def finished(sim: Sim, count: int) -> list[dict[str, Any]]:
    async def done() -> list[dict[str, Any]] | None:
        records: list[dict[str, Any]] = await sim.control("GET", "/webhooks/deliveries")
        ok = len(records) >= count and all(r["finished"] for r in records)
        return records if ok else None

    records = await async_wait_until(done, timeout=15, what=f"{count} deliveries to finish")
    assert records is not None
    return records


async def test_every_event_is_accepted_by_the_gateway(
    make_sim: SimFactory, gateway: RunningGateway, sync_redis: redis.Redis, key_prefix: str
) -> None:
    async with make_sim(webhook_urls=(gateway.url,), announce=True, retries_attempts=0) as sim:
        await finished(sim, 2)  # session.status STARTING, WORKING
        await sim.inbound(chat=CHAT, text="Olá, bom dia! Quero agendar ✓")
        await sim.client.post("/api/sendText", json={"chatId": CHAT, "text": "Escolha: 1, 2"})
        records = await finished(sim, 2 + 2 + 3)  # + message, message.any; echo, 2 acks
        events = sorted(r["event"] for r in records)
        assert events == sorted(
            ["session.status"] * 2 + ["message"] + ["message.any"] * 2 + ["message.ack"] * 2
        )
        duplicates = []
        for record in records:
            (attempt,) = record["attempts"]
            assert attempt["status"] == 200, record
            if '"duplicate"' in attempt["answer"]:
                duplicates.append(record)
            else:
                assert '"queued"' in attempt["answer"], record
        # The customer's message comes as `message` and its `message.any` twin (same WhatsApp
        # id): the gateway queues whichever arrives first and answers the other `duplicate`
        # (tests/gateway/test_twins.py). Everything else is queued.
        assert [r["event"] in ("message", "message.any") for r in duplicates] == [True]
    assert stored_keys(sync_redis, key_prefix)


async def test_a_wrong_key_is_refused_and_nothing_is_stored(
    make_sim: SimFactory, gateway: RunningGateway, sync_redis: redis.Redis, key_prefix: str
) -> None:
    async with make_sim(
        webhook_urls=(gateway.url,), hmac_key="not-the-gateways-key", retries_attempts=0
    ) as sim:
        await sim.inbound(chat=CHAT, text="oi")
        records = await finished(sim, 2)
        assert [r["attempts"][0]["status"] for r in records] == [401, 401]
    assert stored_keys(sync_redis, key_prefix) == set()
