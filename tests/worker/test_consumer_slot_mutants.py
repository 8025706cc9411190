"""A consumer slot's rarer turns, run in this process against a real Redis: tests written to
kill the mutants of worker/consumer_slot.py that survived the mutation run (docs/testing.md,
"Mutation testing", lists each and the mutant it kills).

- A message that is not its conversation's head (only a bug or a hand-edited Redis gets
  there, shared/queue_errors.py): the conversation is handed back at once, still first in
  line, and nothing is charged to the message.
- A lease lost mid-message: the work is dropped and reported as such, and the slot goes on;
  it is not a failure of the slot (which would log "consumer slot failed" and back off).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared.dead_letters import list_dead_letters
from shared.envelope import QueuedEvent
from shared.keys import all_shards
from shared.queue_errors import LeaseLost
from shared.queue_reaper import QueueReaper
from tests.worker.support.fleet import chat_id, conversation, enqueue_texts
from tests.worker.test_consumer_slot import run_slot
from worker.handler import HandlerContext

SLOT_LOG = "wsm.worker.consumer_slot"
PLANTED = "planted-at-the-head"


async def _plant_a_new_head(client: Any, ctx: HandlerContext) -> None:
    """Put a message in front of the one being handled (a hand-edited Redis): a copy of its
    record under another id, at the head (the right end of the message list)."""
    keys = ctx.conversation
    record = await client.hget(keys.bodies, ctx.message_id)
    await client.hset(keys.bodies, PLANTED, record)
    await client.rpush(keys.messages, PLANTED)
    await client.hincrby(keys.shard_keys.stats, "waiting", 1)


@pytest.mark.parametrize("how", ["commit", "failure"])
async def test_a_message_found_not_to_be_the_head_hands_the_conversation_back_first_in_line(
    aredis: Any, key_prefix: str, how: str
) -> None:
    """The slot learns that its message is not the head from the commit (ack_message.lua) or,
    when the handler failed, from fail_message.lua. Either way it releases the conversation to
    the FRONT of the line at once (not at lease end), and charges nothing: the new head is
    handled next, then the message, and only then the other conversation waiting behind.
    Kills, in _after_error (commit) and _fail (failure): the release's `keeper` dropped or
    None (no release: the conversation waits out its lease), `to_front=True` -> `False`,
    `None` or dropped (it goes to the back, behind the other conversation)."""
    first, other = chat_id(21), chat_id(22)
    sent = await enqueue_texts(aredis, key_prefix, {first: ["a1"]})
    sent |= await enqueue_texts(aredis, key_prefix, {other: ["b1"]})
    order: list[str] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        order.append(ctx.message_id)
        if len(order) == 1:
            await _plant_a_new_head(aredis, ctx)
            if how == "commit":
                await ctx.commit([("RPUSH", ctx.conversation.handled, ctx.message_id)])
            raise RuntimeError("the handler failed")
        await ctx.commit([("RPUSH", ctx.conversation.handled, ctx.message_id)])

    async def all_handled() -> bool:
        return len(order) == 4

    await run_slot(aredis, key_prefix, handler, all_handled)
    a1, b1 = sent[first][0], sent[other][0]
    assert order == [a1, PLANTED, a1, b1]
    keys = conversation(first, key_prefix)
    assert await aredis.lrange(keys.handled, 0, -1) == [PLANTED.encode(), a1.encode()]
    assert await aredis.hlen(keys.attempts) == 0
    assert await list_dead_letters(aredis, 1, key_prefix) == []


async def _take_the_lease_away(client: Any, prefix: str, ctx: HandlerContext) -> None:
    """What a stalled holder suffers: its lease runs out and the reaper takes the conversation
    back (bumping the fence)."""
    keys = ctx.conversation
    await client.hset(keys.meta, "lease_until", 1)
    await client.zadd(keys.shard_keys.leases, {keys.token: 1})
    reaper = QueueReaper(client, max_attempts=3, lock_ms=10)
    for shard in all_shards(1, prefix):
        await reaper.run_pass(shard)


def _slot_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SLOT_LOG]


@pytest.mark.parametrize("found_by", ["commit", "extension"])
async def test_a_lease_lost_mid_message_drops_the_work_and_the_slot_goes_on(
    aredis: Any, key_prefix: str, caplog: pytest.LogCaptureFixture, found_by: str
) -> None:
    """The handler's lease is taken back while it works. Found by its commit (LeaseLost), or
    by an extension after which the handler gives up with an error of its own: the work is
    dropped, counted as lost (never as a failed attempt: fail_message is not asked, the
    conversation is someone else's), and the slot carries on with the redelivery.
    Kills, on the LeaseLost path of _after_error and the `keeper.lost` path of _fail: the
    outcome, the lease or the message passed wrongly to _count, or an argument dropped (each
    an exception out of the turn: the slot logs "consumer slot failed" and backs off)."""
    caplog.set_level(logging.INFO, logger=SLOT_LOG)
    chat = chat_id(23)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["a1"]})
    deliveries: list[int] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        deliveries.append(ctx.attempt)
        if len(deliveries) == 1:
            await _take_the_lease_away(aredis, key_prefix, ctx)
            if found_by == "extension":
                try:
                    await ctx.extend_lease()
                except LeaseLost:
                    raise RuntimeError("gave up") from None
        await ctx.commit([("RPUSH", ctx.conversation.handled, ctx.message_id)])

    keys = conversation(chat, key_prefix)

    async def handled() -> bool:
        return await aredis.llen(keys.handled) == 1

    await run_slot(aredis, key_prefix, handler, handled)
    assert await aredis.lrange(keys.handled, 0, -1) == [sent[chat][0].encode()]
    assert len(deliveries) == 2
    records = _slot_records(caplog)
    lost = [r for r in records if r.getMessage() == "lease lost; work dropped"]
    assert [(r.levelno, getattr(r, "message_id", None)) for r in lost] == [
        (logging.WARNING, sent[chat][0])
    ]
    assert getattr(lost[0], "outcome", None) == "lost"
    assert getattr(lost[0], "conversation", None) == keys.token
    if found_by == "extension":
        assert getattr(lost[0], "error", None) == "RuntimeError: gave up"
    assert not [r for r in records if r.getMessage() == "consumer slot failed; continuing"]
    assert await list_dead_letters(aredis, 1, key_prefix) == []
