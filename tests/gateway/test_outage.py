"""Redis dies, freezes, or the gateway itself is killed: nothing answered 200 is ever lost.

Real processes throughout: the test's own redis-server (append-only, restartable on its port)
and `python -m gateway` children that are SIGKILLed and restarted.

No timed assertions: how fast the answers are is measured in bench/ (docs/benchmarks.md).
What is asserted is behaviour: the gateway answers (`spooled`, or 503 when nothing can take
the event) instead of waiting on a dead or frozen Redis, and a frozen one is cut off by the
deadline (counted as `timeout`). SAFETY_TIMEOUT_S only keeps a hanging gateway from hanging
the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from shared.embedded_redis import EmbeddedRedis, free_port
from tests.gateway.conftest import (
    GatewayProcess,
    frozen,
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
# WAHA gives up on a request silent for about 8 s; an answer later than that is no answer.
SAFETY_TIMEOUT_S = 7.0


def gateway_client(gateway: GatewayProcess) -> httpx.Client:
    return gateway.client(timeout=SAFETY_TIMEOUT_S)


def post(client: httpx.Client, text: str) -> httpx.Response:
    body = compact(text_message(CHAT, text))
    return client.post("/webhook", content=body, headers=signed(body))


def metric(text: str, sample: str) -> float:
    """The value of one sample line of /metrics text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


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


def wait_replayed(
    server: EmbeddedRedis, prefix: str, spool_dir: Path, count: int, what: str
) -> list[str]:
    """Until Redis holds m0..m<count-1>, once each and in order, and the spool has no file
    left; the texts."""
    expected = [f"m{n}" for n in range(count)]
    wait_until(lambda: queued_texts(server, prefix) == expected, timeout=15, what=what)
    wait_until(lambda: not spool_files(spool_dir), what="spool files removed")
    return expected


def test_redis_killed_events_are_spooled_fast_then_queued_once_in_order(
    private_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path, start_gateway: Callable[..., Any]
) -> None:
    spool_dir = tmp_path / "spool"
    gateway = start_gateway(gateway_environment(private_redis.url, key_prefix, spool_dir))
    with gateway_client(gateway) as client:
        # Redis up: queued, or on a loaded machine past the 50 ms deadline spooled (durable
        # too; they are then replayed, and counted below).
        before = [post(client, f"m{n}").json()["status"] for n in range(3)]
        assert set(before) <= {"queued", "spooled"}, before
        early_spooled = before.count("spooled")
        wait_until(
            lambda: client.get("/readyz").json()["spool"]["events"] == 0,
            what="early spooled events replayed",
        )

        private_redis.kill()
        for n in range(3, 23):
            response = post(client, f"m{n}")
            assert response.status_code == 200
            assert response.json() == {"status": "spooled"}

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["spool"]["in_use"] is True
        assert ready.json()["spool"]["events"] == 20
        assert len(spool_files(spool_dir)) == 1

        private_redis.start()  # same port, append-only file: m0..m2 are still there
        expected = wait_replayed(
            private_redis, key_prefix, spool_dir, 23, "spooled events replayed in order"
        )
        assert client.get("/readyz").json()["spool"] == {
            "in_use": False,
            "events": 0,
            "writable": True,
        }
        last = post(client, "m23").json()["status"]
        assert last in {"queued", "spooled"}
        wait_until(
            lambda: queued_texts(private_redis, key_prefix) == [*expected, "m23"],
            what="m23 queued",
        )

    sync = redis.Redis.from_url(private_redis.url)
    assert waiting_count(sync, key_prefix) == 24  # exactly once each
    spooled = 20 + early_spooled + (last == "spooled")
    wait_until(
        lambda: "wsm_spool_events 0.0" in httpx.get(f"{gateway.url}/metrics").text,
        what="spool gauge back to 0",
    )
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert metric(metrics, 'wsm_webhook_requests_total{outcome="spooled"}') == spooled
    # An event answered "spooled" at the 50 ms deadline on a loaded machine may still have
    # been queued by its late round trip: its replay then finds it a duplicate (the same
    # message, not a second copy). Either way each spooled event is replayed exactly once.
    replayed = metric(metrics, 'wsm_spool_replayed_total{result="queued"}') + metric(
        metrics, 'wsm_spool_replayed_total{result="duplicate"}'
    )
    assert replayed == spooled


def test_frozen_redis_misses_the_deadline_and_a_late_answer_is_not_a_second_copy(
    private_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path, start_gateway: Callable[..., Any]
) -> None:
    """SIGSTOP: connections hang instead of failing. Events are spooled at the deadline; the
    round trip already sent runs once Redis thaws, and the spooled copy then dedupes."""
    spool_dir = tmp_path / "spool"
    gateway = start_gateway(gateway_environment(private_redis.url, key_prefix, spool_dir))
    assert private_redis.process is not None
    with gateway_client(gateway) as client:
        assert post(client, "m0").json()["status"] in {"queued", "spooled"}
        wait_until(
            lambda: client.get("/readyz").json()["spool"]["events"] == 0,
            what="m0 in Redis",
        )
        timeouts_before = metric(
            client.get("/metrics").text, 'wsm_webhook_redis_failures_total{reason="timeout"}'
        )
        with frozen(private_redis):
            for n in range(1, 6):
                assert post(client, f"m{n}").json() == {"status": "spooled"}
            # Cut off by the deadline: the gateway did not wait for the frozen server.
            timeouts = metric(
                client.get("/metrics").text, 'wsm_webhook_redis_failures_total{reason="timeout"}'
            )
            assert timeouts > timeouts_before
        wait_replayed(private_redis, key_prefix, spool_dir, 6, "replay after thaw")
    assert waiting_count(redis.Redis.from_url(private_redis.url), key_prefix) == 6


def test_killed_gateway_replays_its_spool_on_next_start_even_while_redis_is_down(
    private_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path, start_gateway: Callable[..., Any]
) -> None:
    spool_dir = tmp_path / "spool"
    environment = gateway_environment(private_redis.url, key_prefix, spool_dir)
    first = start_gateway(environment)
    private_redis.kill()
    with gateway_client(first) as client:
        for n in range(10):
            assert post(client, f"m{n}").json() == {"status": "spooled"}
    first.kill()  # SIGKILL while holding 10 spooled events
    assert len(spool_files(spool_dir)) == 1

    # Redis still down: the new gateway must start anyway, adopt the file, and keep spooling
    # behind the adopted events.
    second = start_gateway(environment)
    with gateway_client(second) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["spool"]["events"] == 10
        for n in range(10, 12):
            assert post(client, f"m{n}").json() == {"status": "spooled"}
    assert queued_texts_or_none(private_redis, key_prefix) is None

    private_redis.start()
    wait_replayed(
        private_redis, key_prefix, spool_dir, 12, "adopted and own spool replayed in order"
    )
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
    async with inprocess_gateway(settings, redis_down=True) as client:
        async with asyncio.timeout(SAFETY_TIMEOUT_S):
            response = await client.post("/webhook", content=body, headers=signed(body))
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}
    assert int(response.headers["retry-after"]) > 0
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
        with frozen(private_redis):
            async with asyncio.timeout(SAFETY_TIMEOUT_S):
                response = await client.post("/webhook", content=body, headers=signed(body))
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}
    assert "retry-after" in response.headers


def post_chats_concurrently(client: httpx.Client, sent: dict[str, list[str]]) -> list[str]:
    """Each chat's texts in order on its own thread (chats concurrent, as WAHA sends them);
    the statuses answered."""
    from concurrent.futures import ThreadPoolExecutor

    def one_chat(chat: str) -> list[str]:
        statuses = []
        for text in sent[chat]:
            body = compact(text_message(chat, text))
            statuses.append(client.post("/webhook", content=body, headers=signed(body)).json())
        return [s["status"] for s in statuses]

    with ThreadPoolExecutor(len(sent)) as pool:
        return [status for statuses in pool.map(one_chat, sent) for status in statuses]


def test_gateway_killed_while_replaying_its_spool_loses_nothing_and_queues_nothing_twice(
    private_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path, start_gateway: Callable[..., Any]
) -> None:
    """A real gateway is SIGKILLed in the middle of a replay: some batches are in Redis and
    recorded as replayed, the one in flight may or may not have run. The next gateway adopts
    the file and replays the rest: every event once, each chat in the order it was sent."""
    spool_dir = tmp_path / "spool"
    environment = gateway_environment(private_redis.url, key_prefix, spool_dir)
    first = start_gateway(environment)
    private_redis.kill()
    chats = [f"55119888{n:05d}@c.us" for n in range(16)]
    sent = {chat: [f"{chat[:13]} m{m}" for m in range(100)] for chat in chats}  # 1600 events,
    total = sum(len(texts) for texts in sent.values())  # several replay batches of 256
    with gateway_client(first) as client:
        assert set(post_chats_concurrently(client, sent)) == {"spooled"}
        assert client.get("/readyz").json()["spool"]["events"] == total

    private_redis.start()
    sync = redis.Redis.from_url(private_redis.url)
    try:
        # The replay has begun: stop Redis taking writes (reads go on) so that it cannot
        # finish, then kill the gateway mid-replay and let Redis go on.
        wait_until(lambda: waiting_count(sync, key_prefix) > 0, interval=0.001, what="replay")
        sync.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
        try:
            replayed_before_the_crash = waiting_count(sync, key_prefix)
            first.kill()
        finally:
            sync.execute_command("CLIENT", "UNPAUSE")
        assert 0 < replayed_before_the_crash < total
        assert spool_files(spool_dir)  # the dead gateway's file, not fully replayed

        second = start_gateway(environment)
        wait_until(lambda: not spool_files(spool_dir), timeout=30, what="spool replayed")
        for chat in chats:
            client_texts = [
                event.document()["payload"]["body"]
                for event in queued_events(sync, key_prefix, "default", chat)
            ]
            assert client_texts == sent[chat], chat  # all there, once, in order
        assert waiting_count(sync, key_prefix) == total
        assert "adopted the spool of a dead gateway process" in second.log()
    finally:
        sync.close()
