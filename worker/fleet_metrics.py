"""The fleet's one /metrics endpoint, served by the supervisor.

It sums what every worker process recorded (prometheus multiprocess files) and adds the
fleet-wide figures the supervisor reads itself: queue gauges and Redis's memory from Redis
(read once per scrape, not per process, so N processes do not report N copies of one queue) and
the live process count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from shared.queue_stats import QueueSnapshot


class FleetCollector(Collector):
    def __init__(self, snapshot: Callable[[], QueueSnapshot], alive: Callable[[], int]) -> None:
        self._snapshot = snapshot
        self._alive = alive

    def describe(self) -> list[Any]:
        return []  # registering must not read Redis

    def collect(self) -> Iterator[Any]:
        queue = self._snapshot()
        yield GaugeMetricFamily(
            "wsm_queue_messages", "Messages queued and not yet committed.", value=queue.waiting
        )
        yield GaugeMetricFamily(
            "wsm_queue_chats_ready",
            "Conversations waiting in line for a worker.",
            value=queue.chats_ready,
        )
        yield GaugeMetricFamily(
            "wsm_queue_oldest_age_seconds",
            "Age of the oldest queued message (seen at the front of the lines and in work).",
            value=queue.oldest_age_seconds,
        )
        yield CounterMetricFamily(
            "wsm_queue_redeliveries",
            "Conversations taken back from a worker whose lease ran out.",
            value=queue.redeliveries,
        )
        yield GaugeMetricFamily(
            "wsm_dlq_messages", "Messages in the dead-letter lists.", value=queue.dead_letters
        )
        yield GaugeMetricFamily(
            "wsm_outbox_dlq_messages",
            "Replies in the outbox dead-letter lists: given up by the sender "
            "(wsm dlq outbox list).",
            value=queue.outbox_dead_letters,
        )
        dropped = CounterMetricFamily(
            "wsm_dlq_dropped",
            "Dead letters dropped unread by the cap (WSM_DEAD_LETTERS_MAX) or by age "
            "(WSM_DEAD_LETTER_DAYS), by list.",
            labels=["list"],
        )
        dropped.add_metric(["queue"], queue.dead_dropped)
        dropped.add_metric(["outbox"], queue.outbox_dead_dropped)
        yield dropped
        yield GaugeMetricFamily(
            "wsm_redis_memory_used_bytes",
            "Redis's used_memory (INFO memory; on a cluster, the primary nearest its limit; "
            "0 when INFO cannot be read).",
            value=queue.redis_memory_used_bytes,
        )
        yield GaugeMetricFamily(
            "wsm_redis_memory_max_bytes",
            "Redis's maxmemory (0: no limit, or INFO cannot be read).",
            value=queue.redis_memory_max_bytes,
        )
        yield GaugeMetricFamily(
            "wsm_worker_processes", "Worker processes alive.", value=self._alive()
        )


def start_metrics_server(
    host: str, port: int, snapshot: Callable[[], QueueSnapshot], alive: Callable[[], int]
) -> Any:
    """Serve /metrics on a thread; returns the server (call `.shutdown()` to stop it)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(FleetCollector(snapshot, alive))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
