"""Dead-letter lists are bounded: the queue's (fail_message.lua, reap_expired_lease.lua) and the
outbox's (outbox_dead.lua) keep the newest WSM_DEAD_LETTERS_MAX per shard, drop those older
than WSM_DEAD_LETTER_DAYS, and count what they drop (Redis stats, `wsm_dlq_dropped`)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from shared.dead_letters import DAY_MS, DeadLetterLimits, list_dead_letters, outbox_dead
from shared.keys import EngineConversationKeys
from shared.queue_stats import read_queue_snapshot
from shared.settings import Settings
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.protocol import keys_of, lease_chat, queue_chat, wait_past
from worker import dlq_cli
from worker.fleet_metrics import FleetCollector


async def dead_letter_all(queue: Queue, chat: str, texts: list[str], limits: DeadLetterLimits):
    """Queue `texts` in one chat and send each to the dead letters in turn; their ids."""
    ids = await queue_chat(queue, chat, texts)
    consumer = queue.consumer()
    consumer.dead_letters = limits
    for message_id in ids:
        lease = await lease_chat(queue, consumer, chat)
        await consumer.fail(lease, message_id, "InvalidRecord", terminal=True)
    return ids


async def dropped(queue: Queue, chat: str, field: str = "dead_dropped") -> int:
    stats = keys_of(queue, chat).shard_keys.stats
    return int(await queue.client.hget(stats, field) or 0)


async def test_the_queue_keeps_the_newest_dead_letters_up_to_the_cap(queue: Queue) -> None:
    chat = chat_id(1)
    ids = await dead_letter_all(queue, chat, ["a", "b", "c", "d", "e"], DeadLetterLimits(3))
    letters = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert [letter.id for letter in letters] == ids[2:]
    assert await dropped(queue, chat) == 2


async def test_the_queue_drops_dead_letters_past_their_age(queue: Queue) -> None:
    chat = chat_id(2)
    keys = keys_of(queue, chat)
    now = int(time.time() * 1000)
    # Two left by earlier failures: one 3 days old, one 12 hours old.
    for age_ms, name in ((3 * DAY_MS, "old"), (DAY_MS // 2, "recent")):
        header = {"v": 1, "id": name, "conversation": keys.token, "at": now - age_ms}
        await queue.client.lpush(keys.shard_keys.dlq, orjson.dumps(header) + b"\nrecord")
    (new,) = await dead_letter_all(queue, chat, ["a"], DeadLetterLimits(100, DAY_MS))
    letters = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert [letter.id for letter in letters] == ["recent", new]
    assert await dropped(queue, chat) == 1


async def test_the_reaper_caps_its_dead_letters_too(queue: Queue) -> None:
    chat = chat_id(3)
    keys = keys_of(queue, chat)
    for n in range(3):
        header = {"v": 1, "id": f"earlier{n}", "at": int(time.time() * 1000)}
        await queue.client.lpush(keys.shard_keys.dlq, orjson.dumps(header) + b"\nrecord")
    ids = await queue_chat(queue, chat, ["kills its worker"])
    await queue.client.hset(keys.attempts, ids[0], 2)
    lease = await lease_chat(queue, queue.consumer(lease_ms=50), chat)
    reaper = queue.reaper(max_attempts=3)
    reaper.dead_letters = DeadLetterLimits(2)
    await wait_past(lease.until_ms)
    assert (await reaper.run_pass(keys.shard_keys)).dead == 1
    letters = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert [letter.id for letter in letters] == ["earlier2", ids[0]]
    assert await dropped(queue, chat) == 2


async def put_in_outbox(queue: Queue, keys: EngineConversationKeys, mids: list[str]) -> None:
    for mid in mids:
        entry = {"mid": mid, "chat": "x@c.us", "text": "Olá", "created": 0, "attempts": 0}
        await queue.client.rpush(keys.outbox, orjson.dumps(entry))
        # Its history entry's status, as the engine's commit writes it with the reply.
        await queue.client.hset(keys.history_meta, f"{mid}:status", "queued")
    await queue.client.zadd(keys.outbox_pending, {keys.conversation.token: 0})


async def test_the_outbox_keeps_the_newest_dead_replies_up_to_the_cap(queue: Queue) -> None:
    chat = chat_id(4)
    keys = EngineConversationKeys(keys_of(queue, chat))
    token = keys.conversation.token
    mids = ["r1", "r2", "r3", "r4"]
    await put_in_outbox(queue, keys, mids)
    now = int(time.time() * 1000)
    reason = orjson.dumps({"status": 400, "answer": "bad", "error": "x"})
    for mid in mids:
        assert await outbox_dead(queue.client, keys, token, mid, reason, now, DeadLetterLimits(2))
    kept = [
        orjson.loads(e)["entry"]["mid"] for e in await queue.client.lrange(keys.outbox_dlq, 0, -1)
    ]
    assert kept == ["r3", "r4"]
    assert await dropped(queue, chat, "outbox_dead_dropped") == 2
    assert await queue.client.hget(keys.history_meta, "r4:status") == b"failed"
    assert await queue.client.zscore(keys.outbox_pending, token) is None


async def test_the_outbox_drops_dead_replies_past_their_age(queue: Queue) -> None:
    chat = chat_id(5)
    keys = EngineConversationKeys(keys_of(queue, chat))
    token = keys.conversation.token
    now = int(time.time() * 1000)
    old = {"conversation": token, "entry": {"mid": "old"}, "reason": {}, "at": now - 2 * DAY_MS}
    await queue.client.rpush(keys.outbox_dlq, orjson.dumps(old))
    await put_in_outbox(queue, keys, ["r1"])
    reason = orjson.dumps({"status": 400, "answer": "bad", "error": "x"})
    assert await outbox_dead(
        queue.client, keys, token, "r1", reason, now, DeadLetterLimits(9, DAY_MS)
    )
    kept = [
        orjson.loads(e)["entry"]["mid"] for e in await queue.client.lrange(keys.outbox_dlq, 0, -1)
    ]
    assert kept == ["r1"]
    assert await dropped(queue, chat, "outbox_dead_dropped") == 1


async def test_a_repeated_outbox_dead_call_moves_and_drops_nothing(queue: Queue) -> None:
    chat = chat_id(6)
    keys = EngineConversationKeys(keys_of(queue, chat))
    token = keys.conversation.token
    await put_in_outbox(queue, keys, ["r1", "r2"])
    reason = orjson.dumps({"status": 400, "answer": "bad", "error": "x"})
    now = int(time.time() * 1000)
    assert await outbox_dead(queue.client, keys, token, "r1", reason, now, DeadLetterLimits(1))
    assert not await outbox_dead(queue.client, keys, token, "r1", reason, now, DeadLetterLimits(1))
    assert await queue.client.llen(keys.outbox_dlq) == 1
    assert await queue.client.llen(keys.outbox) == 1
    assert await dropped(queue, chat, "outbox_dead_dropped") == 0


async def test_what_was_dropped_is_exported(queue: Queue) -> None:
    chat = chat_id(7)
    await dead_letter_all(queue, chat, ["a", "b", "c"], DeadLetterLimits(1))
    keys = EngineConversationKeys(keys_of(queue, chat))
    await put_in_outbox(queue, keys, ["r1", "r2"])
    reason = orjson.dumps({"status": 400, "answer": "bad", "error": "x"})
    now = int(time.time() * 1000)
    for mid in ("r1", "r2"):
        await outbox_dead(
            queue.client, keys, keys.conversation.token, mid, reason, now, DeadLetterLimits(1)
        )

    snapshot = await read_queue_snapshot(queue.client, queue.shards, queue.prefix)
    assert (snapshot.dead_letters, snapshot.dead_dropped, snapshot.outbox_dead_dropped) == (1, 2, 1)
    families: dict[str, Any] = {
        f.name: f for f in FleetCollector(lambda: snapshot, lambda: 1).collect()
    }
    samples = {s.labels["list"]: s.value for s in families["wsm_dlq_dropped"].samples}
    assert samples == {"queue": 2, "outbox": 1}


async def test_the_reaper_ages_dead_letters_on_a_quiet_shard(queue: Queue) -> None:
    """No new dead letter arrives to age the lists: the reaper's pass drops the old ones from
    both lists, oldest end first, counts them, and leaves the young ones."""
    chat = chat_id(8)
    keys = EngineConversationKeys(keys_of(queue, chat))
    shard = keys.conversation.shard_keys
    now = int(time.time() * 1000)
    for name, age_ms in (("old1", 3 * DAY_MS), ("old2", 2 * DAY_MS), ("young", DAY_MS // 2)):
        header = {"v": 1, "id": name, "conversation": keys.conversation.token, "at": now - age_ms}
        await queue.client.lpush(shard.dlq, orjson.dumps(header) + b"\nrecord")
        reply = {"conversation": "c", "entry": {"mid": name}, "reason": {}, "at": now - age_ms}
        await queue.client.rpush(keys.outbox_dlq, orjson.dumps(reply))
    reaper = queue.reaper()
    reaper.dead_letters = DeadLetterLimits(100, DAY_MS)

    await reaper.run_pass(shard)

    letters = await list_dead_letters(queue.client, queue.shards, queue.prefix)
    assert [letter.id for letter in letters] == ["young"]
    replies = await queue.client.lrange(keys.outbox_dlq, 0, -1)
    assert [orjson.loads(r)["entry"]["mid"] for r in replies] == ["young"]
    assert await dropped(queue, chat) == 2
    assert await dropped(queue, chat, "outbox_dead_dropped") == 2
    assert await reaper.age_dead_letters(shard, force=True) == 0


async def test_wsm_dlq_list_says_how_many_were_dropped(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = chat_id(9)
    ids = await dead_letter_all(queue, chat, ["a", "b", "c"], DeadLetterLimits(2))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        REDIS_URL=queue.url,
        WSM_KEY_PREFIX=queue.prefix,
        WSM_QUEUE_SHARDS=str(queue.shards),
        WSM_DEAD_LETTERS_MAX="2",
    )
    assert await dlq_cli.run(settings, dlq_cli.build_parser().parse_args(["list"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[-2] for line in out[:2]] == ids[1:]  # "... <id>  <error>"
    assert (
        out[2] == "(1 older dead letters were dropped: at most 2 per shard are kept, for 30 days)"
    )
