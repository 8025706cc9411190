"""The engine's metrics.

Counted where they happen (in the worker processes, prometheus multiprocess mode):
`wsm_outbox_sends_total{result}` and `wsm_waiting_seconds`.

Read from Redis when scraped (by the operator API's /metrics, one process, so the numbers are
the deployment's, not one process's view): `wsm_outbox_pending`, `wsm_waiting_line_length
{session}`, `wsm_conversations{state}`, `wsm_waha_session_up{session}`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

OUTBOX_SENDS = Counter(
    "wsm_outbox_sends_total",
    "Replies the sender tried to deliver, by result (sent, retry, parked, dead, "
    "waha_plus_required: a file WAHA Core refused as a Plus feature, and dead_delivered: a "
    "dead reply whose echo came, so it reached WhatsApp after all).",
    ["result"],
)
# Every result exported from the start, at 0: a series that first appears at 1 is an increase
# of 0 to Prometheus, so WsmRepliesDropped would miss a worker's first dropped reply (found by
# an audit).
OUTBOX_RESULTS = ("sent", "retry", "parked", "dead", "waha_plus_required", "dead_delivered")
for _result in OUTBOX_RESULTS:
    OUTBOX_SENDS.labels(_result)
WAITING_SECONDS = Histogram(
    "wsm_waiting_seconds",
    "Time a customer waited in line until a person took them.",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    outbox_pending: int
    line_lengths: dict[str, int]
    conversations: dict[str, int]
    sessions_up: dict[str, bool]


class EngineStateCollector(Collector):
    """Yields gauges from a snapshot taken just before the scrape (see api/metrics_route)."""

    def __init__(self) -> None:
        self.snapshot: EngineSnapshot | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snap = self.snapshot
        pending = GaugeMetricFamily(
            "wsm_outbox_pending", "Replies committed and not yet delivered to WAHA."
        )
        line = GaugeMetricFamily(
            "wsm_waiting_line_length", "Customers waiting for a person.", labels=["session"]
        )
        conversations = GaugeMetricFamily(
            "wsm_conversations", "Conversations by state.", labels=["state"]
        )
        up = GaugeMetricFamily(
            "wsm_waha_session_up", "1 when the WAHA session's last status was WORKING.",
            labels=["session"],
        )  # fmt: skip
        if snap is not None:
            pending.add_metric([], snap.outbox_pending)
            for session, length in sorted(snap.line_lengths.items()):
                line.add_metric([session], length)
            for state, count in sorted(snap.conversations.items()):
                conversations.add_metric([state], count)
            for session, is_up in sorted(snap.sessions_up.items()):
                up.add_metric([session], 1 if is_up else 0)
        yield from (pending, line, conversations, up)
