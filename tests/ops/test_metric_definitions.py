"""The panels and the alerts against the metrics as the code defines them (tests/ops/exposition.py:
a fresh process's exposition): every name a query uses exists, with the type its function needs
and the labels it groups by; every counter an alert or a panel rates is exported at 0 from the
start; and label values come from small fixed sets, never from text a model or a customer wrote.
Whether the expressions evaluate against the real processes is test_monitoring.py's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from engine.agent.calendar import load_calendar
from engine.agent.metrics import TOOL_CALLS
from engine.agent.tools import ToolSession
from tests.ops.exposition import label_values, sample_types, samples
from tests.ops.render import REPO

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance"}
RATE = re.compile(r"\b(?:rate|irate|increase)\(\s*$")


def panels() -> list[dict[str, Any]]:
    return [
        panel
        for path in DASHBOARDS
        for panel in json.loads(path.read_text("utf-8"))["panels"]
        if panel["type"] != "row"
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text("utf-8"))["groups"]
        for rule in group["rules"]
    ]


def queries() -> list[tuple[str, str]]:
    found = [(panel["title"], target["expr"]) for panel in panels() for target in panel["targets"]]
    return found + [(rule.get("alert") or rule["record"], rule["expr"]) for rule in alert_rules()]


def labels_of(name: str) -> set[str]:
    return {label for sample in samples(name) for label in sample.labels} | TARGET_LABELS


@pytest.mark.parametrize(("where", "expression"), queries(), ids=[w for w, _ in queries()])
def test_every_query_uses_metrics_as_they_are_defined(where: str, expression: str) -> None:
    """A misspelt name, rate() over a gauge, a quantile over something that is not a bucket or
    a grouping by a label the metric does not have all evaluate fine and show nothing (or
    nonsense) forever."""
    types = sample_types()
    for match in re.finditer(r"\bwsm_\w+", expression):
        name = match.group(0)
        assert name in types, f"{where}: {name} is not exported by any part"
        rated = bool(RATE.search(expression[: match.start()]))
        if types[name] == "gauge":
            assert not rated, f"{where}: rate()/increase() over the gauge {name}"
        else:
            assert rated, f"{where}: the {types[name]} {name} read without rate()/increase()"
    for match in re.finditer(r"histogram_quantile\(\s*[\d.]+\s*,\s*(.*)", expression):
        (name,) = re.findall(r"\bwsm_\w+", match.group(1))[:1]
        assert name.endswith("_bucket") and types[name] == "histogram", (where, name)
        grouping = re.search(r"\bby\s*\(([^)]*)\)", match.group(1))
        assert grouping and "le" in re.split(r"\s*,\s*", grouping.group(1)), where
    for match in re.finditer(r"\bby\s*\(([^)]*)\)", expression):
        names = re.findall(r"\bwsm_\w+", expression[match.end() :])
        if not names or not samples(names[0]):
            continue  # not a wsm metric (up, ALERTS), or one with no series yet (tool calls)
        wanted = {label.strip() for label in match.group(1).split(",")} - {"le"}
        assert wanted <= labels_of(names[0]), (where, names[0], wanted)
    for name, matchers in re.findall(r"\b(wsm_\w+)\{([^}]*)\}", expression):
        used = set(re.findall(r"(\w+)\s*[=!]~?", matchers))
        assert not samples(name) or used <= labels_of(name), (where, name, used)


def selections(expression: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Each `rate(`/`increase(` of a wsm counter in `expression`, with its label matchers."""
    found = []
    for name, matchers in re.findall(
        r"\b(?:rate|irate|increase)\((wsm_\w+_total)(?:\{([^}]*)\})?\[", expression
    ):
        found.append((name, re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers or "")))
    return found


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule.get("alert", "record"))
def test_every_counter_series_an_alert_counts_is_exported_at_0_from_the_start(
    rule: dict[str, Any],
) -> None:
    """A series that first appears at 1 is an increase of 0 to Prometheus: an alert on it
    misses the first event (found by audits: a worker's first dropped reply, its first
    fallbacks to the menu). Every series an alert selects exists at 0 before anything
    happened, and a value the alert excludes is one the counter has (not a typo)."""
    for name, matchers in selections(rule["expr"]):
        assert samples(name), f"{rule['alert']}: {name} has no series until its first event"
        assert all(sample.value == 0 for sample in samples(name)), name
        for label, operator, value in matchers:
            exported = label_values(name, label)
            named = set(value.split("|")) if "~" in operator else {value}
            assert named <= exported, f"{rule['alert']}: {name}{{{label}}} lacks {named - exported}"
            if operator.startswith("!"):
                assert exported - named, f"{rule['alert']}: {name} excludes every {label}"


# The counters the panels and alerts rate, split by a label: every value of that label the code
# counts is exported at 0 from the start (the values as docs and code name them).
RATED_COUNTERS = [
    ("wsm_webhook_requests_total", "outcome",
     {"queued", "duplicate", "ignored", "spooled", "stale", "unauthorized", "invalid",
      "too_large", "unavailable"}),
    ("wsm_worker_messages_total", "outcome", {"ok", "retry", "dead", "lost"}),
    ("wsm_outbox_sends_total", "result",
     {"sent", "retry", "parked", "dead", "waha_plus_required", "dead_delivered"}),
    ("wsm_llm_requests_total", "result",
     {"ok", "timeout", "connection_error", "rate_limited", "server_error", "request_too_large",
      "model_not_found", "not_found", "auth_error", "bad_request", "tool_use_failed",
      "bad_response"}),
    ("wsm_llm_tokens_total", "kind", {"prompt", "completion"}),
    ("wsm_llm_fallbacks_total", "reason",
     {"no_api_key", "breaker_open", "timeout", "rate_limited", "server_error", "connection_error",
      "model_error", "bad_response", "tool_rounds", "request_too_large", "turn_limit",
      "token_limit", "unheard_audio"}),
    ("wsm_reminders_total", "event",
     {"due", "sent", "confirmed", "rescheduled", "cancelled", "unanswered"}),
    ("wsm_dlq_dropped_total", "list", {"queue", "outbox"}),
    ("wsm_booking_webhook_deliveries_total", "result", {"delivered", "retry", "dead"}),
    ("wsm_freed_slot_offers_total", "event", {"queued", "sent", "taken", "lost"}),
    ("wsm_transcriptions_total", "result", {"ok", "failed", "skipped"}),
    ("wsm_spool_replayed_total", "result", {"queued", "duplicate", "unroutable"}),
    ("wsm_webhook_redis_failures_total", "reason", {"timeout", "error"}),
]  # fmt: skip
RATED_IDS = [name for name, _, _ in RATED_COUNTERS]


@pytest.mark.parametrize(("name", "label", "values"), RATED_COUNTERS, ids=RATED_IDS)
def test_every_value_of_a_rated_counter_is_exported_at_0_from_the_start(
    name: str, label: str, values: set[str]
) -> None:
    assert label_values(name, label) == values
    assert all(sample.value == 0 for sample in samples(name)), name


# wsm_transcriptions_total has two labels: every (result, reason) the code counts
# (engine/media/transcribe.py, engine/media/ingest.py), as engine/agent/metrics.py names them.
TRANSCRIPTION_OUTCOMES = {
    ("ok", ""), ("ok", "empty"),
    *(("skipped", reason) for reason in
      ("too_large", "empty", "breaker_open", "turn_limit", "turn_deadline")),
    *(("failed", reason) for reason in
      ("timeout", "connection_error", "rate_limited", "server_error", "model_not_found",
       "not_found", "auth_error", "bad_request", "request_too_large", "bad_response", "error",
       "turn_deadline")),
}  # fmt: skip


def test_every_transcription_outcome_is_exported_at_0_from_the_start() -> None:
    """Found by an audit: each series appeared with a worker's first transcription of its
    kind, at 1, which rate() reads as no increase, so the "Voice note transcriptions" panel
    missed each worker's first failure of every kind."""
    found = samples("wsm_transcriptions_total")
    assert {(s.labels["result"], s.labels["reason"]) for s in found} == TRANSCRIPTION_OUTCOMES
    assert all(sample.value == 0 for sample in found)


@pytest.mark.parametrize(("name", "label", "values"), RATED_COUNTERS, ids=RATED_IDS)
def test_a_panel_that_splits_a_counter_says_what_each_value_means(
    name: str, label: str, values: set[str]
) -> None:
    """The legend shows `{{outcome}}`, `{{reason}}`...: the panel's description names each
    value, so an operator seeing `lost` or `model_error` for the first time knows what it is."""
    split = re.compile(rf"\bby\s*\(\s*{label}\s*\)\s*\(\s*rate\(\s*{name}\b")
    described = [
        panel
        for panel in panels()
        if any(split.search(target["expr"]) for target in panel["targets"])
    ]
    for panel in described:
        missing = {v for v in values if not re.search(rf"\b{v}\b", panel.get("description", ""))}
        assert not missing, f"{panel['title']}: the description does not name {sorted(missing)}"


def test_every_panel_says_what_it_shows() -> None:
    for panel in panels():
        assert panel["title"].strip() and panel.get("description", "").strip(), panel["title"]


async def test_tool_call_labels_never_carry_the_models_words(tmp_path: Path) -> None:
    """`wsm_agent_tool_calls_total{result}` took the tool's error as its label, and an unknown
    team's error quoted the team the model asked for: every new wording a new series, without
    bound (found by an audit). The result label is a fixed code; the words stay in the detail."""
    document = {
        "business": {"name": "Clínica"},
        "hours": {"mon": ["08:00-18:00"]},
        "services": [{"id": "consulta", "name": "Consulta"}],
        "teams": [{"id": "recepcao", "name": "Recepção"}, {"id": "financeiro", "name": "Fin"}],
    }
    path = tmp_path / "calendar.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    agenda: Any = SimpleNamespace(calendar=load_calendar(path))
    tools = ToolSession(agenda, None, "m1", "quero falar com o dono", None)  # type: ignore[arg-type]
    asked = "a equipe do dono, por favor 7f3a"
    answer = await tools.call("handoff_to_human", json.dumps({"team": asked}))
    assert answer["ok"] is False and answer["error"] == "unknown_team"
    assert asked in answer["detail"] and answer["teams"]
    results = {
        sample.labels["result"]
        for metric in TOOL_CALLS.collect()
        for sample in metric.samples
        if sample.name == "wsm_agent_tool_calls_total"
    }
    assert "unknown_team" in results
    assert all(re.fullmatch(r"[a-z_]+", result) for result in results), results
