"""Steps the protocol tests share: queue a chat through the gateway's path, lease it."""

from __future__ import annotations

import time

from shared.envelope import decode_record
from shared.keys import ConversationKeys
from shared.queue_consumer import Lease, QueueConsumer
from tests.support.polling import async_wait_until
from tests.worker.conftest import Queue
from tests.worker.support.fleet import conversation, enqueue_texts


def keys_of(queue: Queue, chat: str) -> ConversationKeys:
    return conversation(chat, queue.prefix, queue.shards)


async def queue_chat(queue: Queue, chat: str, texts: list[str]) -> list[str]:
    sent = await enqueue_texts(queue.client, queue.prefix, {chat: texts}, queue.shards)
    return sent[chat]


async def lease_chat(queue: Queue, consumer: QueueConsumer, chat: str, owner: str = "w") -> Lease:
    keys = keys_of(queue, chat)
    token = await consumer.pop_ready(keys.shard_keys)
    assert token == keys.token
    lease = await consumer.claim(keys.shard_keys, token, owner)
    assert lease is not None
    return lease


def texts_of(lease: Lease) -> list[str]:
    return [
        decode_record(m.record).document()["payload"]["body"]  # type: ignore[arg-type]
        for m in lease.messages
    ]


async def wait_past(deadline_ms: int) -> None:
    """Until the clock (Redis's clock is this machine's) is past `deadline_ms`."""

    async def past() -> bool:
        return time.time() * 1000 > deadline_ms + 2

    await async_wait_until(past, timeout=10, interval=0.01, what="the deadline to pass")


async def state(queue: Queue, chat: str) -> str | None:
    value = await queue.client.hget(keys_of(queue, chat).meta, "state")
    return None if value is None else value.decode()


async def message_ids(queue: Queue, chat: str) -> list[str]:
    """The chat's queued message ids, oldest first."""
    ids = await queue.client.lrange(keys_of(queue, chat).messages, 0, -1)
    return [i.decode() for i in reversed(ids)]


async def ready_order(queue: Queue, chat: str) -> list[str]:
    """The chat's shard's line, front (next to be claimed) first."""
    tokens = await queue.client.lrange(keys_of(queue, chat).shard_keys.ready, 0, -1)
    return [t.decode() for t in reversed(tokens)]
