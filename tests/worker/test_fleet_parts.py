"""The fleet's parts in-process: the health check, the heartbeats, the reaper's task, the
bounded stop, the supervisor's restarts and heartbeat document, `wsm worker`'s options.

The fleet tests run all of this in child processes, where a mutation run cannot see it
(docs/testing.md, "Mutation testing"); these take the same paths in the test process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import logs, metrics_setup
from shared import redis_client as redis_client_module
from shared.dead_letters import DeadLetterLimits, list_dead_letters
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.keys import FleetKeys, all_shards
from shared.queue_stats import QueueSnapshot
from shared.redis_client import connect
from shared.settings import Settings
from tests.support.polling import async_wait_until
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.in_process import (
    command_environment,
    has_deadlines,
    record_clients,
    settings_of,
    single_queue,
)
from tests.worker.support.protocol import (
    keys_of,
    lease_chat,
    plant_old_dead_letter,
    queue_chat,
    state,
    wait_past,
)
from worker import cli, dlq_cli
from worker import process as process_module
from worker import supervisor as supervisor_module
from worker.health import CRASH_LOOP_EXITS, HealthReport, check_fleet
from worker.heartbeat import beat_forever, write_beat
from worker.process import ProcessOptions, connect_when_ready, start_background
from worker.reaper_task import make_reaper, reap_forever
from worker.stopping import wait_stopped
from worker.supervisor import FleetOptions, Supervisor


@pytest.fixture
async def queue(redis_url: str, key_prefix: str) -> AsyncIterator[Queue]:
    async with single_queue(redis_url, key_prefix) as queue:
        yield queue


@pytest.fixture
async def unreachable() -> AsyncIterator[Any]:
    """A client of a port nobody listens on."""
    client = connect(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        yield client
    finally:
        await client.aclose()


# --- worker/health.py ---------------------------------------------------------------------


async def write_fleet(
    queue: Queue, children: list[dict[str, Any]], beats: dict[int, dict[str, Any]]
) -> FleetKeys:
    fleet = FleetKeys("f1", queue.prefix)
    await queue.client.set(fleet.supervisor, orjson.dumps({"pid": 1, "children": children}))
    for index, beat in beats.items():
        await queue.client.set(fleet.process(index), orjson.dumps(beat))
    return fleet


async def test_a_fleet_whose_processes_all_beat_is_healthy(queue: Queue) -> None:
    children = [{"index": 0, "pid": 10, "quick_exits": 0}, {"index": 1, "pid": 11}]
    fleet = await write_fleet(queue, children, {0: {"pid": 10}, 1: {"pid": 11}})

    report = await check_fleet(queue.client, fleet)

    assert report == HealthReport(True, [], processes=2, alive=2)
    assert orjson.loads(report.as_json()) == {
        "healthy": True,
        "processes": 2,
        "alive": 2,
        "problems": [],
    }


async def test_each_unhealthy_process_is_named_with_why(queue: Queue) -> None:
    children: list[dict[str, Any]] = [
        {"index": 0, "pid": 10},  # no heartbeat
        {"index": 1, "pid": 11},  # a heartbeat left by the process before it
        {"index": 2, "pid": None},  # being restarted
        {"index": 3, "pid": 13, "quick_exits": CRASH_LOOP_EXITS},
        {"index": 4, "pid": 14, "quick_exits": CRASH_LOOP_EXITS - 1},
    ]
    beats: dict[int, dict[str, Any]] = {
        1: {"pid": 99},
        2: {"pid": None},
        3: {"pid": 13},
        4: {"pid": 14},
    }
    fleet = await write_fleet(queue, children, beats)

    report = await check_fleet(queue.client, fleet)

    assert not report.healthy
    assert (report.processes, report.alive) == (5, 2)
    assert report.problems == [
        "process 0: no heartbeat",
        "process 1: heartbeat is not from its current process",
        "process 2: heartbeat is not from its current process",
        "process 3: crash-looping (3 quick exits in a row)",
    ]


async def test_a_fleet_without_a_supervisor_heartbeat_is_unhealthy(queue: Queue) -> None:
    report = await check_fleet(queue.client, FleetKeys("gone", queue.prefix))
    assert report == HealthReport(False, ["no supervisor heartbeat for fleet 'gone'"])


async def test_a_supervisor_without_processes_is_unhealthy(queue: Queue) -> None:
    fleet = await write_fleet(queue, [], {})
    report = await check_fleet(queue.client, fleet)
    assert report == HealthReport(False, ["the supervisor runs no worker processes"])


async def test_a_supervisor_heartbeat_without_children_is_unhealthy(queue: Queue) -> None:
    fleet = FleetKeys("f1", queue.prefix)
    await queue.client.set(fleet.supervisor, orjson.dumps({"pid": 1}))
    report = await check_fleet(queue.client, fleet)
    assert report == HealthReport(False, ["the supervisor runs no worker processes"])


async def test_an_unreachable_redis_is_unhealthy(unreachable: Any) -> None:
    report = await check_fleet(unreachable, FleetKeys("f1"))
    assert report.healthy is False  # `false` in the JSON line, not `null`
    assert [p.split(":")[0] for p in report.problems] == ["redis unreachable"]


class LostAfterFirstRead:
    """Redis answers the supervisor's heartbeat, then goes away before the processes'."""

    async def get(self, key: str) -> bytes:
        return orjson.dumps({"children": [{"index": 0, "pid": 1}, {"index": 1, "pid": 2}]})

    async def mget(self, keys: list[str]) -> list[bytes]:
        raise RedisConnectionError("gone")


async def test_redis_lost_between_the_two_reads_is_unhealthy() -> None:
    report = await check_fleet(LostAfterFirstRead(), FleetKeys("f1"))  # type: ignore[arg-type]
    assert report == HealthReport(False, ["redis unreachable: gone"], processes=2)


# --- worker/heartbeat.py ------------------------------------------------------------------


async def test_a_beat_lives_three_intervals(queue: Queue) -> None:
    key = f"{queue.prefix}:beat"
    await write_beat(queue.client, key, 2.0, {"pid": 5})
    assert orjson.loads(await queue.client.get(key)) == {"pid": 5}
    assert 5000 < await queue.client.pttl(key) <= 6000


async def test_beats_are_rewritten_until_stopped(queue: Queue) -> None:
    key = f"{queue.prefix}:beat"
    count = 0

    def document() -> dict[str, Any]:
        nonlocal count
        count += 1
        return {"n": count}

    stop = asyncio.Event()
    task = asyncio.create_task(beat_forever(queue.client, key, 0.05, document, stop))
    await async_wait_until(lambda: _beat_at_least(queue, key, 3), what="three beats")
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    last = count
    await asyncio.sleep(0.2)
    assert count == last  # no beat after the stop


async def _beat_at_least(queue: Queue, key: str, n: int) -> bool:
    raw = await queue.client.get(key)
    return raw is not None and orjson.loads(raw)["n"] >= n


async def test_an_outage_is_logged_once_and_beating_goes_on(
    unreachable: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def document() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {}

    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="wsm.worker.heartbeat"):
        task = asyncio.create_task(beat_forever(unreachable, "k", 0.02, document, stop))
        await async_wait_until(lambda: _at_least(lambda: calls, 4), what="four tries")
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    messages = [r.getMessage() for r in caplog.records if r.name == "wsm.worker.heartbeat"]
    assert messages == ["heartbeat not written: redis unreachable"]


class Outages:
    """A client whose writes fail and succeed as scripted (True: it fails)."""

    def __init__(self, failures: list[bool]) -> None:
        self.failures = failures

    async def set(self, *args: Any, **kwargs: Any) -> None:
        if self.failures and self.failures.pop(0):
            raise RedisConnectionError("down")


async def test_each_outage_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    client = Outages([True, True, False, True, True])
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="wsm.worker.heartbeat"):
        task = asyncio.create_task(beat_forever(client, "k", 0.01, dict, stop))  # type: ignore[arg-type]
        await async_wait_until(lambda: _at_least(lambda: not client.failures, True))
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    warnings = [r for r in caplog.records if r.name == "wsm.worker.heartbeat"]
    assert len(warnings) == 2


async def _at_least(count: Any, n: int) -> bool:
    return bool(count() >= n)


# --- worker/stopping.py -------------------------------------------------------------------


async def test_tasks_that_stop_in_time_are_waited_for_and_not_cancelled() -> None:
    quick = asyncio.create_task(asyncio.sleep(0.05), name="quick")
    done = asyncio.create_task(asyncio.sleep(0), name="done")
    await done
    await wait_stopped([quick, done], timeout=5)
    assert quick.done() and not quick.cancelled()


async def test_a_task_that_outlives_its_timeout_is_cancelled_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubborn = asyncio.create_task(asyncio.sleep(60), name="stubborn")
    with caplog.at_level(logging.WARNING, logger="wsm.worker.stopping"):
        await wait_stopped([stubborn], timeout=0.05)
    await asyncio.sleep(0)
    assert stubborn.cancelled()
    (record,) = [r for r in caplog.records if r.name == "wsm.worker.stopping"]
    assert record.__dict__["task"] == "stubborn"


# --- worker/reaper_task.py ----------------------------------------------------------------


def test_the_reaper_lock_lives_most_of_an_interval() -> None:
    limits = DeadLetterLimits(7, 1000)
    reaper = make_reaper(object(), max_attempts=4, interval=2.0, dead_letters=limits)  # type: ignore[arg-type]
    assert (reaper.lock_ms, reaper.max_attempts, reaper.dead_letters) == (1600, 4, limits)


async def test_the_reaper_task_takes_back_an_expired_lease(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    chat = chat_id(1)
    await queue_chat(queue, chat, ["a"])
    lease = await lease_chat(queue, queue.consumer(lease_ms=50), chat)
    await wait_past(lease.until_ms)
    reaper = make_reaper(queue.client, max_attempts=3, interval=0.1)
    stop = asyncio.Event()
    shards = all_shards(1, queue.prefix)
    with caplog.at_level(logging.INFO, logger="wsm.worker.reaper_task"):
        task = asyncio.create_task(reap_forever(reaper, shards, 0.05, "holder", stop))
        await async_wait_until(lambda: _state_is(queue, chat, "ready"), what="the lease reaped")
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert await queue.client.get(keys_of(queue, chat).shard_keys.reaper_lock) == b"holder"
    (record,) = [r for r in caplog.records if r.getMessage() == "reaper pass"]
    assert (record.__dict__["reaped"], record.__dict__["shard"]) == (1, 0)


async def _state_is(queue: Queue, chat: str, wanted: str) -> bool:
    return await state(queue, chat) == wanted


async def test_a_stopped_reaper_task_takes_no_lock(queue: Queue) -> None:
    stop = asyncio.Event()
    stop.set()
    reaper = make_reaper(queue.client, max_attempts=3, interval=0.1)
    await asyncio.wait_for(reap_forever(reaper, all_shards(2, queue.prefix), 0.05, "h", stop), 5)
    for shard in all_shards(2, queue.prefix):
        assert await queue.client.exists(shard.reaper_lock) == 0


class Failing:
    """A reaper whose passes fail: with Redis trouble (the round ends), or with a bug (the
    next shard is still reaped)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.tried: list[int] = []

    async def try_lock(self, shard: Any, holder: str) -> bool:
        self.tried.append(shard.shard)
        raise self.error


@pytest.mark.parametrize(
    ("error", "per_round"),
    [(RedisConnectionError("down"), [0]), (RuntimeError("bug"), [0, 1])],
    ids=["redis-unreachable", "bug"],
)
async def test_a_failed_pass_does_not_end_the_reaper_task(
    error: Exception, per_round: list[int], key_prefix: str
) -> None:
    reaper = Failing(error)
    stop = asyncio.Event()
    shards = all_shards(2, key_prefix)
    task = asyncio.create_task(reap_forever(reaper, shards, 0.02, "h", stop))  # type: ignore[arg-type]
    await async_wait_until(lambda: _at_least(lambda: len(reaper.tried), 3 * len(per_round)))
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    rounds = len(per_round)
    assert reaper.tried[: 3 * rounds] == per_round * 3


# --- worker/supervisor.py -----------------------------------------------------------------


def fleet_options(processes: int = 2) -> FleetOptions:
    return FleetOptions(processes, 3, "mod:attr", "f1", "127.0.0.1", 0)


def test_the_supervisor_starts_each_process_as_its_child(queue: Queue) -> None:
    supervisor = Supervisor(settings_of(queue), fleet_options())
    assert supervisor._command(1) == [
        sys.executable, "-m", "worker",
        "--child", "1",
        "--supervisor-pid", str(os.getpid()),
        "--concurrency", "3",
        "--handler", "mod:attr",
        "--fleet-id", "f1",
    ]  # fmt: skip


def test_the_supervisor_document_counts_live_processes_only(queue: Queue) -> None:
    supervisor = Supervisor(settings_of(queue), fleet_options(processes=3))
    running, exited = (SimpleNamespace(pid=p, returncode=c) for p, c in ((41, None), (42, 1)))
    supervisor.children[0].process = running  # type: ignore[assignment]
    supervisor.children[1].process = exited  # type: ignore[assignment]
    supervisor.children[1].restarts, supervisor.children[1].quick_exits = 4, 2

    document = supervisor.document()

    assert supervisor.alive() == 1
    assert supervisor.fleet == FleetKeys("f1", queue.prefix)
    assert document["host"] == socket.gethostname()
    assert abs(document["at"] - time.time() * 1000) < 60_000
    assert (document["pid"], document["processes"], document["alive"]) == (os.getpid(), 3, 1)
    assert document["children"] == [
        {"index": 0, "pid": 41, "restarts": 0, "quick_exits": 0},
        {"index": 1, "pid": 42, "restarts": 4, "quick_exits": 2},
        {"index": 2, "pid": None, "restarts": 0, "quick_exits": 0},
    ]


def test_a_scrape_before_the_loop_runs_shows_the_last_figures(queue: Queue) -> None:
    supervisor = Supervisor(settings_of(queue), fleet_options())
    assert supervisor.snapshot() == QueueSnapshot()


async def test_a_scrape_reads_the_queue_from_the_supervisor_loop(queue: Queue) -> None:
    await queue_chat(queue, chat_id(2), ["a", "b"])
    supervisor = Supervisor(settings_of(queue), fleet_options())
    supervisor.client = queue.client
    supervisor._loop = asyncio.get_running_loop()
    # The metrics server calls it from its own thread.
    snapshot = await asyncio.to_thread(supervisor.snapshot)
    assert (snapshot.waiting, snapshot.chats_ready) == (2, 1)


class Signalled:
    """A child process that records the signals it is sent, or died just before."""

    def __init__(self, pid: int, returncode: int | None, vanished: bool = False) -> None:
        self.pid, self.returncode, self.vanished = pid, returncode, vanished
        self.signals: list[int] = []

    def send_signal(self, signum: int) -> None:
        if self.vanished:
            raise ProcessLookupError(signum)
        self.signals.append(signum)


def test_only_running_processes_are_signalled(queue: Queue) -> None:
    """A slot being restarted (no process), a process already reaped, and one that died just
    now: none stops the signal reaching the others."""
    supervisor = Supervisor(settings_of(queue), fleet_options(processes=4))
    running, exited, vanished = Signalled(1, None), Signalled(2, 0), Signalled(3, None, True)
    for child, process in zip(supervisor.children[1:], (vanished, exited, running), strict=True):
        child.process = process  # type: ignore[assignment]
    supervisor._signal_all(signal.SIGTERM)
    assert (running.signals, exited.signals) == ([signal.SIGTERM], [])


@pytest.fixture
def metrics_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Where the supervisor drops a dead process's gauges (the fleet sets it at start)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))


@pytest.mark.usefixtures("metrics_dir")
async def test_a_process_that_exits_is_restarted_and_counted(queue: Queue, tmp_path: Path) -> None:
    supervisor = Supervisor(settings_of(queue), fleet_options(processes=1))
    supervisor.client = queue.client
    # Each process leaves metric files as a worker does: a counter and a live gauge.
    leave_metrics = (
        "import os, sys\n"
        "for kind in ('counter', 'gauge_livesum'):\n"
        "    open(os.path.join(sys.argv[1], f'{kind}_{os.getpid()}.db'), 'w').close()\n"
        "sys.exit(3)\n"
    )
    supervisor._command = lambda index: [sys.executable, "-c", leave_metrics, str(tmp_path)]  # type: ignore[method-assign]
    (child,) = supervisor.children
    keeper = asyncio.create_task(supervisor._keep_alive(child))
    await async_wait_until(lambda: _at_least(lambda: child.restarts, 2), what="two restarts")
    supervisor.stopping.set()
    await asyncio.wait_for(keeper, timeout=10)
    assert child.quick_exits == child.restarts >= 2
    beat = orjson.loads(await queue.client.get(supervisor.fleet.supervisor))
    assert beat["children"][0]["restarts"] >= 2
    # A dead process's live gauges are dropped (/metrics would show it running for ever),
    # its counters kept (they still count).
    assert len(await _files(tmp_path, "counter_*.db")) >= 2
    assert await _files(tmp_path, "gauge_live*") == []


async def _files(directory: Path, pattern: str) -> list[Path]:
    return await asyncio.to_thread(lambda: list(directory.glob(pattern)))


@pytest.mark.usefixtures("metrics_dir")
async def test_a_process_that_lived_long_enough_is_not_crash_looping(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "STABLE_SECONDS", 0.2)
    supervisor = Supervisor(settings_of(queue), fleet_options(processes=1))
    supervisor.client = queue.client
    supervisor._command = lambda index: [sys.executable, "-c", "import time; time.sleep(0.4)"]  # type: ignore[method-assign]
    (child,) = supervisor.children
    keeper = asyncio.create_task(supervisor._keep_alive(child))
    await async_wait_until(lambda: _at_least(lambda: child.restarts, 1), what="a restart")
    supervisor.stopping.set()
    await asyncio.wait_for(keeper, timeout=10)
    assert child.quick_exits == 0


@pytest.mark.usefixtures("metrics_dir")
async def test_the_supervisor_stops_its_processes_and_its_heartbeat(queue: Queue) -> None:
    supervisor = Supervisor(settings_of(queue, WSM_HEARTBEAT_INTERVAL="0.05"), fleet_options())
    supervisor._command = lambda index: [  # type: ignore[method-assign]
        sys.executable, "-c", "import time; time.sleep(60)",
    ]  # fmt: skip
    loop = asyncio.get_running_loop()
    run = asyncio.create_task(supervisor.run())
    try:
        await async_wait_until(lambda: _at_least(supervisor.alive, 2), what="two processes")
        client = connect(queue.url)
        try:
            beat = await async_wait_until(lambda: client.get(supervisor.fleet.supervisor))
            assert isinstance(beat, bytes)
            assert orjson.loads(beat)["processes"] == 2
            pids = [child.pid for child in supervisor.children]
            # Rewritten by the heartbeat task, not only when a process starts or exits.
            await client.delete(supervisor.fleet.supervisor)
            await async_wait_until(lambda: client.get(supervisor.fleet.supervisor))
            os.kill(os.getpid(), signal.SIGTERM)  # the fleet's stop, caught by its loop
            assert await asyncio.wait_for(run, timeout=30) == 0
            assert await client.exists(supervisor.fleet.supervisor) == 0
        finally:
            await client.aclose()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    for pid in pids:  # SIGTERMed and reaped
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture
async def signal_handlers() -> AsyncIterator[None]:
    """Supervisor.run() installs SIGTERM and SIGINT handlers on the test's loop: removed after."""
    yield
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().remove_signal_handler(signum)


@pytest.mark.usefixtures("metrics_dir", "signal_handlers")
async def test_the_supervisor_serves_the_fleet_metrics(queue: Queue) -> None:
    await queue_chat(queue, chat_id(4), ["a", "b"])
    port = free_port()
    options = FleetOptions(1, 1, "m:a", "f1", "127.0.0.1", port)
    supervisor = Supervisor(settings_of(queue), options)
    supervisor._command = lambda index: [sys.executable, "-c", "import time; time.sleep(60)"]  # type: ignore[method-assign]
    run = asyncio.create_task(supervisor.run())
    await async_wait_until(lambda: _at_least(supervisor.alive, 1), what="the process")

    async def scraped() -> str | None:
        async with httpx.AsyncClient() as http:
            try:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                return None
        return text if "wsm_worker_processes 1.0" in text else None

    text = await async_wait_until(scraped, what="a scrape")
    assert "wsm_queue_messages 2.0" in text
    # On the address it was given only (WSM_WORKER_METRICS_HOST), not on every interface.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5).close()
    assert has_deadlines(supervisor.client)
    supervisor.stopping.set()
    assert await asyncio.wait_for(run, timeout=30) == 0


@pytest.mark.usefixtures("metrics_dir", "signal_handlers")
async def test_a_metrics_port_in_use_stops_the_supervisor_with_status_2(queue: Queue) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        options = FleetOptions(1, 1, "m:a", "f1", "127.0.0.1", taken.getsockname()[1])
        supervisor = Supervisor(settings_of(queue), options)
        assert await asyncio.wait_for(supervisor.run(), timeout=10) == 2
    assert supervisor.alive() == 0


@pytest.mark.usefixtures("metrics_dir", "signal_handlers")
async def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(
    queue: Queue, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(supervisor_module, "STOP_MARGIN_SECONDS", 0.2)
    ready = tmp_path / "ignoring"
    stubborn = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    )
    supervisor = Supervisor(
        settings_of(queue, WSM_SHUTDOWN_GRACE_SECONDS="0"), fleet_options(processes=1)
    )
    supervisor._command = lambda index: [sys.executable, "-c", stubborn, str(ready)]  # type: ignore[method-assign]
    run = asyncio.create_task(supervisor.run())
    await async_wait_until(lambda: _exists(ready), what="SIGTERM ignored")
    (pid,) = [child.pid for child in supervisor.children]
    supervisor.stopping.set()
    assert await asyncio.wait_for(run, timeout=30) == 0
    assert pid is not None
    with pytest.raises(ProcessLookupError):  # SIGKILLed and reaped
        os.kill(pid, 0)


@pytest.mark.usefixtures("metrics_dir", "signal_handlers")
async def test_a_process_slow_to_stop_gets_the_margin_after_the_grace_period(
    queue: Queue, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The margin is added to the grace period: a process still handing back its work when
    the grace period ends exits on its own, it is not SIGKILLed."""
    monkeypatch.setattr(supervisor_module, "STOP_MARGIN_SECONDS", 30.0)
    ready, handed_back = tmp_path / "ready", tmp_path / "handed-back"
    slow = (
        "import pathlib, signal, sys, time\n"
        "def stop(*_):\n"
        "    time.sleep(0.3)\n"
        "    pathlib.Path(sys.argv[2]).touch()\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(
        settings_of(queue, WSM_SHUTDOWN_GRACE_SECONDS="0"), fleet_options(processes=1)
    )
    supervisor._command = lambda index: [sys.executable, "-c", slow, str(ready), str(handed_back)]  # type: ignore[method-assign]
    run = asyncio.create_task(supervisor.run())
    await async_wait_until(lambda: _exists(ready), what="the process ready")
    supervisor.stopping.set()
    assert await asyncio.wait_for(run, timeout=60) == 0
    assert await _exists(handed_back)


@pytest.mark.usefixtures("metrics_dir")
async def test_a_stop_while_a_process_is_starting_reaches_that_process(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM arrives between the start of a process and its keeper's wait: the keeper
    passes it on instead of waiting for a process nobody will ever stop."""
    supervisor = Supervisor(settings_of(queue), fleet_options(processes=1))
    supervisor.client = queue.client
    supervisor._command = lambda index: [sys.executable, "-c", "import time; time.sleep(60)"]  # type: ignore[method-assign]
    real_start = asyncio.create_subprocess_exec
    started: list[asyncio.subprocess.Process] = []

    async def start_then_stop(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await real_start(*args, **kwargs)
        started.append(process)
        supervisor.stopping.set()
        return process

    monkeypatch.setattr(supervisor_module.asyncio, "create_subprocess_exec", start_then_stop)
    (child,) = supervisor.children
    await asyncio.wait_for(supervisor._keep_alive(child), timeout=30)
    assert [process.returncode for process in started] == [-signal.SIGTERM]
    assert child.restarts == 0


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


# --- worker/process.py --------------------------------------------------------------------


async def test_a_process_connects_once_redis_answers(queue: Queue) -> None:
    client = await connect_when_ready(settings_of(queue), asyncio.Event())
    assert client is not None
    try:
        assert await client.ping()
        assert has_deadlines(client)
    finally:
        await client.aclose()


async def test_a_process_asked_to_stop_before_redis_answers_gives_up(queue: Queue) -> None:
    settings = Settings(_env_file=None, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    stopping = asyncio.Event()
    waiting = asyncio.create_task(connect_when_ready(settings, stopping))
    await asyncio.sleep(0.5)  # a few refused attempts
    assert not waiting.done()
    stopping.set()
    assert await asyncio.wait_for(waiting, timeout=10) is None


async def test_a_process_beats_under_its_index_and_runs_the_reaper(queue: Queue) -> None:
    settings = settings_of(
        queue,
        WSM_HEARTBEAT_INTERVAL="0.05",
        WSM_REAPER_INTERVAL="0.05",
        WSM_MAX_ATTEMPTS="1",
        WSM_DEAD_LETTERS_MAX="1",
    )
    # A holder that died on its only attempt, and an older dead letter the cap drops: the
    # reaper runs with the process's settings.
    chat = chat_id(3)
    (dying,) = await queue_chat(queue, chat, ["a"])
    lease = await lease_chat(queue, queue.consumer(lease_ms=50), chat)
    await plant_old_dead_letter(queue, chat)
    await wait_past(lease.until_ms)
    options = ProcessOptions(index=2, concurrency=1, handler="m:a", fleet_id="f1")
    fleet = FleetKeys("f1", queue.prefix)
    stop = asyncio.Event()
    tasks = start_background(queue.client, settings, options, fleet, [], "owner", stop)
    try:
        assert sorted(t.get_name() for t in tasks) == ["heartbeat", "reaper"]
        beat = orjson.loads(await async_wait_until(lambda: queue.client.get(fleet.process(2))))
        assert (beat["pid"], beat["index"], beat["inflight"]) == (os.getpid(), 2, 0)
        assert beat["started"] <= beat["at"]
        lock = all_shards(1, queue.prefix)[0].reaper_lock
        assert await async_wait_until(lambda: queue.client.get(lock)) == b"owner"
        await async_wait_until(lambda: _dead_letters_are(queue, [dying]), what="the reap")
        await asyncio.sleep(0.2)  # a few more rounds of each
        assert not any(task.done() for task in tasks)
    finally:
        stop.set()
        await wait_stopped(tasks, timeout=5)


async def _dead_letters_are(queue: Queue, ids: list[str]) -> bool:
    return [letter.id for letter in await list_dead_letters(queue.client, 1, queue.prefix)] == ids


async def test_a_process_started_before_redis_connects_once_it_answers(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    settings = Settings(_env_file=None, REDIS_URL=server.url)
    waiting = asyncio.create_task(connect_when_ready(settings, asyncio.Event()))
    try:
        await asyncio.sleep(0.5)  # a few refused attempts
        assert not waiting.done()
        server.start()
        client = await asyncio.wait_for(waiting, timeout=20)
        assert client is not None
        assert await client.ping()
        await client.aclose()
    finally:
        waiting.cancel()
        server.kill()


# --- worker/cli.py ------------------------------------------------------------------------


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, queue: Queue) -> None:
    command_environment(monkeypatch, tmp_path, queue.url, queue.prefix)


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--fleet-id", "a{b}"], "wsm worker: fleet id 'a{b}' must match [A-Za-z0-9_.-]+"),
        # 0 is refused too, not taken for "not given" (it once fell back to the setting).
        (["--processes", "0"], "wsm worker: --processes and --concurrency must be at least 1"),
        (["--concurrency", "0"], "wsm worker: --processes and --concurrency must be at least 1"),
        (["--processes", "-1"], "wsm worker: --processes and --concurrency must be at least 1"),
    ],
)
def test_wsm_worker_refuses_bad_options(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*argv, "--check"]) == 2
    assert capsys.readouterr().err.strip() == error


@pytest.mark.usefixtures("environment")
def test_one_process_of_one_slot_is_a_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    """The smallest fleet is allowed: the check runs (no such fleet: 1), not a refusal (2)."""
    assert cli.main(["--processes", "1", "--concurrency", "1", "--check"]) == 1
    assert "no supervisor heartbeat" in capsys.readouterr().out


def test_wsm_worker_options_are_numbers_where_they_count() -> None:
    argv = ["--metrics-port", "0", "--child", "1", "--supervisor-pid", "5", "--processes", "2"]
    args = cli.build_parser().parse_args([*argv, "--concurrency", "3"])
    assert (args.metrics_port, args.child, args.supervisor_pid) == (0, 1, 5)
    assert (args.processes, args.concurrency) == (2, 3)


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize(
    ("main", "argv", "command"),
    [(cli.main, ["--check"], "wsm worker"), (dlq_cli.main, ["list"], "wsm dlq")],
    ids=["worker", "dlq"],
)
def test_the_worker_commands_refuse_invalid_settings(
    main: Any,
    argv: list[str],
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("WSM_QUEUE_SHARDS", "0")
    assert main(argv) == 2
    assert f"{command}: invalid settings" in capsys.readouterr().err


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize(
    ("argv", "handler"), [(["--handler", "given:h"], "given:h"), ([], "setting:h")]
)
def test_wsm_worker_hands_its_options_to_the_process(
    argv: list[str], handler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSM_WORKER_HANDLER", "setting:h")
    started: list[ProcessOptions] = []

    def run_process(settings: Settings, options: ProcessOptions) -> int:
        started.append(options)
        return 7

    monkeypatch.setattr(process_module, "run_process", run_process)
    child = ["--child", "1", "--supervisor-pid", "5", "--concurrency", "2", "--fleet-id", "f1"]
    assert cli.main([*argv, *child]) == 7
    # The supervisor's pid too: the process dies with it, none is left behind by a SIGKILL.
    assert started == [ProcessOptions(1, 2, handler, "f1", supervisor_pid=5)]


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize(("argv", "port"), [(["--metrics-port", "0"], 0), ([], 9123)])
def test_wsm_worker_starts_the_fleet_it_is_given(
    argv: list[str], port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in [("HOST", "127.0.0.3"), ("PORT", "9123"), ("DIR", str(tmp_path))]:
        monkeypatch.setenv(f"WSM_WORKER_METRICS_{name}", value)
    enabled: list[Path | None] = []
    fleets: list[FleetOptions] = []

    class Recorded:
        def __init__(self, settings: Settings, options: FleetOptions) -> None:
            fleets.append(options)

        async def run(self) -> int:
            return 0

    monkeypatch.setattr(metrics_setup, "enable_multiprocess_metrics", enabled.append)
    monkeypatch.setattr(logs, "setup_logging", lambda level: None)
    monkeypatch.setattr(supervisor_module, "Supervisor", Recorded)
    fleet = ["--processes", "2", "--concurrency", "3", "--handler", "m:h", "--fleet-id", "f1"]
    assert cli.main([*argv, *fleet]) == 0
    assert enabled == [tmp_path]
    assert fleets == [FleetOptions(2, 3, "m:h", "f1", "127.0.0.3", port)]


@pytest.mark.usefixtures("environment")
def test_wsm_worker_check_does_not_wait_forever_for_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    made = record_clients(monkeypatch, redis_client_module)
    assert cli.main(["--check"]) == 1
    assert [has_deadlines(client) for client in made] == [True]


@pytest.mark.usefixtures("environment")
def test_wsm_worker_check_reads_the_named_fleet(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    fleet = FleetKeys("f.1", queue.prefix)
    sync = redis.Redis.from_url(queue.url)
    try:
        sync.set(fleet.supervisor, orjson.dumps({"children": [{"index": 0, "pid": 7}]}))
        sync.set(fleet.process(0), orjson.dumps({"pid": 7}))
        assert cli.main(["--check", "--fleet-id", "f.1"]) == 0
        assert orjson.loads(capsys.readouterr().out)["healthy"] is True
        assert cli.main(["--check", "--fleet-id", "other"]) == 1
        assert orjson.loads(capsys.readouterr().out)["problems"] == [
            "no supervisor heartbeat for fleet 'other'"
        ]
    finally:
        sync.close()
