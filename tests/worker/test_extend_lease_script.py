"""extend_lease.lua: a holder pushes its deadline out, only while the lease is still its own."""

from __future__ import annotations

import pytest

from shared.queue_errors import LeaseLost
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import fence_out, hold, wait_past


async def test_extend_moves_the_deadline_in_meta_and_leases(queue: Queue) -> None:
    _, consumer, lease, keys = await hold(queue, chat_id(1), ["a"], lease_ms=1000)
    first = lease.until_ms
    consumer.lease_ms = 60_000
    new_deadline = await consumer.extend(lease)
    assert new_deadline >= first + 59_000
    assert lease.until_ms == new_deadline
    assert int(await queue.client.hget(keys.meta, "lease_until")) == new_deadline
    assert int(await queue.client.zscore(keys.shard_keys.leases, keys.token)) == new_deadline


async def test_fenced_out_holder_cannot_extend(queue: Queue) -> None:
    _, consumer, lease, keys = await hold(queue, chat_id(2), ["a"])
    await fence_out(queue, keys)
    with pytest.raises(LeaseLost, match="taken over"):
        await consumer.extend(lease)
    assert int(await queue.client.zscore(keys.shard_keys.leases, keys.token)) == lease.until_ms


async def test_expired_lease_is_not_revived(queue: Queue) -> None:
    _, consumer, lease, _ = await hold(queue, chat_id(3), ["a"], lease_ms=50)
    await wait_past(lease.until_ms)
    with pytest.raises(LeaseLost, match="ran out"):
        await consumer.extend(lease)
