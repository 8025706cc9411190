"""Fixtures of the worker tests: a `queue` fixture that runs each protocol test (and the fleet's
crash tests) on a single Redis and on the loopback Redis Cluster (`redis_cluster_url`,
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.queue_consumer import QueueConsumer
from shared.queue_reaper import QueueReaper
from shared.redis_client import connect

# On the cluster, conversations spread over six shards, i.e. over all three masters.
CLUSTER_SHARDS = 6


@dataclass
class Queue:
    """One Redis (single or cluster) with a test's own key prefix."""

    client: Any
    url: str
    prefix: str
    shards: int

    def consumer(
        self,
        *,
        lease_ms: int = 30_000,
        batch: int = 10,
        max_attempts: int = 3,
        backoff_ms: int = 1000,
        backoff_max_ms: int = 8000,
    ) -> QueueConsumer:
        return QueueConsumer(
            self.client,
            lease_ms=lease_ms,
            batch=batch,
            max_attempts=max_attempts,
            backoff_ms=backoff_ms,
            backoff_max_ms=backoff_max_ms,
        )

    def reaper(self, *, max_attempts: int = 3) -> QueueReaper:
        return QueueReaper(self.client, max_attempts=max_attempts, lock_ms=100)


@pytest.fixture(params=["single", "cluster"])
async def queue(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str
) -> AsyncIterator[Queue]:
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster_url")
        shards = CLUSTER_SHARDS
    else:
        url, shards = redis_url, 1
    client = connect(url)
    try:
        yield Queue(client, url, key_prefix, shards)
    finally:
        await client.aclose()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where a fleet runs: no developer `.env` there."""
    path = tmp_path / "work"
    path.mkdir()
    return path
