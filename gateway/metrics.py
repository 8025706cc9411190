"""The gateway's Prometheus metrics.

Importing this module imports prometheus_client, so `gateway.cli` switches on multiprocess mode
first (shared.metrics_setup): with `--workers N` every process writes its samples to files in
one directory and any process's `/metrics` reports the sum of all of them.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)

from shared.enqueue import SETTLED
from shared.metrics_setup import ENV_VAR, mark_process_dead, render_metrics

OUTCOMES = (
    "queued",
    "duplicate",
    "ignored",
    "spooled",
    "stale",
    "unauthorized",
    "invalid",
    "too_large",
    "unavailable",
)

WEBHOOK_REQUESTS = Counter(
    "wsm_webhook_requests_total",
    "Webhook requests by how they were answered.",
    ["outcome"],
)
# Pre-bound children: `labels()` on the hot path costs a dict lookup and a lock per request.
OUTCOME_COUNTERS = {outcome: WEBHOOK_REQUESTS.labels(outcome) for outcome in OUTCOMES}

WEBHOOK_DURATION = Histogram(
    "wsm_webhook_duration_seconds",
    "Time from a webhook request reaching the handler (headers read) to its answer.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

ENQUEUE_BATCH_SIZE = Histogram(
    "wsm_webhook_enqueue_batch_events",
    "Events per pipelined enqueue round trip (concurrent requests share one).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

ENQUEUE_ROUND_TRIP = Histogram(
    "wsm_webhook_enqueue_round_trip_seconds",
    "Duration of one pipelined enqueue round trip to Redis (cut off at the deadline).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)

REDIS_FAILURES = Counter(
    "wsm_webhook_redis_failures_total",
    "Enqueue round trips that failed, by reason (timeout: slower than the deadline).",
    ["reason"],
)

SPOOL_EVENTS = Gauge(
    "wsm_spool_events",
    "Events in the local spool waiting to be replayed into Redis (all processes).",
    multiprocess_mode="livesum",
)

RECEIPTS_SETTLED = Counter(
    "wsm_webhook_receipts_settled_total",
    "Acks and echoes of the business's own messages settled on their message by the enqueue "
    "script instead of queued (answered `queued`; replayed ones included).",
)


def count_settled(results: list[int]) -> None:
    """Count the receipts an enqueue round trip settled (its answers, shared/enqueue.py): one
    place for the webhook's batches and the spool's replays."""
    settled = results.count(SETTLED)
    if settled:
        RECEIPTS_SETTLED.inc(settled)


SPOOL_REPLAYED = Counter(
    "wsm_spool_replayed_total",
    "Spooled events replayed into Redis, by result (duplicate: Redis already had it).",
    ["result"],
)
# Each value exported at 0 from the start: a series that first appears at 1 is no increase to
# Prometheus, and a panel's rate would miss the first event.
for _result in ("queued", "duplicate", "unroutable"):
    SPOOL_REPLAYED.labels(_result)
for _reason in ("timeout", "error"):
    REDIS_FAILURES.labels(_reason)

SPOOL_WRITE_FAILURES = Counter(
    "wsm_spool_write_failures_total",
    "Spool appends that failed (each one answered 503).",
)

SPOOL_ADOPTED_FILES = Counter(
    "wsm_spool_adopted_files_total",
    "Spool files of dead gateway processes taken over for replay.",
)

PROCESS_START = Gauge(
    "wsm_gateway_process_start_time_seconds",
    "Start time of each live gateway process (one series per pid).",
    multiprocess_mode="liveall",
)

_GAUGE_FILE = re.compile(r"^gauge_live(?:sum|all)_(\d+)\.db$")


def multiprocess_mode() -> bool:
    # prometheus_client picks its value class once, at import, from PROMETHEUS_MULTIPROC_DIR.
    return values.ValueClass is not values.MutexValue


def render() -> tuple[bytes, str]:
    """The exposition of every process of this gateway (or of this one in single mode)."""
    if multiprocess_mode():
        return render_metrics()
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_started() -> None:
    PROCESS_START.set(time.time())


def forget_dead_processes() -> list[int]:
    """Drop live gauges left by gateway processes that died without cleaning up (SIGKILL).

    Without this a killed process's spool count would still be summed into wsm_spool_events
    while the process that adopted its spool counts the same events again.
    """
    if not multiprocess_mode():
        return []
    # prometheus_client's own convention: the directory comes from this variable.
    directory = os.environ.get(ENV_VAR)
    if not directory:
        return []
    dead: list[int] = []
    for path in Path(directory).glob("gauge_live*.db"):
        match = _GAUGE_FILE.match(path.name)
        if match and not _alive(int(match.group(1))):
            dead.append(int(match.group(1)))
    for pid in sorted(set(dead)):
        mark_process_dead(pid)
    return dead


def forget_this_process() -> None:
    if multiprocess_mode():
        mark_process_dead(os.getpid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
