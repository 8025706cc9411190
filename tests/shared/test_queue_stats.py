"""shared/queue_stats.py on real Redis servers: the outbox's dead letters counted over every shard
apart from the queue's (whose gauge keeps its meaning), and Redis's memory from INFO memory, on
a single server, on the loopback cluster (the primary nearest its limit) and as a user INFO is
refused to (0, and the queue's figures still read)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError

from shared.embedded_redis import EmbeddedRedis
from shared.keys import shard_of
from shared.queue_stats import read_queue_snapshot
from shared.redis_client import connect
from tests.worker.conftest import Queue
from tests.worker.support.fleet import SESSION, chat_id
from tests.worker.support.outbox_dead import bury
from tests.worker.support.protocol import dead_letter_first_message

MIB = 1024 * 1024


def chats_on_every_shard(shards: int) -> list[str]:
    """One chat per shard, so the replies buried there spread over all of them."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < shards:
        chat = chat_id(9000 + n)
        found.setdefault(shard_of(f"{SESSION}|{chat}", shards), chat)
        n += 1
    return [found[shard] for shard in sorted(found)]


@pytest.fixture(params=["single", "cluster"])
async def queue(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str
) -> AsyncIterator[Queue]:
    """Four shards on the single server, six on the cluster (each master holds some)."""
    url, shards = redis_url, 4
    if request.param == "cluster":
        url, shards = request.getfixturevalue("redis_cluster_url"), 6
    client = connect(url)
    try:
        yield Queue(client, url, key_prefix, shards)
    finally:
        await client.aclose()


async def test_the_outbox_dead_letters_are_counted_over_every_shard(queue: Queue) -> None:
    chats = chats_on_every_shard(queue.shards)
    for n, chat in enumerate(chats):
        await bury(queue.client, chat, queue.prefix, [f"r{n}a", f"r{n}b"][: 1 + n % 2],
                   shards=queue.shards)  # fmt: skip
    await dead_letter_first_message(queue, chat_id(9999), ["x", "y"])

    snapshot = await read_queue_snapshot(queue.client, queue.shards, queue.prefix)

    assert snapshot.outbox_dead_letters == sum(1 + n % 2 for n in range(queue.shards))
    # wsm_dlq_messages keeps its meaning: the queue's dead letters only.
    assert snapshot.dead_letters == 1
    assert snapshot.waiting == 1


async def test_no_outbox_dead_letter_is_zero(queue: Queue) -> None:
    snapshot = await read_queue_snapshot(queue.client, queue.shards, queue.prefix)
    assert (snapshot.outbox_dead_letters, snapshot.dead_letters) == (0, 0)


async def test_redis_memory_and_its_limit_are_read(tmp_path: Path, key_prefix: str) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False,
                           extra_args=["--maxmemory", "64mb"])  # fmt: skip
    server.start()
    client = connect(server.url)
    try:
        snapshot = await read_queue_snapshot(client, 1, key_prefix)
        used = int((await client.info("memory"))["used_memory"])
        assert snapshot.redis_memory_max_bytes == 64 * MIB
        assert 0 < snapshot.redis_memory_used_bytes < 64 * MIB
        assert abs(snapshot.redis_memory_used_bytes - used) < MIB

        await client.config_set("maxmemory", "0")
        snapshot = await read_queue_snapshot(client, 1, key_prefix)
        assert snapshot.redis_memory_max_bytes == 0
        assert snapshot.redis_memory_used_bytes > 0
    finally:
        await client.aclose()
        server.stop()


async def test_on_a_cluster_the_primary_nearest_its_limit_is_shown(
    redis_cluster_url: str, key_prefix: str
) -> None:
    """Each primary refuses writes at its own maxmemory: the one closest to it is the one the
    alert must see, not the one using most memory nor the one with the highest limit. (INFO
    without a target would ask one node only.)"""
    cluster = connect(redis_cluster_url)
    assert isinstance(cluster, RedisCluster)
    await cluster.initialize()
    primaries = cluster.get_primaries()
    nodes = [aioredis.Redis(host=n.host, port=n.port) for n in primaries]
    # The most memory, on the primary with the highest limit.
    heavy = next(
        key
        for key in (f"{key_prefix}:heavy{n}" for n in range(10_000))
        if cluster.get_node_from_key(key).name == primaries[0].name
    )
    limits = [1024 * 1024 * MIB, 4096 * MIB, 0]
    try:
        await cluster.set(heavy, b"x" * (2 * MIB))
        for node, limit in zip(nodes, limits, strict=True):
            await node.config_set("maxmemory", str(limit))
        snapshot = await read_queue_snapshot(cluster, 6, key_prefix)
        used = [int((await node.info("memory"))["used_memory"]) for node in nodes]
        assert used[0] > used[1]
        assert snapshot.redis_memory_max_bytes == 4096 * MIB
        assert abs(snapshot.redis_memory_used_bytes - used[1]) < MIB
    finally:
        await cluster.delete(heavy)
        for node in nodes:
            await node.config_set("maxmemory", "0")
            await node.aclose()
        await cluster.aclose()


async def test_info_refused_reads_zero_and_the_queue_all_the_same(
    tmp_path: Path, key_prefix: str
) -> None:
    """A deployment whose ACL lacks `+info` (compose's worker user has it: tests/ops): the
    memory figures are 0 and the scrape still shows the queue."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False,
                           extra_args=["--maxmemory", "64mb"])  # fmt: skip
    server.start()
    admin = connect(server.url)
    password = secrets.token_hex(16)
    await admin.execute_command(
        "ACL", "SETUSER", "noinfo", "on", f">{password}", f"~{key_prefix}:*",
        "-@all", "+@connection", "+@read", "+@write", "+@keyspace", "+@scripting",
        "+@transaction", "-@dangerous", "+time",
    )  # fmt: skip
    client: Any = connect(f"redis://noinfo:{password}@{server.host}:{server.port}/0")
    try:
        with pytest.raises(NoPermissionError):
            await client.info("memory")
        queue = Queue(client, server.url, key_prefix, 1)
        await bury(client, chat_id(1), key_prefix, ["a", "b"])
        await dead_letter_first_message(queue, chat_id(2), ["x", "y"])

        snapshot = await read_queue_snapshot(client, 1, key_prefix)

        assert (snapshot.redis_memory_used_bytes, snapshot.redis_memory_max_bytes) == (0, 0)
        assert (snapshot.outbox_dead_letters, snapshot.dead_letters, snapshot.waiting) == (2, 1, 1)
    finally:
        await client.aclose()
        await admin.aclose()
        server.stop()
