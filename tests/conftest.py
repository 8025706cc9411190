"""Shared fixtures: a private redis-server for the whole run, and a fresh key prefix per test
so tests never see each other's keys and nothing ever needs flushing."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from shared.embedded_redis import EmbeddedRedis
from tests.support.tools import require_program
from tests.worker.support.cluster import LoopbackCluster


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """REDIS_URL when set (never flushed: tests use their own key prefix), else a private
    redis-server started for this run."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster on loopback, started once for the run by the tests that
    ask for it (protocol scripts, fleets, the erase and the API's reads on a cluster)."""
    cluster = LoopbackCluster(tmp_path_factory.mktemp("cluster"), require_program("redis-cli"))
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def key_prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def keys_with_prefix(client: redis.Redis, prefix: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{prefix}:*", count=1000))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, append-only on, for tests that kill or restart it."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()
