"""The fleet drains 100 chats x 100 messages with 4 processes x 16: each chat in the order it
was sent, each message committed once, counted once in the fleet's one /metrics endpoint.

How long the drain takes is a benchmark's business (bench/, docs/benchmarks.md), not this
test's: it waits as long as the fleet keeps committing, and fails only when it stops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from shared.keys import ShardKeys
from tests.support.polling import async_wait_until
from tests.worker.support.fleet import (
    chat_id,
    conversation,
    enqueue_texts,
    handled_ids,
    running_fleet,
    wait_all_handled,
)

# Not a time budget: only how long the fleet may commit nothing at all before the test calls
# it stuck (a healthy fleet commits many messages a second even on a loaded machine).
STALL_SECONDS = 60.0


async def wait_while_progressing(client: Any, prefix: str, chats: list[str], total: int) -> None:
    """Return once `total` messages are committed; fail if none is committed for
    STALL_SECONDS (the fleet is stuck), however long the whole drain takes."""
    keys = [conversation(chat, prefix).handled for chat in chats]
    committed = -1

    async def progressed() -> int | None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        now = sum(await pipe.execute())
        return now if now > committed else None

    while committed < total:
        committed = await async_wait_until(
            progressed, timeout=STALL_SECONDS, interval=0.2, what="the fleet to commit more"
        )


async def test_hundred_chats_drain_in_order_each_message_once(
    aredis: Any, redis_url: str, key_prefix: str, workdir: Path
) -> None:
    texts = {chat_id(c): [f"c{c} m{m}" for m in range(100)] for c in range(100)}
    sent = await enqueue_texts(aredis, key_prefix, texts)
    assert sum(len(ids) for ids in sent.values()) == 10_000

    with running_fleet(redis_url, key_prefix, workdir, processes=4, concurrency=16) as fleet:
        await wait_while_progressing(aredis, key_prefix, list(sent), 10_000)
        handled = await wait_all_handled(aredis, sent, key_prefix)

        for chat, ids in sent.items():
            assert handled[chat] == ids, f"{chat} handled out of order or twice"
        everything = [i for ids in handled.values() for i in ids]
        assert len(everything) == len(set(everything)) == 10_000
        shard = ShardKeys(0, key_prefix)
        assert int(await aredis.hget(shard.stats, "waiting")) == 0
        assert await aredis.llen(shard.ready) == 0
        assert await aredis.zcard(shard.leases) == 0
        assert await aredis.llen(shard.dlq) == 0

        async def scraped() -> str | None:
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{fleet.metrics_port}/metrics")
            text = response.text
            ok = 'wsm_worker_messages_total{outcome="ok"} 10000.0' in text
            return text if ok else None

        text = await async_wait_until(scraped, timeout=20, what="metrics to add up")
        assert 'wsm_worker_messages_total{outcome="retry"} 0.0' in text
        assert 'wsm_worker_messages_total{outcome="dead"} 0.0' in text
        assert "wsm_worker_handle_seconds_count 10000.0" in text
        assert "wsm_worker_processes 4.0" in text
        assert "wsm_queue_messages 0.0" in text
        assert "wsm_queue_chats_ready 0.0" in text
        assert "wsm_queue_redeliveries_total 0.0" in text
        assert "wsm_dlq_messages 0.0" in text
        assert "wsm_worker_inflight 0.0" in text
        assert "wsm_queue_oldest_age_seconds 0.0" in text

        assert fleet.terminate() == 0, fleet.tail()
    assert await handled_ids(aredis, chat_id(0), key_prefix) == sent[chat_id(0)]
