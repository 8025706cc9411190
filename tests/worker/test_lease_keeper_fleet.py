"""The lease keeper, on a real fleet: a handler that runs several times longer than the lease
keeps its conversation (the keeper extends the lease every third of it), so the reaper never
takes it back and the message is delivered, and committed, exactly once.

Without the keeper the lease runs out mid-handler, the reaper hands the conversation to the
other process, the message starts a second time, and the first commit is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.keys import ShardKeys
from tests.support.polling import async_wait_until
from tests.worker.support.fleet import (
    chat_id,
    enqueue_texts,
    handled_ids,
    read_test_log,
    scripted_fleet,
)

LEASE_SECONDS = 2
# Three leases long: without extensions the reaper (every 0.25 s here) takes the chat back.
# The lease is not shorter still so that a loaded machine delaying one extension (due every
# third of the lease) does not lose it.
HANDLER_MS = 6000


async def test_a_handler_longer_than_the_lease_is_delivered_once(
    aredis: Any, redis_url: str, key_prefix: str, workdir: Path
) -> None:
    chat = chat_id(0)
    lease = {"WSM_LEASE_SECONDS": str(LEASE_SECONDS)}
    # Two processes: a lost lease would have somewhere to go.
    with scripted_fleet(
        redis_url, key_prefix, workdir, processes=2, concurrency=2, **lease
    ) as fleet:
        await fleet.wait_running(aredis, 2)
        sent = await enqueue_texts(aredis, key_prefix, {chat: [f"slow:{HANDLER_MS}", "next"]})
        slow = sent[chat][0]

        async def deliveries_of_slow() -> list[dict[str, Any]]:
            started = await read_test_log(aredis, key_prefix, "started")
            return [e for e in started if e["id"] == slow]

        async def settled() -> bool:
            # Done, or already wrong: a second delivery means the lease was lost (and, the
            # handler being as slow every time, the chat would never finish).
            done = await handled_ids(aredis, chat, key_prefix) == sent[chat]
            return done or len(await deliveries_of_slow()) > 1

        await async_wait_until(settled, timeout=60, what="the chat handled or redelivered")
        deliveries = await deliveries_of_slow()
        assert [d["attempt"] for d in deliveries] == [1], deliveries
        assert await handled_ids(aredis, chat, key_prefix) == sent[chat]  # in order, each once
        assert await read_test_log(aredis, key_prefix, "refused") == []
        stats = ShardKeys(0, key_prefix).stats
        assert int(await aredis.hget(stats, "redeliveries") or 0) == 0
        assert fleet.terminate() == 0, fleet.tail()
