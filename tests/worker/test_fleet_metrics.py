"""The fleet's /metrics as the supervisor serves it (worker/fleet_metrics.py over the snapshot its
loop reads from Redis, shared/queue_stats.py): the outbox's dead letters have their own gauge
beside the queue's, and Redis's memory is there, on a single Redis and on the cluster."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.embedded_redis import free_port
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.in_process import settings_of
from tests.worker.support.outbox_dead import bury
from tests.worker.support.protocol import dead_letter_first_message
from tests.worker.test_fleet_parts import fleet_options, metrics_dir  # noqa: F401
from worker.fleet_metrics import start_metrics_server
from worker.supervisor import Supervisor


@pytest.mark.usefixtures("metrics_dir")
async def test_a_scrape_shows_the_outbox_dead_letters_and_redis_memory(queue: Queue) -> None:
    await bury(queue.client, chat_id(41), queue.prefix, ["a", "b"], shards=queue.shards)
    await bury(queue.client, chat_id(42), queue.prefix, ["c"], shards=queue.shards)
    await dead_letter_first_message(queue, chat_id(43), ["x", "y"])
    supervisor = Supervisor(settings_of(queue, WSM_QUEUE_SHARDS=str(queue.shards)), fleet_options())
    supervisor.client = queue.client
    supervisor._loop = asyncio.get_running_loop()
    port = free_port()
    server = start_metrics_server("127.0.0.1", port, supervisor.snapshot, supervisor.alive)
    try:
        # The server's thread asks the supervisor's loop, as a Prometheus scrape does.
        answer = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if not sample.labels
    }
    assert values["wsm_outbox_dlq_messages"] == 3
    assert values["wsm_dlq_messages"] == 1, "the queue's dead letters only, as before"
    assert values["wsm_redis_memory_used_bytes"] > 0
    assert "wsm_redis_memory_max_bytes" in values  # its value: tests/shared/test_queue_stats.py
