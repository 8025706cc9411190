"""replay_outbox_dead.lua (through shared/outbox_dead_letters.py), on one Redis and on a
cluster: dead-lettered replies back at the tail of their outbox as fresh replies, once; and every
refusal stores nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from redis.exceptions import ResponseError

from engine.outbox import OutboxEntry, new_entry
from shared import dead_letters
from shared.outbox_dead_letters import (
    REPLAY_OUTBOX_DEAD,
    OutboxReplay,
    OutboxReplayResult,
    ReplayBounds,
    drop_outbox_dead_letter,
    list_outbox_dead_letters,
    replay_outbox_dead_letters,
)
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.outbox_dead import (
    AT_MS,
    bury,
    commit,
    keys_for,
    no_answer,
    outbox_texts,
    snapshot,
)

NOW = AT_MS + 60_000
DAY_MS = 86_400_000
BOUNDS = ReplayBounds(now_ms=NOW, max_age_ms=90 * DAY_MS, retention_seconds=7200)
REPLAYED = OutboxReplay(OutboxReplayResult.REPLAYED)
GONE = OutboxReplay(OutboxReplayResult.GONE)


async def letters_of(queue: Queue):
    return await list_outbox_dead_letters(queue.client, queue.shards, queue.prefix)


async def test_a_reply_goes_back_fresh_after_the_replies_waiting_and_once(queue: Queue) -> None:
    chat = chat_id(1)
    keys = keys_for(chat, queue.prefix, queue.shards)
    (mid,) = await bury(queue.client, chat, queue.prefix, ["refused"], shards=queue.shards)
    waiting = new_entry(chat, "waiting", at_ms=AT_MS + 5)
    await commit(queue.client, chat, queue.prefix, queue.shards, [waiting])
    await queue.client.zadd(keys.outbox_pending, {keys.conversation.token: NOW + 30_000})
    (letter,) = await letters_of(queue)
    assert orjson.loads(letter.raw)["entry"]["try"]  # its attempt's mark went with it

    assert await replay_outbox_dead_letters(queue.client, [letter], BOUNDS) == [REPLAYED]

    assert await letters_of(queue) == []
    raw = await queue.client.lrange(keys.outbox, 0, -1)
    assert [OutboxEntry.decode(r).text for r in raw] == ["waiting", "refused"]  # at the tail
    replayed = orjson.loads(raw[1])
    assert replayed["mid"] == mid and replayed["chat"] == chat and replayed["created"] == AT_MS
    assert replayed["attempts"] == 0 and replayed["last_error"] == "" and "try" not in replayed
    assert await queue.client.hget(keys.history_meta, f"{mid}:status") == b"queued"
    # Due now (a backoff of the waiting head cut short, as a new reply's commit does), and
    # the outbox expires like a committed one.
    assert await queue.client.zscore(keys.outbox_pending, keys.conversation.token) == NOW
    assert 0 < await queue.client.ttl(keys.outbox) <= 7200

    # Again (a second operator, a retried call): gone, and nothing is put back twice.
    before = await snapshot(queue.client, keys)
    assert await replay_outbox_dead_letters(queue.client, [letter], BOUNDS) == [GONE]
    assert await snapshot(queue.client, keys) == before


async def test_a_conversations_replies_go_back_together_in_their_order(queue: Queue) -> None:
    chat = chat_id(2)
    keys = keys_for(chat, queue.prefix, queue.shards)
    texts = ["um", "dois", "três"]
    # Dead after retries (WSM_SEND_MAX_ATTEMPTS): three sends each.
    mids = await bury(queue.client, chat, queue.prefix, texts, shards=queue.shards, retries=2)
    letters = await letters_of(queue)
    assert [letter.mid for letter in letters] == mids  # oldest first
    assert [letter.attempts for letter in letters] == [3, 3, 3]
    assert await queue.client.exists(keys.outbox) == 0  # the outbox is gone with its last reply

    # The oldest given twice: it goes back once.
    answer = await replay_outbox_dead_letters(queue.client, [*letters, letters[0]], BOUNDS)

    assert answer == [REPLAYED, REPLAYED, REPLAYED, GONE]
    entries = [orjson.loads(raw) for raw in await queue.client.lrange(keys.outbox, 0, -1)]
    assert [(e["mid"], e["text"]) for e in entries] == list(zip(mids, texts, strict=True))
    # Fresh: a retry after the replay has every attempt again, not one left.
    assert {(e["attempts"], e["last_error"], "try" in e) for e in entries} == {(0, "", False)}
    assert await queue.client.zscore(keys.outbox_pending, keys.conversation.token) == NOW
    assert 0 < await queue.client.ttl(keys.outbox) <= 7200  # it expires like a committed one


async def test_two_letters_of_one_reply_put_it_back_once(queue: Queue) -> None:
    """Never made by the sender (a reply leaves the outbox once), but a copy (a restore, a hand
    edit) must not make a reply go out twice."""
    chat = chat_id(14)
    keys = keys_for(chat, queue.prefix, queue.shards)
    await bury(queue.client, chat, queue.prefix, ["once"], shards=queue.shards)
    (letter,) = await letters_of(queue)
    copy = orjson.loads(letter.raw)
    copy["at"] += 1
    await queue.client.rpush(keys.outbox_dlq, orjson.dumps(copy))
    letters = await letters_of(queue)

    answer = await replay_outbox_dead_letters(queue.client, letters, BOUNDS)

    assert answer == [REPLAYED, OutboxReplay(OutboxReplayResult.RECORDED, "queued")]
    assert await outbox_texts(queue.client, keys) == ["once"]
    assert [x.raw for x in await letters_of(queue)] == [orjson.dumps(copy)]


async def test_a_conversation_due_already_stays_due_as_early(queue: Queue) -> None:
    """As a commit does (ZADD LT): a replay makes a conversation due now, never later."""
    chat = chat_id(12)
    keys = keys_for(chat, queue.prefix, queue.shards)
    await bury(queue.client, chat, queue.prefix, ["a"], shards=queue.shards)
    await commit(queue.client, chat, queue.prefix, queue.shards, [new_entry(chat, "waiting")])
    assert await queue.client.zscore(keys.outbox_pending, keys.conversation.token) == AT_MS
    (letter,) = await letters_of(queue)

    assert await replay_outbox_dead_letters(queue.client, [letter], BOUNDS) == [REPLAYED]

    assert await queue.client.zscore(keys.outbox_pending, keys.conversation.token) == AT_MS


async def test_letters_of_two_conversations_are_refused_and_nothing_is_stored(
    queue: Queue,
) -> None:
    mine, other = chat_id(3), chat_id(4)
    keys = keys_for(mine, queue.prefix, queue.shards)
    await bury(queue.client, mine, queue.prefix, ["a"], shards=queue.shards)
    await bury(queue.client, other, queue.prefix, ["b"], shards=queue.shards)
    letters = await letters_of(queue)
    (letter,) = [x for x in letters if x.conversation == keys.conversation.token]
    (foreign,) = [x for x in letters if x is not letter]
    # In the script too: a letter in this shard's list that names another conversation, after
    # one that would go back. The whole call fails before anything is written.
    impostor = orjson.loads(letter.raw)
    impostor["conversation"] = "default|someone-else@c.us"
    await queue.client.rpush(keys.outbox_dlq, orjson.dumps(impostor))
    before = await snapshot(queue.client, keys)

    with pytest.raises(ValueError, match="one conversation"):
        await replay_outbox_dead_letters(queue.client, [letter, foreign], BOUNDS)
    with pytest.raises(ResponseError, match="another conversation"):
        await REPLAY_OUTBOX_DEAD(
            queue.client,
            [keys.outbox_dlq, keys.outbox, keys.history_meta, keys.outbox_pending],
            [keys.conversation.token, NOW, 90 * DAY_MS, 7200, "0", letter.raw,
             orjson.dumps(impostor)],
        )  # fmt: skip

    assert await snapshot(queue.client, keys) == before


REFUSALS = ["no_history", "recorded", "expired", "unknown", "invalid"]


async def refusable(queue: Queue, chat: str, refusal: str):
    """One dead-lettered reply of `chat` that a replay must refuse for `refusal`, and the
    answer expected."""
    keys = keys_for(chat, queue.prefix, queue.shards)
    reason = no_answer() if refusal == "unknown" else None
    (mid,) = await bury(queue.client, chat, queue.prefix, ["x"], shards=queue.shards, reason=reason)
    if refusal == "no_history":  # what history_trim.lua leaves of a trimmed entry
        await queue.client.hdel(keys.history_meta, f"{mid}:status")
    elif refusal == "recorded":
        await queue.client.hset(keys.history_meta, f"{mid}:status", "sent")
    elif refusal == "expired":
        bounds = ReplayBounds(now_ms=AT_MS + 90 * DAY_MS + 1, max_age_ms=90 * DAY_MS,
                              retention_seconds=7200)  # fmt: skip
        return bounds, OutboxReplay(OutboxReplayResult.EXPIRED)
    elif refusal == "invalid":
        await queue.client.rpush(
            keys.outbox_dlq, orjson.dumps({"conversation": keys.conversation.token})
        )
    if refusal == "recorded":
        return BOUNDS, OutboxReplay(OutboxReplayResult.RECORDED, "sent")
    return BOUNDS, OutboxReplay(OutboxReplayResult(refusal))


@pytest.mark.parametrize("refusal", REFUSALS)
async def test_a_refused_reply_stays_and_nothing_is_stored(queue: Queue, refusal: str) -> None:
    chat = chat_id(5)
    keys = keys_for(chat, queue.prefix, queue.shards)
    bounds, refused = await refusable(queue, chat, refusal)
    # An entry that cannot be read has no reply id.
    (letter,) = [x for x in await letters_of(queue) if bool(x.mid) != (refusal == "invalid")]
    before = await snapshot(queue.client, keys)

    assert await replay_outbox_dead_letters(queue.client, [letter], bounds) == [refused]

    assert await snapshot(queue.client, keys) == before
    assert letter in await letters_of(queue)


async def test_a_refused_reply_does_not_hold_back_the_others(queue: Queue) -> None:
    """Each reply is answered on its own: the older one refused stays, the newer goes back."""
    chat = chat_id(6)
    keys = keys_for(chat, queue.prefix, queue.shards)
    (unknown,) = await bury(
        queue.client, chat, queue.prefix, ["maybe sent"], shards=queue.shards, reason=no_answer()
    )
    (refused,) = await bury(
        queue.client, chat, queue.prefix, ["not sent"], shards=queue.shards, at_ms=AT_MS + 10
    )
    letters = await letters_of(queue)
    assert [letter.mid for letter in letters] == [unknown, refused]
    assert [letter.outcome.value for letter in letters] == ["unknown", "not_sent"]

    answer = await replay_outbox_dead_letters(queue.client, letters, BOUNDS)

    assert answer == [OutboxReplay(OutboxReplayResult.UNKNOWN), REPLAYED]
    assert await outbox_texts(queue.client, keys) == ["not sent"]
    assert await queue.client.hget(keys.history_meta, f"{unknown}:status") == b"failed"
    assert [letter.mid for letter in await letters_of(queue)] == [unknown]


async def test_an_unknown_outcome_goes_back_when_the_operator_says_so(queue: Queue) -> None:
    chat = chat_id(7)
    keys = keys_for(chat, queue.prefix, queue.shards)
    await bury(queue.client, chat, queue.prefix, ["maybe"], shards=queue.shards, reason=no_answer())
    (letter,) = await letters_of(queue)
    bounds = ReplayBounds(NOW, 90 * DAY_MS, 7200, resend_unknown=True)

    assert await replay_outbox_dead_letters(queue.client, [letter], bounds) == [REPLAYED]

    assert await outbox_texts(queue.client, keys) == ["maybe"]


async def test_a_reply_never_sent_to_waha_is_not_of_unknown_outcome(queue: Queue) -> None:
    """No attempt's mark (its file was gone before the send): nothing went to WAHA, whatever
    the error."""
    chat = chat_id(8)
    keys = keys_for(chat, queue.prefix, queue.shards)
    reason = no_answer("the image to send is no longer stored")
    await bury(queue.client, chat, queue.prefix, ["legenda"], shards=queue.shards, reason=reason,
               attempted=False)  # fmt: skip
    (letter,) = await letters_of(queue)
    assert (letter.outcome.value, letter.attempts, letter.status) == ("not_sent", 0, None)

    assert await replay_outbox_dead_letters(queue.client, [letter], BOUNDS) == [REPLAYED]
    assert await outbox_texts(queue.client, keys) == ["legenda"]


async def test_drop_deletes_it_for_good(queue: Queue) -> None:
    chat = chat_id(9)
    keys = keys_for(chat, queue.prefix, queue.shards)
    await bury(queue.client, chat, queue.prefix, ["a"], shards=queue.shards)
    (letter,) = await letters_of(queue)
    assert await drop_outbox_dead_letter(queue.client, letter) is True
    assert await drop_outbox_dead_letter(queue.client, letter) is False
    assert await letters_of(queue) == []
    assert await replay_outbox_dead_letters(queue.client, [letter], BOUNDS) == [GONE]
    assert await queue.client.llen(keys.outbox) == 0


async def test_a_long_list_is_read_in_pages_each_reply_once_oldest_first(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dead_letters, "LIST_PAGE", 2)
    chat = chat_id(10)
    mids = await bury(queue.client, chat, queue.prefix, [str(n) for n in range(5)],
                      shards=queue.shards)  # fmt: skip
    assert [letter.mid for letter in await letters_of(queue)] == mids
    await bury(queue.client, chat_id(11), queue.prefix, ["x"], shards=queue.shards)
    assert len(await letters_of(queue)) == 6


class Meanwhile:
    """The client, running `then` once right after the first page is read (a reply
    dead-lettered, or an old one aged out, while `wsm dlq outbox list` pages)."""

    def __init__(self, client: Any, then: Callable[[], Awaitable[Any]]) -> None:
        self.client = client
        self.then = then
        self.pages = 0

    async def lrange(self, *args: Any) -> list[bytes]:
        page = await self.client.lrange(*args)
        self.pages += 1
        if self.pages == 1:
            await self.then()
        return page


@pytest.mark.parametrize("meanwhile", ["aged", "added"])
async def test_a_list_changed_while_paged_lists_each_reply_once_and_misses_none(
    queue: Queue, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    monkeypatch.setattr(dead_letters, "LIST_PAGE", 2)
    chat = chat_id(13)
    keys = keys_for(chat, queue.prefix, queue.shards)
    mids = await bury(queue.client, chat, queue.prefix, [str(n) for n in range(5)],
                      shards=queue.shards)  # fmt: skip

    async def change() -> None:
        if meanwhile == "aged":  # the oldest, popped by the aging (outbox_dead.lua, the reaper)
            await queue.client.lpop(keys.outbox_dlq)
        else:  # a new one, pushed at the newest end
            await bury(queue.client, chat, queue.prefix, ["new"], shards=queue.shards,
                       at_ms=AT_MS + 10)  # fmt: skip

    letters = await list_outbox_dead_letters(
        Meanwhile(queue.client, change), queue.shards, queue.prefix
    )

    listed = [letter.mid for letter in letters]
    assert len(listed) == len(set(listed))  # none twice
    kept = mids[1:] if meanwhile == "aged" else mids
    assert [mid for mid in listed if mid in mids] == kept  # none missed, none gone listed
