"""Prometheus multiprocess mode for processes that fork (the gateway's `--workers N`, the
worker fleet): every child writes its samples to files in one directory and `/metrics`
aggregates them, so one scrape sees the whole group.

`enable_multiprocess_metrics` must run in the parent before `prometheus_client` is imported
anywhere: prometheus-client picks its value storage when it is first imported.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"


class MetricsSetupError(RuntimeError):
    """prometheus_client was imported before multiprocess mode was switched on."""


def enable_multiprocess_metrics(directory: Path | None = None) -> Path:
    """Point prometheus-client at a clean per-group directory and return it.

    The directory is emptied: files left by a previous run would add old counts to new ones.
    """
    if "prometheus_client" in sys.modules and os.environ.get(ENV_VAR) is None:
        raise MetricsSetupError(
            "enable_multiprocess_metrics() must run before prometheus_client is imported"
        )
    path = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="wsm-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[ENV_VAR] = str(path)
    return path


def render_metrics() -> tuple[bytes, str]:
    """The aggregated exposition of every process of the group, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a dead child's live gauges (called by whoever reaps it)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
