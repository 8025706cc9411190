"""`wsm worker --check`: healthy while every process beats; unhealthy when one stops beating
or the fleet is gone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.support.polling import async_wait_until
from tests.worker.support import fleet_environment, run_wsm, running_fleet


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


async def test_a_crash_looping_process_is_restarted_with_backoff_and_unhealthy(
    aredis: Any, redis_url: str, key_prefix: str, workdir: Path
) -> None:
    with running_fleet(
        redis_url, key_prefix, workdir, processes=1, concurrency=1, handler="no.such.module:x"
    ) as fleet:

        async def crash_looping() -> dict[str, Any] | None:
            document = await fleet.supervisor(aredis)
            looping = document and document["children"][0]["quick_exits"] >= 3
            return document if looping else None

        document = await async_wait_until(crash_looping, timeout=30, what="3 quick exits")
        assert document["children"][0]["restarts"] >= 3
        result = run_wsm(["worker", "--check", "--fleet-id", fleet.fleet_id], fleet.env, workdir)
        assert result.returncode == 1
        assert "crash-looping" in result.stdout
        assert "cannot load handler 'no.such.module:x'" in fleet.tail()
        assert fleet.terminate() == 0, fleet.tail()


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
