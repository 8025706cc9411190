"""due_conversations.lua: what a reaper pass has to do, by the shard's clock (read-only)."""

from __future__ import annotations

from shared.lua import LuaScript
from shared.queue_reaper import DUE_CONVERSATIONS
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import keys_of, lease_chat, queue_chat, wait_past


async def test_lists_expired_leases_and_due_retries_only(queue: Queue) -> None:
    chat = chat_id(1)
    keys = keys_of(queue, chat)
    shard = keys.shard_keys
    await queue_chat(queue, chat, ["a"])
    lease = await lease_chat(queue, queue.consumer(lease_ms=80), chat)
    await queue.client.zadd(shard.delayed, {"later|x": lease.until_ms + 60_000, "now|y": 1})

    expired, due = await DUE_CONVERSATIONS(queue.client, [shard.leases, shard.delayed], [10])
    assert (expired, due) == ([], [b"now|y"])

    await wait_past(lease.until_ms)
    expired, due = await DUE_CONVERSATIONS(queue.client, [shard.leases, shard.delayed], [10])
    assert (expired, due) == ([keys.token.encode()], [b"now|y"])
    assert await queue.client.zcard(shard.leases) == 1  # nothing changed


def test_script_is_flagged_read_only() -> None:
    assert LuaScript.named("due_conversations").source.startswith("#!lua flags=no-writes\n")
