"""`wsm loadtest --events`: the simulated WAHA subscribed as compose subscribes the real one
(`message.any` without `message`), so each customer message arrives once, not as a twin the
gateway drops; and a subscription that could not work is refused before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_loadtest_chaos import processes_under, run_loadtest

COMPOSE_EVENTS = "message.any,message.ack,session.status"


@pytest.mark.slow
def test_a_load_run_with_waha_subscribed_as_compose_subscribes_it(tmp_path: Path) -> None:
    home = tmp_path / "loadtest"
    report_path = tmp_path / "report.json"
    run = run_loadtest(
        "--customers", "20", "--messages", "3", "--events", COMPOSE_EVENTS, "--nginx", "off",
        "--home", str(home), "--json", str(report_path), "--quiet",
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"events {COMPOSE_EVENTS}" in run.stdout
    report = json.loads(report_path.read_text())
    assert report["config"]["events"] == COMPOSE_EVENTS.split(",")
    checks = report["checks"]
    assert report["messages_written"] == report["messages_answered"] == 60
    assert (checks["lost"], checks["inbound_duplicated"], checks["replies_sent_twice"]) == (0, 0, 0)
    assert checks["customers_unanswered"] == 0 and checks["settled"] is True
    # Four webhooks per customer message (its message.any, our reply's echo, two receipts) and
    # a few for the warm-up; subscribed to both `message` and `message.any` it would be five,
    # with every twin answered `duplicate`.
    assert report["webhooks"]["deliveries"] < 5 * 60
    assert report["gateway"]["answers"].get("duplicate", 0) == 0
    assert processes_under(home) == [], "processes left running"


@pytest.mark.parametrize(
    ("events", "error"),
    [
        ("message,message.revoked", "--events: unknown message.revoked"),
        ("message.ack,session.status", "--events needs message or message.any"),
    ],
)
def test_a_subscription_that_cannot_work_is_refused_before_anything_starts(
    tmp_path: Path, events: str, error: str
) -> None:
    home = tmp_path / "loadtest"
    run = run_loadtest("--events", events, "--home", str(home), timeout=60)
    assert run.returncode == 2
    assert error in run.stderr
    assert not home.exists()
