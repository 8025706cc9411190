"""`wsm worker --check`: healthy while every process beats; unhealthy when one stops beating
or the fleet is gone."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from tests.support.polling import async_wait_until
from tests.worker.support.fleet import fleet_environment, run_wsm, running_fleet
from worker.supervisor import RESTART_FIRST_SECONDS


async def test_check_follows_the_fleet(
    aredis: Any, redis_url: str, key_prefix: str, workdir: Path
) -> None:
    with running_fleet(redis_url, key_prefix, workdir, processes=2, concurrency=1) as fleet:
        pids = await fleet.wait_running(aredis, 2)
        check = ["worker", "--check", "--fleet-id", fleet.fleet_id]

        def run_check() -> tuple[int, dict[str, Any]]:
            result = run_wsm(check, fleet.env, workdir)
            return result.returncode, orjson.loads(result.stdout)

        code, report = run_check()
        assert (code, report["healthy"], report["alive"]) == (0, True, 2), report

        os.kill(pids[1], signal.SIGSTOP)  # a stuck process stops beating
        try:

            async def unhealthy() -> dict[str, Any] | None:
                code, report = run_check()
                return report if code == 1 else None

            report = await async_wait_until(unhealthy, timeout=20, what="--check to fail")
            assert report["problems"] == ["process 1: no heartbeat"]
        finally:
            os.kill(pids[1], signal.SIGCONT)

        async def healthy() -> bool:
            return run_check()[0] == 0

        await async_wait_until(healthy, timeout=20, what="--check to pass again")
        assert fleet.terminate() == 0, fleet.tail()

    code, report = run_check()
    assert code == 1
    assert report["problems"] == [f"no supervisor heartbeat for fleet {fleet.fleet_id!r}"]


def test_check_without_redis_is_unhealthy(workdir: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    result = run_wsm(["worker", "--check", "--fleet-id", "nobody"], env, workdir)
    assert result.returncode == 1
    assert "redis unreachable" in orjson.loads(result.stdout)["problems"][0]


def restart_log(fleet_log: str) -> list[tuple[datetime, float]]:
    """(when, announced delay) of each "restarting" line the supervisor logged, in order."""
    restarts = []
    for line in fleet_log.splitlines():
        if not line.startswith("{"):
            continue
        record = orjson.loads(line)
        if record.get("msg") == "worker process exited; restarting":
            when = datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
            restarts.append((when, float(record["restart_in"])))
    return restarts


async def test_a_crash_looping_process_is_restarted_with_backoff_and_unhealthy(
    aredis: Any, redis_url: str, key_prefix: str, workdir: Path
) -> None:
    with running_fleet(
        redis_url, key_prefix, workdir, processes=1, concurrency=1, handler="no.such.module:x"
    ) as fleet:

        async def crash_looping() -> dict[str, Any] | None:
            document = await fleet.supervisor(aredis)
            # Four, so that the delays compared below include one (2 s) longer than a
            # process takes to start and fail: a supervisor that did not wait fails then.
            looping = document and document["children"][0]["quick_exits"] >= 4
            return document if looping else None

        document = await async_wait_until(crash_looping, timeout=30, what="4 quick exits")
        assert document["children"][0]["restarts"] >= 4
        result = run_wsm(["worker", "--check", "--fleet-id", fleet.fleet_id], fleet.env, workdir)
        assert result.returncode == 1
        assert "crash-looping" in result.stdout
        assert "cannot load handler 'no.such.module:x'" in fleet.tail()
        assert fleet.terminate() == 0, fleet.tail()

    # The backoff happened: each restart waited at least its delay, and the delay doubled with
    # each quick exit in a row. The next exit comes after the delay plus the new process's
    # own start, so the spacing of exits is a lower bound that no machine speed can break.
    restarts = restart_log(fleet.log.read_text(errors="replace"))
    assert len(restarts) >= 4, fleet.tail()
    delays = [delay for _, delay in restarts[:4]]
    assert delays == [RESTART_FIRST_SECONDS * 2**n for n in range(4)]
    for (exited, delay), (next_exited, _) in itertools.pairwise(restarts):
        assert (next_exited - exited).total_seconds() >= delay, restarts


def test_metrics_port_in_use_is_a_clean_error(
    redis_url: str, key_prefix: str, workdir: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = fleet_environment(redis_url, key_prefix, {})
        result = subprocess.run(
            [sys.executable, "-m", "worker", "--metrics-port", str(port)],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert "cannot serve /metrics" in result.stderr
