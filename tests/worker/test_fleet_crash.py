"""Crashes: a worker killed mid-message loses nothing and its message is handled again first in
its chat while the other chats go on; a paused worker whose lease ran out can no longer commit;
the supervisor restarts a process that died. Each on a single Redis and on the loopback Redis
Cluster with conversations over six shards (the `queue` fixture, tests/worker/conftest.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from shared.keys import ShardKeys
from tests.support.polling import async_wait_until
from tests.worker.conftest import Queue
from tests.worker.support.fleet import (
    chat_id,
    enqueue_texts,
    handled_ids,
    read_test_log,
    scripted_fleet,
    wait_all_handled,
)
from tests.worker.support.protocol import keys_of


async def started_by(client: Any, prefix: str, message_id: str) -> list[dict[str, Any]]:
    return [e for e in await read_test_log(client, prefix, "started") if e["id"] == message_id]


async def test_sigkill_mid_message_redelivers_first_and_supervisor_restarts(
    queue: Queue, workdir: Path
) -> None:
    client, prefix, shards = queue.client, queue.prefix, queue.shards
    stuck = chat_id(0)
    others = {chat_id(c): [f"c{c} m{m}" for m in range(20)] for c in range(1, 9)}
    settings = {"WSM_QUEUE_SHARDS": str(shards)}
    with scripted_fleet(
        queue.url, prefix, workdir, processes=2, concurrency=4, **settings
    ) as fleet:
        before = await fleet.wait_running(client, 2)
        sent = await enqueue_texts(
            client, prefix, {stuck: ["block:k", "after 1", "after 2"]}, shards
        )
        first = sent[stuck][0]
        (victim,) = await async_wait_until(
            lambda: started_by(client, prefix, first), what="the handler to start"
        )
        os.kill(victim["pid"], signal.SIGKILL)

        # The other chats never stop: all of them finish while the killed worker's chat waits.
        sent |= await enqueue_texts(client, prefix, others, shards)
        handled = await wait_all_handled(client, {c: sent[c] for c in others}, prefix, shards)
        assert all(handled[c] == sent[c] for c in others)
        assert await handled_ids(client, stuck, prefix, shards) == []

        await client.set(f"{prefix}:test:gate:k", "open")
        handled = await wait_all_handled(client, {stuck: sent[stuck]}, prefix, shards)
        assert handled[stuck] == sent[stuck]  # redelivered first in its chat, once

        deliveries = await started_by(client, prefix, first)
        assert [d["attempt"] for d in deliveries] == [1, 2]
        assert deliveries[1]["pid"] != victim["pid"]
        redeliveries = 0
        for shard in range(shards):
            stats = ShardKeys(shard, prefix).stats
            redeliveries += int(await client.hget(stats, "redeliveries") or 0)
        assert redeliveries >= 1

        # The supervisor replaced the killed process under the same index.
        index = next(i for i, pid in before.items() if pid == victim["pid"])
        after = await fleet.wait_running(client, 2)
        assert after[index] != victim["pid"]
        assert fleet.terminate() == 0, fleet.tail()


async def test_sigstop_past_lease_then_sigcont_commit_is_refused(
    queue: Queue, workdir: Path
) -> None:
    client, prefix, shards = queue.client, queue.prefix, queue.shards
    chat = chat_id(0)
    settings = {"WSM_LEASE_SECONDS": "1", "WSM_QUEUE_SHARDS": str(shards)}
    with scripted_fleet(
        queue.url, prefix, workdir, processes=2, concurrency=2, **settings
    ) as fleet:
        await fleet.wait_running(client, 2)
        sent = await enqueue_texts(client, prefix, {chat: ["block:s", "second"]}, shards)
        first = sent[chat][0]
        (paused,) = await async_wait_until(
            lambda: started_by(client, prefix, first), what="the handler to start"
        )
        os.kill(paused["pid"], signal.SIGSTOP)
        try:
            # Its lease runs out; the reaper gives the chat to the other process.
            async def taken_over() -> bool:
                return len(await started_by(client, prefix, first)) == 2

            await async_wait_until(taken_over, timeout=15, what="another worker to take over")
            await client.set(f"{prefix}:test:gate:s", "open")
            handled = await wait_all_handled(client, sent, prefix, shards)
            assert handled[chat] == sent[chat]
        finally:
            os.kill(paused["pid"], signal.SIGCONT)

        async def refused() -> list[dict[str, Any]]:
            return await read_test_log(client, prefix, "refused")

        (refusal,) = await async_wait_until(refused, what="the paused worker's commit refused")
        assert (refusal["id"], refusal["pid"]) == (first, paused["pid"])
        assert await handled_ids(client, chat, prefix, shards) == sent[chat]  # not twice
        meta = keys_of(queue, chat).meta
        assert await client.exists(meta) == 0  # idle: no meta
        assert fleet.terminate() == 0, fleet.tail()
