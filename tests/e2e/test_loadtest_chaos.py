"""A reduced end-to-end chaos run, as CI runs it: `wsm loadtest --chaos` with 200 customers
writing 5 messages each through nginx, the gateway, the worker fleet (engine + menu brain) and
the WAHA simulator, while two worker processes are SIGKILLed, Redis crashes and restarts from
its append-only file, and Redis stays down for 35 s (longer than WAHA's ~30 s of retries, so
only the gateway's spool can keep the events). Zero lost, zero sent twice, order kept; and
when it is over, no process it started is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import require_program

ROOT = Path(__file__).resolve().parents[2]


def processes_under(home: Path) -> list[int]:
    """PIDs whose command line names `home` or whose working directory is inside it (every
    part of the load test's stack runs there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(home) in cmdline or cwd.startswith(str(home)):
            found.append(int(entry.name))
    return found


def run_loadtest(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`wsm loadtest` with `args`, from the repository, on its own private stack (a REDIS_URL or
    WAHA_URL of the test run is not passed on)."""
    return subprocess.run(
        [sys.executable, "-m", "wsm", "loadtest", *args],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "WAHA_URL"}},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_reduced_chaos_run_loses_nothing_sends_nothing_twice_and_keeps_order(
    tmp_path: Path,
) -> None:
    require_program("nginx")
    home = tmp_path / "loadtest"
    report_path = tmp_path / "report.json"
    run = run_loadtest(
        "--customers", "200", "--messages", "5",
        "--chaos", "--worker-kills", "2", "--outage-seconds", "35",
        "--nginx", "on", "--home", str(home), "--json", str(report_path), "--quiet",
        timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())

    checks = report["checks"]
    assert report["messages_written"] == report["messages_answered"] == 1000
    assert checks["lost"] == 0
    assert checks["inbound_duplicated"] == 0
    assert checks["inbound_out_of_order"] == 0
    assert checks["replies_sent_twice"] == 0
    assert checks["replies_not_delivered"] == 0
    assert checks["replies_out_of_order"] == 0
    assert checks["customers_unanswered"] == 0
    assert checks["dead_letters"] == {"queue": 0, "outbox": 0}
    assert checks["settled"] is True
    assert report["replies_delivered"] >= 1000
    assert report["config"]["nginx"] is True

    chaos = report["chaos"]
    assert (chaos["worker_kills"], chaos["redis_restarts"], chaos["redis_outages"]) == (2, 1, 1)
    # WAHA never gave up on a webhook and never saw an error: while Redis was down the
    # gateway answered from its spool, and replayed the spool afterwards.
    assert checks["webhooks_given_up"] == 0
    assert set(report["webhooks"]["statuses"]) == {"200"}
    answers = report["gateway"]["answers"]
    assert answers.get("spooled", 0) > 0
    assert sum(report["gateway"]["spool_replayed"].values()) >= answers["spooled"]

    assert processes_under(home) == [], "processes left running"
