"""Steps the protocol tests share: queue a chat through the gateway's path, lease it."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import orjson

from shared.envelope import decode_record
from shared.keys import ConversationKeys
from shared.queue_consumer import Lease, QueueConsumer
from shared.queue_reaper import REAP_EXPIRED_LEASE
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


async def reap_script(queue: Queue, keys: ConversationKeys, max_attempts: int = 3) -> list[Any]:
    """One call of reap_expired_lease.lua for `keys`'s conversation, its keys in the order
    QueueReaper.run_pass passes them: for the tests that race the script itself."""
    shard = keys.shard_keys
    call_keys = [
        shard.leases,
        keys.meta,
        keys.messages,
        keys.bodies,
        keys.attempts,
        shard.stats,
        shard.ready,
        shard.dlq,
        shard.fence,
        keys.reaped_ack,
    ]
    return list(await REAP_EXPIRED_LEASE(queue.client, call_keys, [keys.token, max_attempts]))


class Holder(NamedTuple):
    """A consumer holding a chat's lease, and what it was given."""

    ids: list[str]
    consumer: QueueConsumer
    lease: Lease
    keys: ConversationKeys


async def hold(queue: Queue, chat: str, texts: list[str], lease_ms: int = 30_000) -> Holder:
    """`texts` queued for `chat` and its lease taken by a new consumer."""
    ids = await queue_chat(queue, chat, texts)
    consumer = queue.consumer(lease_ms=lease_ms)
    lease = await lease_chat(queue, consumer, chat)
    return Holder(ids, consumer, lease, keys_of(queue, chat))


async def fence_out(queue: Queue, keys: ConversationKeys) -> None:
    """Move the conversation's fence on, as the reaper does on taking it back: its holder's
    lease is someone else's now."""
    await queue.client.hincrby(keys.meta, "fence", 1)


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


async def dead_letter_first_message(queue: Queue, chat: str, texts: list[str]) -> list[str]:
    """Queue `texts` in `chat` and send the first to the dead letters (the rest stay queued);
    the ids of `texts`."""
    ids = await queue_chat(queue, chat, texts)
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    await consumer.fail(lease, ids[0], "boom", terminal=True)
    return ids


async def plant_old_dead_letter(queue: Queue, chat: str) -> None:
    """An older dead letter (`evt_old`) in `chat`'s shard, for a cap of one to drop."""
    old = {"v": 1, "id": "evt_old", "conversation": "c", "at": int(time.time() * 1000) - 1}
    await queue.client.lpush(keys_of(queue, chat).shard_keys.dlq, orjson.dumps(old) + b"\nr")
