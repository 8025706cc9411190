"""SIGTERM during load: in-flight messages finish and commit, the rest is handed back at once,
nothing is handled twice, exit status 0; a new fleet finishes the rest in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.keys import ShardKeys
from tests.support.polling import async_wait_until
from tests.worker.support.fleet import (
    chat_id,
    conversation,
    enqueue_texts,
    handled_ids,
    read_test_log,
    scripted_fleet,
    wait_all_handled,
)


async def test_sigterm_finishes_in_flight_hands_back_the_rest_and_exits_0(
    aredis: Any, redis_url: str, key_prefix: str, workdir: Path
) -> None:
    texts = {chat_id(c): ["slow:40" for _ in range(30)] for c in range(12)}
    sent = await enqueue_texts(aredis, key_prefix, texts)
    shard = ShardKeys(0, key_prefix)

    with scripted_fleet(
        redis_url, key_prefix, workdir / "first", processes=2, concurrency=4
    ) as fleet:

        async def under_way() -> bool:
            return len(await read_test_log(aredis, key_prefix, "started")) >= 40

        await async_wait_until(under_way, timeout=30, what="the fleet to be busy")
        assert fleet.terminate() == 0, fleet.tail()

    started = {e["id"] for e in await read_test_log(aredis, key_prefix, "started")}
    committed = {chat: await handled_ids(aredis, chat, key_prefix) for chat in sent}
    done = [i for ids in committed.values() for i in ids]
    assert len(done) == len(set(done))  # nothing twice
    assert started == set(done)  # every message a handler started was finished and committed
    assert 0 < len(done) < 360
    for chat, ids in committed.items():
        assert ids == sent[chat][: len(ids)]
    # Everything else is back in line: no lease, no claim left for the reaper.
    assert await aredis.zcard(shard.leases) == 0
    assert await aredis.llen(shard.claimed) == 0
    unfinished = {chat for chat, ids in committed.items() if len(ids) < 30}
    in_line = {t.decode().split("|", 1)[1] for t in await aredis.lrange(shard.ready, 0, -1)}
    assert in_line == unfinished
    assert int(await aredis.hget(shard.stats, "waiting")) == 360 - len(done)

    with scripted_fleet(
        redis_url, key_prefix, workdir / "second", processes=2, concurrency=4
    ) as fleet:
        handled = await wait_all_handled(aredis, sent, key_prefix)
        assert all(handled[chat] == sent[chat] for chat in sent)
        assert fleet.terminate() == 0, fleet.tail()


async def test_work_still_running_after_the_grace_period_is_handed_back(
    aredis: Any, redis_url: str, key_prefix: str, workdir: Path
) -> None:
    chat = chat_id(0)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["block:never", "second"]})
    shard = ShardKeys(0, key_prefix)
    # A long lease: only the hand-back, not an expiry, can free the conversation in time.
    settings = {"WSM_SHUTDOWN_GRACE_SECONDS": "0.5", "WSM_LEASE_SECONDS": "60"}
    with scripted_fleet(
        redis_url, key_prefix, workdir, processes=1, concurrency=2, **settings
    ) as fleet:

        async def blocked() -> bool:
            return len(await read_test_log(aredis, key_prefix, "started")) == 1

        await async_wait_until(blocked, what="the handler to block")
        assert fleet.terminate() == 0, fleet.tail()

    assert await handled_ids(aredis, chat, key_prefix) == []
    assert await aredis.zcard(shard.leases) == 0
    assert await aredis.lrange(shard.ready, 0, -1) == [
        conversation(chat, key_prefix).token.encode()
    ]
    keys = conversation(chat, key_prefix)
    assert await aredis.hget(keys.meta, "state") == b"ready"
    # Handed back by the holder, not reaped: no attempt counted against the message.
    assert await aredis.hget(keys.attempts, sent[chat][0]) is None
