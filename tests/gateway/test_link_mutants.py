"""Tests written to kill mutants that survived the mutation runs (docs/testing.md lists each one
and the mutant it kills): the gateway's Redis link (client options, version check, reachability),
the runtime's start and stop, and the intake's own deadline, against a real Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from gateway import spool_file
from gateway.batcher import EnqueueBatcher
from gateway.intake import QUEUED, SPOOLED, Intake
from gateway.redis_link import (
    CONNECT_TIMEOUT_S,
    SOCKET_TIMEOUT_S,
    RedisStatus,
    check_server_at_start,
    connect_gateway_client,
)
from gateway.runtime import GatewayRuntime
from gateway.spool import Spool
from shared.embedded_redis import free_port
from shared.redis_client import connect
from tests.gateway.conftest import (
    enqueue_request,
    frozen,
    gateway_settings,
    inprocess_gateway,
    queued_events,
    signed,
    steady_settings,
)
from tests.support.waha import compact, text_message


def _dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


# --- gateway/redis_link.py: the client fails fast on its own ------------------------------


def test_the_gateway_client_fails_fast_on_its_own(tmp_path: Path) -> None:
    """Every connection the gateway's client opens has a short connect timeout, a read
    timeout, no internal retry and no health-check PING before commands (module docstring of
    redis_link). Read from a connection the pool makes, i.e. what redis-py will really use.
    Kills, in connect_gateway_client: socket_connect_timeout None or dropped (2 s or 5 s),
    socket_timeout None or dropped (none or 5 s), `Retry(NoBackoff(), 1)`,
    health_check_interval=1."""
    settings = gateway_settings(_dead_url(), "p", tmp_path / "spool")
    client = connect_gateway_client(settings)
    connection = client.connection_pool.make_connection()
    assert connection.socket_connect_timeout == CONNECT_TIMEOUT_S
    # A round trip's bound is the pool's (shared/redis_lean.py), not the socket's.
    assert client.connection_pool.command_timeout == SOCKET_TIMEOUT_S
    assert connection.retry.get_retries() == 0
    assert not connection.health_check_interval


# --- gateway/redis_link.py: RedisStatus ---------------------------------------------------


async def test_reachability_is_recorded_and_a_return_wakes_the_waiter() -> None:
    """A failed round trip marks Redis unreachable, a successful one reachable again, and
    the replayer sleeping in wait_reachable wakes on that (not only at the end of its sleep);
    a sleep nobody cuts short just ends. Kills, in mark_reachable: the condition negated,
    `reachable = None`/`False`; in mark_unreachable: `reachable = None`/`True`; in
    wait_reachable: `suppress(None)`, `wait_for(None, …)`, either argument dropped."""
    status = RedisStatus()
    status.mark_unreachable("test")
    assert status.reachable is False
    await status.wait_reachable(0.01)  # nobody marks it reachable: the sleep ends quietly
    waiter = asyncio.ensure_future(status.wait_reachable(60))
    await asyncio.sleep(0)
    assert not waiter.done()
    status.mark_reachable()
    assert status.reachable is True
    async with asyncio.timeout(20):  # a hang guard: the waiter must wake, not sleep 60 s
        await waiter


def test_an_outage_is_logged_once_with_its_first_cause_and_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Why events went to the spool is in the log: one warning per outage, naming the first
    failure (not one per failed batch), and a line when Redis answers again."""
    status = RedisStatus()
    with caplog.at_level(logging.INFO, logger="wsm.gateway.redis_link"):
        status.mark_unreachable("ConnectionError('refused')")
        status.mark_unreachable("TimeoutError()")
        status.mark_reachable()
        status.mark_reachable()
    assert [(r.levelno, r.getMessage(), getattr(r, "error", None)) for r in caplog.records] == [
        (
            logging.WARNING,
            "a Redis round trip failed; events go to the spool",
            "ConnectionError('refused')",
        ),
        (logging.INFO, "Redis answers again; the spool is being replayed", None),
    ]


async def test_the_version_check_answers_for_a_new_a_dead_and_a_too_old_server(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """check_version is True for a supported server (on the first ask: the replayer would
    otherwise sleep a backoff first), False for one that does not answer (and that is not
    "too old"), False for one older than 7.0, and it stays False for that server even when a
    new one answers later (the refusal holds until a restart, docs/gateway.md). Kills, in
    check_version: the final `return True` -> False, the unreachable `return False` -> True,
    the too-old `return False` -> True, the log's message dropped (TypeError out of it), the
    `or` of the known-answer guard -> `and` (would ask again and accept the new server)."""
    version = sync_redis.info()["redis_version"]
    good = connect_gateway_client(gateway_settings(redis_url, key_prefix, tmp_path / "spool"))
    dead = connect_gateway_client(gateway_settings(_dead_url(), key_prefix, tmp_path / "spool"))

    class OldServer:
        async def info(self, section: str) -> dict[str, str]:
            return {"redis_version": "6.2.14"}

    try:
        status = RedisStatus()
        assert await status.check_version(good, 5) is True
        assert status.version == version

        status = RedisStatus()
        assert await status.check_version(dead, 5) is False
        assert (status.version, status.unsupported, status.usable) == (None, None, True)

        status = RedisStatus()
        assert await status.check_version(cast(Any, OldServer()), 5) is False
        assert status.unsupported is not None and "too old" in status.unsupported
        assert status.usable is False
        assert await status.check_version(good, 5) is False
        assert status.version is None
    finally:
        await good.aclose()
        await dead.aclose()


async def test_the_version_check_keeps_its_deadline_on_a_frozen_server(
    private_redis: Any,
) -> None:
    """A server that accepts connections but does not answer: the check gives up at its own
    deadline and answers False, even with a client that has no socket timeout of its own.
    Kills, in check_version: `asyncio.timeout(None)` (the check would hang)."""
    client = connect(private_redis.url, socket_timeout=None)  # redis-py's default: 5 s
    try:
        assert await client.ping()  # connected before the freeze
        status = RedisStatus()
        with frozen(private_redis):
            async with asyncio.timeout(20):  # a hang guard, not the deadline under test
                answer = await status.check_version(client, 0.2)
        assert answer is False
        assert status.version is None and status.usable
    finally:
        await client.aclose()


async def test_check_at_start_names_the_version_or_none_when_nobody_answers(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """At start the gateway asks the server's version (and refuses one too old); a server
    that does not answer gives None and the gateway starts anyway. Kills, in
    check_server_at_start: `ensure_supported_server(None)` (the AttributeError is taken for
    "does not answer": a too-old server would never be refused at start)."""
    settings = gateway_settings(redis_url, key_prefix, tmp_path / "spool")
    assert await check_server_at_start(settings) == sync_redis.info()["redis_version"]
    assert await check_server_at_start(gateway_settings(_dead_url(), key_prefix, tmp_path)) is None


# --- gateway/runtime.py: readiness --------------------------------------------------------


async def test_not_ready_when_the_version_cannot_be_read(
    private_redis: Any, key_prefix: str, tmp_path: Path
) -> None:
    """A Redis user that may PING but not INFO (an ACL as managed servers hand out): the
    server answers, but whether it is new enough is unknown, so the gateway is not ready.
    Kills, in readiness: `usable and version is not None` -> `or`."""
    admin = redis.Redis.from_url(private_redis.url)
    admin.execute_command("ACL", "SETUSER", "gateway", "on", ">secret", "~*", "+@all", "-info")
    admin.close()
    url = private_redis.url.replace("redis://", "redis://gateway:secret@", 1)
    runtime = GatewayRuntime(gateway_settings(url, key_prefix, tmp_path / "spool"))
    try:
        assert await runtime.client.ping()
        ready, document = await runtime.readiness()
    finally:
        await runtime.stop()
    assert ready is False
    assert document["status"] == "unavailable"
    assert document["redis"]["ok"] is False
    assert "version" not in document["redis"]


# --- gateway/intake.py: the intake's own deadline -----------------------------------------


async def test_an_accept_is_answered_spooled_when_redis_freezes_under_a_slow_batcher(
    private_redis: Any, key_prefix: str, tmp_path: Path
) -> None:
    """Redis freezes and the batcher would wait far longer than the webhook can (here its
    bound is 60 s and the client has no socket timeout): the intake's own deadline (two round
    trips plus ENQUEUE_SLACK_S) still answers, "spooled", with the event in the spool. The
    hang guard (20 s) is not the deadline under test. Kills, in Intake: the deadline None,
    `2 / redis_timeout_s` (42 s at the product's 50 ms); in accept: `asyncio.timeout(None)`."""
    client = connect(private_redis.url, socket_timeout=None)  # redis-py's default: 5 s
    status = RedisStatus()
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, write_timeout_s=5)
    intake = Intake(
        EnqueueBatcher(client, status, timeout_s=60), spool, status, redis_timeout_s=0.05
    )
    body, request = enqueue_request("5511999990701@c.us", "frozen", key_prefix)
    try:
        assert await client.ping()
        with frozen(private_redis):
            async with asyncio.timeout(20):
                answer = await intake.accept(request, body, 1)
        assert answer == SPOOLED
        assert spool.events == 1
    finally:
        await spool.close()
        await client.aclose()


async def test_an_accept_is_queued_when_redis_answers_within_the_deadline(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """A Redis deadline of 0.9 s: the intake's backstop is 2 × 0.9 + 2 = 3.8 s (room for a
    loaded machine), so a batcher that answers (its own bound generous too) gets the event
    queued. Kills, in Intake: `2 * redis_timeout_s - ENQUEUE_SLACK_S` (a negative deadline:
    every event would be spooled at once)."""
    chat = "5511999990702@c.us"
    client = connect(redis_url)
    status = RedisStatus()
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, write_timeout_s=5)
    intake = Intake(EnqueueBatcher(client, status, timeout_s=5), spool, status, redis_timeout_s=0.9)
    body, request = enqueue_request(chat, "in time", key_prefix)
    try:
        assert await intake.accept(request, body, 1) == QUEUED
    finally:
        await spool.close()
        await client.aclose()
    [queued] = queued_events(sync_redis, key_prefix, "default", chat)
    assert queued.body == body


# --- gateway/runtime.py: what start() and __init__ wire -----------------------------------


async def test_events_left_by_the_previous_gateway_come_before_new_ones(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis, monkeypatch: Any
) -> None:
    """A gateway killed with an event in its spool: the next one adopts it at start as older
    than anything it receives, so a new event of the same chat must not reach Redis before it
    (here nothing replays: the new event waits its round trip, then joins the spool behind).
    Kills, in start: `adopt_orphans(at_start=False)` and `at_start=None`."""
    chat = "5511999990703@c.us"
    spool_dir = tmp_path / "spool"
    previous = Spool(spool_dir, max_bytes=1 << 30, write_timeout_s=5)
    first, _ = enqueue_request(chat, "first", key_prefix)
    await previous.append(first, 1)
    await previous.close()

    settings = gateway_settings(redis_url, key_prefix, spool_dir, WSM_WEBHOOK_REDIS_TIMEOUT_MS=1000)
    runtime = GatewayRuntime(settings)

    async def replay_nothing() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(runtime.replayer, "run", replay_nothing)
    await runtime.start()
    try:
        assert runtime.spool.events == 1
        second, request = enqueue_request(chat, "second", key_prefix)
        assert await runtime.intake.accept(request, second, 2) == SPOOLED
        assert runtime.spool.events == 2
    finally:
        await runtime.stop()
    assert queued_events(sync_redis, key_prefix, "default", chat) == []


def _stalled_fsync(monkeypatch: Any) -> threading.Event:
    """spool_file's fsync waits for the returned event (at most 30 s), then runs."""
    release = threading.Event()

    class StalledOs:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def fsync(fd: int) -> None:
            release.wait(30)
            os.fsync(fd)

    monkeypatch.setattr(spool_file, "os", StalledOs())
    return release


async def test_a_stalled_spool_answers_503_at_the_configured_write_deadline(
    key_prefix: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """Redis down and the disk stalled: the webhook answers 503 once WSM_SPOOL_TIMEOUT_MS
    (here 100 ms) passed, instead of holding WAHA's request. The hang guard (20 s) is not
    the deadline under test. Kills, in GatewayRuntime.__init__: the spool's write_timeout_s
    None, `spool_timeout_ms * 1000` (100 000 s)."""
    release = _stalled_fsync(monkeypatch)
    settings = gateway_settings(
        _dead_url(), key_prefix, tmp_path / "spool", WSM_SPOOL_TIMEOUT_MS=100
    )
    body = compact(text_message("5511999990704@c.us", "disk"))
    async with inprocess_gateway(settings, redis_down=True) as client:
        try:
            async with asyncio.timeout(20):
                response = await client.post("/webhook", content=body, headers=signed(body))
        finally:
            release.set()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}


async def test_the_configured_replay_window_reaches_the_webhook(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """WSM_WEBHOOK_MAX_AGE_SECONDS set shorter than the default: an event two minutes old is
    outside a one-minute window, answered `stale`, nothing stored. Kills, in
    GatewayRuntime.__init__: max_age_seconds not passed to the WebhookEndpoint (its default,
    an hour, would queue it)."""
    chat = "5511999990705@c.us"
    settings = steady_settings(
        redis_url, key_prefix, tmp_path / "spool", WSM_WEBHOOK_MAX_AGE_SECONDS=60
    )
    document = text_message(chat, "old")
    document["timestamp"] = int(time.time() * 1000) - 120_000
    body = compact(document)
    async with inprocess_gateway(settings) as client:
        response = await client.post("/webhook", content=body, headers=signed(body))
    assert (response.status_code, response.json()) == (200, {"status": "stale"})
    assert queued_events(sync_redis, key_prefix, "default", chat) == []
