"""`wsm loadtest` stops every process it started, whatever happens: interrupted with Ctrl-C in
the middle of the load, or killed outright (its parts are told by Linux to stop when it dies)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_loadtest_chaos import ROOT, processes_under
from tests.support.orphans import kill_and_wait_for_the_parts
from tests.support.polling import wait_until


def start_loadtest(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "wsm", "loadtest", "--customers", "20", "--messages", "500",
            "--rate", "20", "--processes", "2", "--nginx", "auto", "--home", str(home),
        ],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "WAHA_URL"}},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def wait_for_load(run: subprocess.Popen[str]) -> list[str]:
    seen: list[str] = []

    def talking() -> bool:
        assert run.stdout is not None
        line = run.stdout.readline()
        seen.append(line)
        assert run.poll() is None, "".join(seen)
        return "customers start talking" in line

    wait_until(talking, timeout=90, what="the customers to start")
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("how", ["interrupted", "killed"])
def test_no_process_outlives_the_load_test(tmp_path: Path, how: str) -> None:
    home = tmp_path / "loadtest"
    run = start_loadtest(home)
    try:
        wait_for_load(run)
        assert len(processes_under(home)) >= 6  # Redis, sim, gateway, fleet (3), api, ...
        if how == "interrupted":
            run.send_signal(signal.SIGINT)
            rest, _ = run.communicate(timeout=120)
            assert run.returncode == 130, rest
            assert processes_under(home) == []
        else:
            kill_and_wait_for_the_parts(run, lambda: processes_under(home))
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
