"""A private append-only Redis restarted in the middle of a drain: nothing is lost, and
commits stay exactly once and in order (an ack whose answer was lost is recognised)."""

from __future__ import annotations

from pathlib import Path

from redis.exceptions import ConnectionError

from shared.embedded_redis import EmbeddedRedis
from shared.redis_client import connect
from tests.support.polling import async_wait_until
from tests.worker.support.fleet import (
    SCRIPTED,
    chat_id,
    conversation,
    enqueue_texts,
    handled_ids,
    running_fleet,
)


async def test_restarting_redis_mid_drain_loses_nothing(
    private_redis: EmbeddedRedis, key_prefix: str, workdir: Path
) -> None:
    client = connect(private_redis.url)
    texts = {chat_id(c): ["slow:5" for _ in range(40)] for c in range(20)}
    sent = await enqueue_texts(client, key_prefix, texts)

    async def handled_count() -> int:
        try:
            pipe = client.pipeline(transaction=False)
            for chat in sent:
                pipe.llen(conversation(chat, key_prefix).handled)
            return sum(await pipe.execute())
        except ConnectionError:
            return 0

    with running_fleet(
        private_redis.url,
        key_prefix,
        workdir,
        processes=2,
        concurrency=4,
        handler=SCRIPTED,
    ) as fleet:
        await async_wait_until(
            lambda: _at_least(handled_count, 150), timeout=30, what="the drain to be under way"
        )
        private_redis.restart()
        await async_wait_until(
            lambda: _at_least(handled_count, 800),
            timeout=60,
            what="the drain to finish after the restart",
        )
        for chat, ids in sent.items():
            assert await handled_ids(client, chat, key_prefix) == ids
        assert fleet.terminate() == 0, fleet.tail()
    await client.aclose()


async def _at_least(count, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await count() >= n
