"""What wsm's processes export before they have done anything: every metrics module of the
gateway, the workers and the engine, plus the worker fleet's and the API's collectors (given one
snapshot each, as a scrape gives them), read from a fresh Python process. The panels, the alerts
and the runbook are checked against these definitions without running the whole product."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tests.ops.render import REPO

_SCRIPT = """
import gateway.metrics, worker.metrics, engine.metrics, engine.agent.metrics
from prometheus_client import REGISTRY, generate_latest
from engine.metrics import EngineSnapshot, EngineStateCollector
from shared.queue_stats import QueueSnapshot
from worker.fleet_metrics import FleetCollector

engine_state = EngineStateCollector()
engine_state.snapshot = EngineSnapshot(0, {"default": 0}, {"bot": 0}, {"default": True})
REGISTRY.register(engine_state)
REGISTRY.register(FleetCollector(QueueSnapshot, lambda: 1))
print(generate_latest().decode())
"""

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@functools.cache
def _exposition() -> str:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=True, env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )  # fmt: skip
    return done.stdout


def sample_types() -> dict[str, str]:
    """Every wsm sample name a query may use (`wsm_x_total`, `wsm_y_bucket`, ...) and the type
    of its metric (counter, histogram, gauge), labelled metrics without a series yet included."""
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(_exposition()):
        if not family.name.startswith("wsm_") or family.name.endswith("_created"):
            continue
        for suffix in _SUFFIXES.get(family.type, ("",)):
            types[family.name + suffix] = family.type
    return types


def samples(name: str) -> list[Sample]:
    """The series of sample `name` a fresh process exports (each at its starting value)."""
    return [
        Sample(sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(_exposition())
        for sample in family.samples
        if sample.name == name
    ]


def label_values(name: str, label: str) -> set[str]:
    """The values of `label` that sample `name` is exported with from the start."""
    return {sample.labels[label] for sample in samples(name) if label in sample.labels}
