"""The fleet on a three-master Redis Cluster (loopback, started by the tests) with conversations
over six shards: order and exactly-once commits hold there too (crash recovery on the cluster:
test_fleet_crash.py, whose tests run on both)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.keys import shard_of
from shared.redis_client import connect
from tests.worker.conftest import CLUSTER_SHARDS
from tests.worker.support.fleet import (
    SESSION,
    chat_id,
    enqueue_texts,
    running_fleet,
    wait_all_handled,
)


@pytest.fixture
async def cluster_client(redis_cluster_url: str) -> AsyncIterator[Any]:
    client = connect(redis_cluster_url)
    yield client
    await client.aclose()


async def test_chats_over_six_shards_drain_in_order(
    cluster_client: Any, redis_cluster_url: str, key_prefix: str, workdir: Path
) -> None:
    texts = {chat_id(c): [f"c{c} m{m}" for m in range(30)] for c in range(40)}
    shards_used = {shard_of(f"{SESSION}|{chat}", CLUSTER_SHARDS) for chat in texts}
    assert shards_used == set(range(CLUSTER_SHARDS))
    sent = await enqueue_texts(cluster_client, key_prefix, texts, CLUSTER_SHARDS)
    with running_fleet(
        redis_cluster_url,
        key_prefix,
        workdir,
        processes=2,
        concurrency=4,
        settings={"WSM_QUEUE_SHARDS": str(CLUSTER_SHARDS)},
    ) as fleet:
        handled = await wait_all_handled(cluster_client, sent, key_prefix, CLUSTER_SHARDS)
        assert all(handled[chat] == sent[chat] for chat in sent)
        assert fleet.terminate() == 0, fleet.tail()
