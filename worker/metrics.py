"""Metrics each worker process records (prometheus multiprocess mode: the supervisor's /metrics
sums every process). Queue-wide figures are not here: the supervisor reads them from Redis once
(worker/fleet_metrics.py) instead of N processes reporting N copies.

Import only after shared.metrics_setup.enable_multiprocess_metrics() ran in the supervisor
(the environment variable it sets is inherited by every worker process).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# ok: committed; retry: failed, will be tried again; dead: sent to the dead letters;
# lost: the lease was gone, work dropped (someone else handles the message).
MESSAGES = Counter(
    "wsm_worker_messages",
    "Messages handled by the worker fleet, by outcome.",
    ["outcome"],
)
HANDLE_SECONDS = Histogram(
    "wsm_worker_handle_seconds",
    "Time from handing a message to the handler to its commit.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120),
)
# Updated once per turn: a slot inside a conversation's turn is handling one of its messages
# (or committing it) all but the moment between two of them.
INFLIGHT = Gauge(
    "wsm_worker_inflight",
    "Messages being handled right now (slots inside a conversation's turn).",
    multiprocess_mode="livesum",
)

for _outcome in ("ok", "retry", "dead", "lost"):
    MESSAGES.labels(_outcome)
# Looked up once: `labels()` per message is a dict lookup and a lock on the hot path.
HANDLED_OK = MESSAGES.labels("ok")
