"""Rendering the edge and monitoring configs the way production does, for tests on loopback.

nginx: the official image renders `/etc/nginx/templates/*.template` with
`envsubst "${NAME1} ${NAME2} ..."`, listing only the environment variables whose names match
`NGINX_ENVSUBST_FILTER`. `render_nginx_template` does exactly that in Python (both `$NAME` and
`${NAME}` forms, only for listed names), and additionally refuses a template that references
a variable matching the filter that was not given: in the image such a reference would stay
literal and nginx would fail at start, far from the cause.

Prometheus: `prometheus.yml` finds workers by DNS (`dns_sd_configs`), which only works inside
compose. `render_prometheus_config` keeps every job, rule file and relabelling as they are and
swaps each job's service discovery for static loopback targets.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE = REPO / "nginx" / "templates" / "default.conf.template"
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"

# The filter compose gives the official image (NGINX_ENVSUBST_FILTER).
NGINX_ENVSUBST_FILTER = r"^NGINX_"

_REFERENCE = re.compile(
    r"\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingTemplateVariable(KeyError):
    """The template uses a variable that matches the filter but has no value."""


def template_variables(text: str, name_filter: str = NGINX_ENVSUBST_FILTER) -> set[str]:
    """Names of the substitutable variables a template references."""
    matcher = re.compile(name_filter)
    names = set()
    for match in _REFERENCE.finditer(text):
        name = match.group("braced") or match.group("bare")
        if matcher.search(name):
            names.add(name)
    return names


def render_nginx_template(
    text: str, values: Mapping[str, str], name_filter: str = NGINX_ENVSUBST_FILTER
) -> str:
    """envsubst restricted to `values` whose names match `name_filter`."""
    matcher = re.compile(name_filter)
    missing = sorted(name for name in template_variables(text, name_filter) if name not in values)
    if missing:
        raise MissingTemplateVariable(f"template variables without a value: {', '.join(missing)}")

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if matcher.search(name) and name in values:
            return values[name]
        return match.group(0)

    return _REFERENCE.sub(substitute, text)


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
