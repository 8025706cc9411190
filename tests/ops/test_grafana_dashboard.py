"""The provisioned Grafana dashboard: well-formed for Grafana (unique ids, panels that do not
overlap, one fixed datasource uid) and covering what operators must see at a glance. Whether
every expression evaluates is tested against a real Prometheus in test_monitoring.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.ops.gauges import REDIS_STATE_GAUGES, summed
from tests.ops.render import REPO

DASHBOARD = REPO / "grafana" / "dashboards" / "wsm.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return document


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "wsm-overview"
    assert dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None, "provisioned dashboards have no id"


def test_every_dashboard_file_is_json() -> None:
    files = list((REPO / "grafana" / "dashboards").glob("*"))
    assert files == [DASHBOARD] or all(Path(f).suffix == ".json" for f in files)


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_panel_queries_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "wsm-prometheus"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize(
    ("what", "needle"),
    [
        ("webhook rate", "rate(wsm_webhook_requests_total"),
        ("webhook outcomes", "sum by (outcome) (rate(wsm_webhook_requests_total"),
        ("receipts settled at the door", "rate(wsm_webhook_receipts_settled_total"),
        ("webhook latency p50", "histogram_quantile(0.5, sum by (le) (rate(wsm_webhook_duration"),
        ("webhook latency p99", "histogram_quantile(0.99, sum by (le) (rate(wsm_webhook_duration"),
        ("queue depth", "wsm_queue_messages"),
        ("oldest age", "wsm_queue_oldest_age_seconds"),
        ("handled messages", "rate(wsm_worker_messages_total"),
        ("handling latency", "rate(wsm_worker_handle_seconds_bucket"),
        ("redeliveries", "rate(wsm_queue_redeliveries_total"),
        ("dead letters", "wsm_dlq_messages"),
        ("outbox dead letters", "max(wsm_outbox_dlq_messages)"),
        ("Redis memory used", "max(wsm_redis_memory_used_bytes)"),
        ("Redis maxmemory", "max(wsm_redis_memory_max_bytes)"),
        ("Redis round trips", "rate(wsm_webhook_enqueue_round_trip_seconds_bucket"),
        ("Redis failures", "sum by (reason) (rate(wsm_webhook_redis_failures_total"),
        ("spool replays", "sum by (result) (rate(wsm_spool_replayed_total"),
        ("booking webhooks", "sum by (result) (rate(wsm_booking_webhook_deliveries_total"),
        ("transcriptions", "sum by (result) (rate(wsm_transcriptions_total"),
        ("transcription latency", "rate(wsm_transcription_duration_seconds_bucket"),
        ("freed slot offers", "sum by (event) (rate(wsm_freed_slot_offers_total"),
        ("bursts answered together", "rate(wsm_agent_burst_deferred_total"),
        ("outbox sends", "rate(wsm_outbox_sends_total"),
        ("outbox pending", "wsm_outbox_pending"),
        ("waiting line length", "wsm_waiting_line_length"),
        ("wait times", "rate(wsm_waiting_seconds_bucket"),
        ("LLM latency", "rate(wsm_llm_duration_seconds_bucket"),
        ("tokens", "rate(wsm_llm_tokens_total"),
        ("fallbacks", "rate(wsm_llm_fallbacks_total"),
        ("WAHA session status", "wsm_waha_session_up"),
    ],
)
def test_dashboard_shows(dashboard: dict[str, Any], what: str, needle: str) -> None:
    assert any(needle in expression for expression in expressions(dashboard)), what


@pytest.mark.parametrize("gauge", REDIS_STATE_GAUGES)
def test_redis_state_gauges_are_not_summed_over_replicas(
    dashboard: dict[str, Any], gauge: str
) -> None:
    """Every replica that reports these reads the same state from Redis: a sum would show N
    times the truth after `--scale worker=N`."""
    for expression in expressions(dashboard):
        assert not summed(gauge).search(expression), expression
    assert any(gauge in expression for expression in expressions(dashboard)), gauge
