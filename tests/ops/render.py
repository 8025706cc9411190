"""Rendering the monitoring config the way production runs it, for tests on loopback.

nginx is rendered by the product itself (wsm/edge.py: `render_site`, `write_config`): tests
import it from there, so they check what the product ships, never a copy.

Prometheus: `prometheus.yml` finds workers by DNS (`dns_sd_configs`), which only works inside
compose. `render_prometheus_config` keeps every job, rule file and relabelling as they are and
swaps each job's service discovery for static loopback targets.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"

__all__ = ["PROMETHEUS_CONFIG", "REPO", "render_prometheus_config"]


def render_prometheus_config(
    targets: Mapping[str, list[str]],
    *,
    scrape_interval: str | None = None,
    source: Path = PROMETHEUS_CONFIG,
) -> dict[str, Any]:
    """The project's Prometheus config with static targets per job (jobs not in `targets` are
    dropped), rule files made absolute so the result can live in a temporary directory."""
    config: dict[str, Any] = yaml.safe_load(source.read_text("utf-8"))
    rendered = copy.deepcopy(config)
    if scrape_interval is not None:
        rendered.setdefault("global", {})
        rendered["global"]["scrape_interval"] = scrape_interval
        rendered["global"]["evaluation_interval"] = scrape_interval
        # Prometheus refuses a timeout longer than the interval.
        rendered["global"]["scrape_timeout"] = scrape_interval
    rendered["rule_files"] = [
        str((source.parent / pattern).resolve()) for pattern in config.get("rule_files", [])
    ]
    jobs = []
    for job in config.get("scrape_configs", []):
        name = job["job_name"]
        if name not in targets:
            continue
        job = copy.deepcopy(job)
        for key in [k for k in job if k.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": list(targets[name])}]
        if scrape_interval is not None:
            job.pop("scrape_interval", None)
            job.pop("scrape_timeout", None)
        jobs.append(job)
    unknown = set(targets) - {job["job_name"] for job in jobs}
    if unknown:
        raise KeyError(f"no such scrape jobs in {source.name}: {sorted(unknown)}")
    rendered["scrape_configs"] = jobs
    rendered.pop("alerting", None)
    return rendered
