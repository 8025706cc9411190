"""Redis dies, freezes, or the gateway itself is killed: nothing answered 200 is ever lost.

Real processes throughout: the test's own redis-server (append-only, restartable on its port)
and `python -m gateway` children that are SIGKILLed and restarted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from shared.embedded_redis import EmbeddedRedis, free_port
from tests.gateway.conftest import (
    GatewayProcess,
    gateway_environment,
    gateway_settings,
    inprocess_gateway,
    queued_events,
    signed,
    waiting_count,
)
from tests.support.polling import wait_until
from tests.support.waha import compact, text_message

CHAT = "5511988887777@c.us"
# Generous: the promise is "well under 100 ms"; a loaded CI machine must not make this flaky,
# yet a gateway that waited on a dead Redis (seconds) fails it by far.
ANSWER_LIMIT_S = 0.1


def post_timed(client: httpx.Client, text: str) -> tuple[httpx.Response, float]:
    body = compact(text_message(CHAT, text))
    started = time.perf_counter()
    response = client.post("/webhook", content=body, headers=signed(body))
    return response, time.perf_counter() - started


def queued_texts(server: EmbeddedRedis, prefix: str) -> list[str]:
    client = redis.Redis.from_url(server.url)
    try:
        return [
            event.document()["payload"]["body"]
            for event in queued_events(client, prefix, "default", CHAT)
        ]
    finally:
        client.close()


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("spool-*.wal")) if spool_dir.exists() else []


def test_redis_killed_events_are_spooled_fast_then_queued_once_in_order(
    private_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path, start_gateway: Callable[..., Any]
) -> None:
    spool_dir = tmp_path / "spool"
    gateway: GatewayProcess = start_gateway(
        gateway_environment(private_redis.url, key_prefix, spool_dir)
    )
    with gateway.client() as client:
        for n in range(3):
            response, _ = post_timed(client, f"m{n}")
            assert response.json() == {"status": "queued"}

        private_redis.kill()
        timings = []
        for n in range(3, 23):
            response, elapsed = post_timed(client, f"m{n}")
            assert response.status_code == 200
            assert response.json() == {"status": "spooled"}
            timings.append(elapsed)
        assert max(timings) < ANSWER_LIMIT_S, timings

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["spool"]["in_use"] is True
        assert ready.json()["spool"]["events"] == 20
        assert len(spool_files(spool_dir)) == 1

        private_redis.start()  # same port, append-only file: m0..m2 are still there
        expected = [f"m{n}" for n in range(23)]
        wait_until(
            lambda: queued_texts(private_redis, key_prefix) == expected,
            timeout=15,
            what="spooled events replayed in order",
        )
        wait_until(lambda: not spool_files(spool_dir), what="spool file removed")
        assert client.get("/readyz").json()["spool"] == {
            "in_use": False,
            "events": 0,
            "writable": True,
        }
        response, _ = post_timed(client, "m23")
        assert response.json() == {"status": "queued"}

    sync = redis.Redis.from_url(private_redis.url)
    assert waiting_count(sync, key_prefix) == 24  # exactly once each
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'wsm_webhook_requests_total{outcome="spooled"} 20.0' in metrics
    assert 'wsm_spool_replayed_total{result="queued"} 20.0' in metrics
    assert "wsm_spool_events 0.0" in metrics


def test_frozen_redis_misses_the_deadline_and_a_late_answer_is_not_a_second_copy(
    private_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path, start_gateway: Callable[..., Any]
) -> None:
    """SIGSTOP: connections hang instead of failing. Events are spooled at the deadline; the
    round trip already sent runs once Redis thaws, and the spooled copy then dedupes."""
    spool_dir = tmp_path / "spool"
    gateway = start_gateway(gateway_environment(private_redis.url, key_prefix, spool_dir))
    assert private_redis.process is not None
    with gateway.client() as client:
        assert post_timed(client, "m0")[0].json() == {"status": "queued"}
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        try:
            timings = []
            for n in range(1, 6):
                response, elapsed = post_timed(client, f"m{n}")
                assert response.json() == {"status": "spooled"}
                timings.append(elapsed)
            assert max(timings) < ANSWER_LIMIT_S, timings
        finally:
            os.kill(private_redis.process.pid, signal.SIGCONT)
        expected = [f"m{n}" for n in range(6)]
        wait_until(
            lambda: queued_texts(private_redis, key_prefix) == expected,
            timeout=15,
            what="replay after thaw",
        )
        wait_until(lambda: not spool_files(spool_dir), what="spool file removed")
    assert waiting_count(redis.Redis.from_url(private_redis.url), key_prefix) == 6


def test_killed_gateway_replays_its_spool_on_next_start_even_while_redis_is_down(
    private_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path, start_gateway: Callable[..., Any]
) -> None:
    spool_dir = tmp_path / "spool"
    environment = gateway_environment(private_redis.url, key_prefix, spool_dir)
    first = start_gateway(environment)
    private_redis.kill()
    with first.client() as client:
        for n in range(10):
            assert post_timed(client, f"m{n}")[0].json() == {"status": "spooled"}
    first.kill()  # SIGKILL while holding 10 spooled events
    assert len(spool_files(spool_dir)) == 1

    # Redis still down: the new gateway must start anyway, adopt the file, and keep spooling
    # behind the adopted events.
    second = start_gateway(environment)
    with second.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["spool"]["events"] == 10
        for n in range(10, 12):
            assert post_timed(client, f"m{n}")[0].json() == {"status": "spooled"}
    assert queued_texts_or_none(private_redis, key_prefix) is None

    private_redis.start()
    expected = [f"m{n}" for n in range(12)]
    wait_until(
        lambda: queued_texts(private_redis, key_prefix) == expected,
        timeout=15,
        what="adopted and own spool replayed in order",
    )
    wait_until(lambda: not spool_files(spool_dir), what="spool files removed")
    assert waiting_count(redis.Redis.from_url(private_redis.url), key_prefix) == 12
    assert "adopted the spool of a dead gateway process" in second.log()


def queued_texts_or_none(server: EmbeddedRedis, prefix: str) -> list[str] | None:
    try:
        return queued_texts(server, prefix)
    except redis.ConnectionError:
        return None


async def test_spool_unwritable_and_redis_down_is_503_with_retry_after_fast(
    tmp_path: Path, key_prefix: str
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the spool cannot be created under a file")
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = gateway_settings(dead_redis, key_prefix, blocker / "spool")
    body = compact(text_message(CHAT, "perdido?"))
    async with inprocess_gateway(settings) as client:
        started = time.perf_counter()
        response = await client.post("/webhook", content=body, headers=signed(body))
        elapsed = time.perf_counter() - started
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert elapsed < ANSWER_LIMIT_S
    assert ready.status_code == 503
    assert ready.json()["spool"]["writable"] is False


async def test_spool_unwritable_and_redis_frozen_is_503_within_the_deadlines(
    private_redis: EmbeddedRedis, tmp_path: Path, key_prefix: str
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    settings = gateway_settings(private_redis.url, key_prefix, blocker / "spool")
    body = compact(text_message(CHAT, "congelado"))
    assert private_redis.process is not None
    async with inprocess_gateway(settings) as client:
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            response = await client.post("/webhook", content=body, headers=signed(body))
            elapsed = time.perf_counter() - started
        finally:
            os.kill(private_redis.process.pid, signal.SIGCONT)
    assert response.status_code == 503
    assert "retry-after" in response.headers
    assert elapsed < ANSWER_LIMIT_S
