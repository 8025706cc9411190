"""promtool on the project's Prometheus config and alert rules, plus the promises around them:
every alert has a unit test and a runbook entry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.ops.gauges import REDIS_STATE_GAUGES, summed
from tests.ops.render import PROMETHEUS_CONFIG, REPO, render_prometheus_config
from tests.support.tools import require_program

RULES_DIR = REPO / "prometheus" / "rules"
RULE_TESTS = REPO / "prometheus" / "tests" / "wsm-alerts.test.yml"
OPERATIONS_DOC = REPO / "docs" / "operations.md"


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text("utf-8"))["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    program = require_program("promtool")
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_config_on_the_loopback_render(tmp_path: Path) -> None:
    rendered = render_prometheus_config(
        {
            "gateway": ["127.0.0.1:1"],
            "worker": ["127.0.0.1:2", "127.0.0.1:3"],
            "api": ["127.0.0.1:4"],
        },
        scrape_interval="1s",
    )
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(rendered), "utf-8")
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    files = [str(path) for path in sorted(RULES_DIR.glob("*.yml"))]
    assert files
    result = promtool("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_issues_alerts_exist() -> None:
    """Queue growing, oldest message too old, dead letters, gateway spooling or answering 5xx,
    a WAHA session not WORKING, LLM fallback rate high, a worker process down, outbox stuck;
    replies left in the outbox's dead letters, Redis near its maxmemory, booking webhooks
    given up."""
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "WsmQueueGrowing",
        "WsmOldestMessageTooOld",
        "WsmDeadLetters",
        "WsmGatewaySpooling",
        "WsmGatewayAnswering5xx",
        "WsmWahaSessionNotWorking",
        "WsmLlmFallbackRateHigh",
        "WsmWorkerProcessDown",
        "WsmOutboxStuck",
        "WsmOutboxDeadLetters",
        "WsmRedisMemoryHigh",
        "WsmBookingWebhooksGivenUp",
    } <= names


def test_every_alert_fires_in_a_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text("utf-8"))["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"


def test_every_alert_has_severity_and_a_runbook_entry() -> None:
    doc = OPERATIONS_DOC.read_text("utf-8")
    headings = set(re.findall(r"^#{2,4} (Wsm\w+)\s*$", doc, flags=re.MULTILINE))
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}", name
        assert name in headings, f"docs/operations.md has no runbook heading for {name}"


def test_alerts_do_not_sum_redis_state_gauges() -> None:
    """The same rule as the dashboard's: state read from Redis is reported once per replica."""
    for gauge in REDIS_STATE_GAUGES:
        for rule in alert_rules():
            assert not summed(gauge).search(rule["expr"]), (rule["alert"], gauge)


def test_a_workers_dropped_reply_counter_is_exported_at_0_before_the_first_drop() -> None:
    """WsmRepliesDropped reads `increase(wsm_outbox_sends_total{result="dead"}[10m])`. A
    series that first appears at 1 is an increase of 0 to Prometheus, so a worker's first
    dropped reply (often the only one) went unseen (found by an audit): every result is
    exported at 0 from the start, by a process that has sent nothing."""
    script = (
        "import engine.metrics\n"
        "from prometheus_client import generate_latest\n"
        "print(generate_latest().decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=True, env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )  # fmt: skip
    for result in ("dead", "sent", "retry", "parked", "waha_plus_required", "dead_delivered"):
        assert f'wsm_outbox_sends_total{{result="{result}"}} 0.0' in done.stdout, result


def runbook_sections() -> dict[str, str]:
    """Each `### Wsm...` runbook entry of docs/operations.md: its text up to the next heading."""
    doc = OPERATIONS_DOC.read_text("utf-8")
    parts = re.split(r"^### (Wsm\w+)\s*$", doc, flags=re.MULTILINE)
    return {
        name: re.split(r"^##", body, flags=re.MULTILINE)[0]
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def test_every_runbook_entry_names_the_metrics_its_alert_reads() -> None:
    """Whoever is woken up looks for the series that fired; most entries named only panels
    (found by an audit)."""
    sections = runbook_sections()
    for rule in alert_rules():
        expression = rule["expr"]
        read = {
            *re.findall(r"\bwsm_\w+", expression),
            *re.findall(r'\bup\{job="\w+"\}', expression),
        }
        assert read, rule["alert"]
        missing = {name for name in read if name not in sections[rule["alert"]]}
        assert not missing, f"the runbook of {rule['alert']} does not name {sorted(missing)}"


def test_the_runbooks_docker_compose_exec_commands_name_a_compose_service() -> None:
    """`docker compose exec` takes a service: WsmWorkerTargetDown's `docker compose exec
    <container> ...` could not run (found by an audit)."""
    services = set(yaml.safe_load((REPO / "compose.yaml").read_text("utf-8"))["services"])
    doc = OPERATIONS_DOC.read_text("utf-8")
    named = re.findall(r"docker compose exec\s+(?:-\S+\s+)*([^\s`]+)", doc)
    assert named
    assert set(named) <= services, sorted(set(named) - services)
