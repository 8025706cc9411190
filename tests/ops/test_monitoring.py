"""A real Prometheus, running the project's prometheus.yml and alert rules rendered for loopback
targets, scrapes the real gateway and two real worker fleets (each its own target, as two
replicas are under compose). After some traffic, every Grafana panel's and every alert rule's
expression evaluates without error through Prometheus's HTTP API, and the core panels show
the traffic."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from shared.embedded_redis import free_port
from tests.ops.conftest import HMAC_KEY, Api, Gateway
from tests.ops.processes import Service, python_m, running_program, wsm_environment
from tests.ops.render import REPO, render_prometheus_config
from tests.support.polling import wait_until
from tests.support.tools import require_program
from tests.support.waha import compact, text_message, webhook_headers

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
SCRAPE_INTERVAL = "1s"
# What Grafana substitutes for its interval variables; $__rate_interval is at least four
# scrape intervals, here widened so the whole short traffic burst stays in the window.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}
MESSAGES = 24
# Metrics of parts these fleets do not run (they run the recording handler, not the
# conversation engine and the AI agent) or that the API exports only with data in Redis;
# test_metric_definitions.py checks these names against the code's definitions instead.
NOT_YET_EXPORTED = {
    "wsm_outbox_sends_total",
    "wsm_outbox_pending",
    "wsm_waiting_line_length",
    "wsm_waiting_seconds_bucket",
    "wsm_conversations",
    "wsm_waha_session_up",
    "wsm_llm_requests_total",
    "wsm_llm_duration_seconds_bucket",
    "wsm_llm_tokens_total",
    "wsm_llm_fallbacks_total",
    "wsm_agent_tool_calls_total",
    "wsm_llm_ratelimit_remaining",
    "wsm_reminders_total",  # the agent's (these fleets run the recording handler)
    "wsm_agent_burst_deferred_total",
    "wsm_freed_slot_offers_total",
    "wsm_booking_webhook_deliveries_total",
    "wsm_transcriptions_total",  # the engine's media (engine/media/)
    "wsm_transcription_duration_seconds_bucket",
}


@dataclass
class Monitoring:
    url: str
    gateway: Gateway
    api: Api
    fleets: list[tuple[Service, int]]
    prometheus: Service

    def query(self, expression: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=10)
        document: dict[str, Any] = response.json()
        return document

    def vector(self, expression: str) -> list[dict[str, Any]]:
        document = self.query(expression)
        assert document["status"] == "success", (expression, document)
        result: list[dict[str, Any]] = document["data"]["result"]
        return result


def start_fleet(
    stack: ExitStack, name: str, gateway: Gateway, redis_url: str, workdir: Path
) -> tuple[Service, int]:
    port = free_port()
    environment = {
        "REDIS_URL": redis_url,
        "WSM_KEY_PREFIX": gateway.prefix,
        "WSM_QUEUE_SHARDS": "1",
        "WSM_WORKER_METRICS_HOST": "127.0.0.1",
        "WSM_WORKER_METRICS_DIR": str(workdir / "metrics"),
        # The handler that records what it got: the monitoring test needs messages handled,
        # not conversations (which would call WAHA).
        "WSM_WORKER_HANDLER": "worker.handlers.recording:record",
    }
    argv = python_m(
        "worker",
        "--processes", "1",
        "--concurrency", "4",
        "--metrics-port", str(port),
        "--fleet-id", f"{gateway.prefix}-{name}",
    )  # fmt: skip
    ready_url = f"http://127.0.0.1:{port}/metrics"
    service = stack.enter_context(
        running_program(name, argv, wsm_environment(environment), workdir, ready_url)
    )
    return service, port


@pytest.fixture(scope="module")
def monitoring(
    gateway: Gateway, api: Api, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitoring]:
    prometheus = require_program("prometheus")
    with ExitStack() as stack:
        fleets = [
            start_fleet(stack, name, gateway, redis_url, tmp_path_factory.mktemp(name))
            for name in ("fleet-a", "fleet-b")
        ]
        workdir = tmp_path_factory.mktemp("prometheus")
        config = render_prometheus_config(
            {
                "gateway": [f"127.0.0.1:{gateway.port}"],
                "worker": [f"127.0.0.1:{port}" for _, port in fleets],
                "api": [f"127.0.0.1:{api.port}"],
            },
            scrape_interval=SCRAPE_INTERVAL,
        )
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), "utf-8")
        port = free_port()
        service = stack.enter_context(
            running_program(
                "prometheus",
                [
                    prometheus,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                dict(os.environ),
                workdir,
                ready_url=f"http://127.0.0.1:{port}/-/ready",
            )
        )
        yield Monitoring(f"http://127.0.0.1:{port}", gateway, api, fleets, service)


@pytest.fixture(scope="module")
def traffic(monitoring: Monitoring) -> int:
    """Signed WAHA messages over several chats, posted to the gateway and drained by the fleets."""
    with httpx.Client(base_url=monitoring.gateway.url, timeout=10) as client:
        for n in range(MESSAGES):
            chat = f"55119{uuid.uuid4().int % 10**8:08d}@c.us"
            body = compact(text_message(chat, f"Oi! mensagem {n} 👋"))
            response = client.post(
                "/webhook", content=body, headers=webhook_headers(body, HMAC_KEY)
            )
            assert response.json() == {"status": "queued"}, response.text

    def handled() -> bool:
        total = 0.0
        for _, port in monitoring.fleets:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            match = re.search(r'^wsm_worker_messages_total\{outcome="ok"\} (\S+)$', text, re.M)
            total += float(match.group(1)) if match else 0.0
        return total >= MESSAGES

    wait_until(handled, timeout=30, interval=0.2, what="the fleets to handle the messages")
    return MESSAGES


def panel_expressions() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text("utf-8"))["panels"]:
            for target in panel.get("targets", []):
                expression = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expression = expression.replace(variable, value)
                assert "$" not in expression, f"unhandled Grafana variable in {expression!r}"
                found.append((f"{path.stem}: {panel['title']}", expression))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text("utf-8"))["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("alert") or rule.get("record"), rule["expr"]))
    return found


def panel(title: str) -> list[str]:
    return [expression for name, expression in panel_expressions() if name.endswith(f": {title}")]


def test_gateway_and_both_worker_fleets_are_scraped_and_up(monitoring: Monitoring) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        response = httpx.get(f"{monitoring.url}/api/v1/targets", timeout=5).json()
        targets: list[dict[str, Any]] = response["data"]["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_until(all_up, timeout=30, interval=0.25, what="every target up")
    assert targets
    by_job: dict[str, set[str]] = {}
    for target in targets:
        by_job.setdefault(target["labels"]["job"], set()).add(target["labels"]["instance"])
    assert by_job == {
        "gateway": {f"127.0.0.1:{monitoring.gateway.port}"},
        "worker": {f"127.0.0.1:{port}" for _, port in monitoring.fleets},
        "api": {f"127.0.0.1:{monitoring.api.port}"},
    }

    # Each fleet reports its own processes under its own instance label.
    def both_fleets() -> list[dict[str, Any]] | None:
        found = monitoring.vector("wsm_worker_processes")
        return found if len(found) == 2 else None

    series = wait_until(both_fleets, timeout=15, what="wsm_worker_processes from both fleets")
    assert series
    assert {s["metric"]["instance"] for s in series} == by_job["worker"]
    assert all(float(s["value"][1]) == 1 for s in series)


def test_core_panels_show_the_traffic(monitoring: Monitoring, traffic: int) -> None:
    # The outcomes, then the part of `queued` settled at the door (acks and echoes).
    webhooks, settled = panel("Webhook rate by outcome")
    (handled,) = panel("Handled messages")
    depth = panel("Queue depth")
    assert webhooks and handled and depth

    def outcome_rate(expression: str, outcome: str) -> float:
        for series in monitoring.vector(expression):
            if series["metric"].get("outcome") == outcome:
                return float(series["value"][1])
        return 0.0

    wait_until(
        lambda: outcome_rate(webhooks, "queued") > 0 and outcome_rate(handled, "ok") > 0,
        timeout=30,
        interval=0.25,
        what="Prometheus to see webhooks queued and messages handled",
    )
    for expression in [*depth, settled]:
        result = monitoring.vector(expression)
        assert len(result) == 1, expression
        assert float(result[0]["value"][1]) >= 0
    for expression in panel("Webhook latency"):
        (series,) = monitoring.vector(expression)
        assert 0 < float(series["value"][1]) < 1, expression


def test_every_metric_the_panels_and_alerts_name_is_exported(
    monitoring: Monitoring, traffic: int
) -> None:
    """An expression over a misspelt name (or a counter without `_total`) evaluates fine and
    shows nothing forever; compare the names used with what the real processes export."""
    used = {
        name
        for _, expression in panel_expressions() + rule_expressions()
        for name in re.findall(r"\bwsm_[a-z_]+\b", expression)
    }
    exported = set(
        httpx.get(f"{monitoring.url}/api/v1/label/__name__/values", timeout=5).json()["data"]
    )
    assert used - exported <= NOT_YET_EXPORTED, sorted(used - exported - NOT_YET_EXPORTED)


def test_the_redis_panels_show_the_real_redis_memory(
    monitoring: Monitoring, redis_url: str
) -> None:
    """Both fleets read INFO memory at each scrape: the "Redis memory" panel shows the server's
    used_memory and its maxmemory as Redis itself reports them."""
    client = redis.Redis.from_url(redis_url)
    try:
        info = client.info("memory")
    finally:
        client.close()
    wait_until(
        lambda: len(monitoring.vector("wsm_redis_memory_used_bytes > 0")) == 2,
        timeout=15,
        what="Redis's memory from both fleets",
    )
    used, limit = panel("Redis memory")
    (series,) = monitoring.vector(used)
    assert abs(float(series["value"][1]) - info["used_memory"]) < 64 * 1024 * 1024
    (series,) = monitoring.vector(limit)
    assert float(series["value"][1]) == info["maxmemory"]


@pytest.mark.parametrize(("where", "expression"), panel_expressions() + rule_expressions())
def test_every_panel_and_alert_expression_evaluates(
    monitoring: Monitoring, traffic: int, where: str, expression: str
) -> None:
    document = monitoring.query(expression)
    assert document["status"] == "success", (where, document)
    assert document["data"]["resultType"] in {"vector", "scalar"}, where


def test_prometheus_evaluates_every_alert_rule_and_a_healthy_stack_raises_none(
    monitoring: Monitoring, traffic: int
) -> None:
    names = {name for name, _ in rule_expressions()}

    def rules() -> dict[str, dict[str, Any]]:
        groups = httpx.get(f"{monitoring.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        return {rule["name"]: rule for group in groups for rule in group["rules"]}

    def evaluated() -> dict[str, dict[str, Any]] | None:
        found = rules()
        done = set(found) == names and all(r["health"] != "unknown" for r in found.values())
        return found if done else None

    found = wait_until(evaluated, timeout=30, what="every rule evaluated")
    assert found
    for name, rule in found.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))

    # Everything is up and drained: no alert is pending or firing (an absent() or a ratio
    # that misfires on a healthy stack would show here).
    def quiet() -> bool:
        return all(rule["state"] == "inactive" for rule in rules().values())

    wait_until(quiet, timeout=20, interval=0.25, what="every alert inactive")
