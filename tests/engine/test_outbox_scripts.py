"""outbox_sent, outbox_retry, outbox_dead, outbox_settle and the sender's send_* scripts on a
real Redis (repeats included)."""

from __future__ import annotations

import orjson

from engine.outbox import new_entry, outbox_writes
from engine.sender import (
    HEAD_MOVED,
    LOCK_LOST,
    OUTBOX_RETRY,
    OUTBOX_SENT,
    OUTBOX_SETTLE,
    SEND_ABORT,
    SEND_BEGIN,
    SEND_DUE,
    SEND_LOCK_RENEW,
    SEND_MARK,
    InflightSend,
    lock_key_parts,
)
from shared.dead_letters import outbox_dead
from shared.delivery_status import STATUS_RANK, advances
from shared.keys import ShardKeys, WahaSessionKeys, engine_keys_for
from tests.engine.harness import apply_writes

CHAT = "5511987650052@c.us"
TOKEN = f"default|{CHAT}"


async def setup(aredis, prefix: str, n: int = 2):
    keys = engine_keys_for("default", CHAT, 1, prefix)
    entries = [new_entry(CHAT, f"r{i}") for i in range(n)]
    await apply_writes(aredis, outbox_writes(keys, entries, retention_seconds=60, now_ms=5))
    return keys, entries


async def test_outbox_sent_removes_head_once_and_applies_an_early_ack(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix)
    await aredis.hset(keys.history_meta, "w:AAA:ack", "read")
    args = [entries[0].mid, "true_x_AAA", "AAA", TOKEN]
    sent_keys = [keys.outbox, keys.history_meta, keys.outbox_pending]
    assert await OUTBOX_SENT(aredis, sent_keys, args) == 1
    assert await OUTBOX_SENT(aredis, sent_keys, args) == 0  # a repeat removes nothing more
    assert await aredis.llen(keys.outbox) == 1
    meta = await aredis.hgetall(keys.history_meta)
    assert meta[f"{entries[0].mid}:status".encode()] == b"read"
    assert meta[b"w:AAA"] == entries[0].mid.encode() and b"w:AAA:ack" not in meta
    assert await aredis.zscore(keys.outbox_pending, TOKEN) == 5
    assert await OUTBOX_SENT(aredis, sent_keys, [entries[1].mid, "", "", TOKEN]) == 1
    assert await aredis.zscore(keys.outbox_pending, TOKEN) is None


async def test_outbox_retry_counts_and_reschedules(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix)
    retry_keys = [keys.outbox, keys.outbox_pending]
    assert await OUTBOX_RETRY(aredis, retry_keys, [entries[0].mid, 999, TOKEN, "boom"]) == 1
    assert await OUTBOX_RETRY(aredis, retry_keys, [entries[0].mid, 1999, TOKEN, "boom"]) == 2
    assert await OUTBOX_RETRY(aredis, retry_keys, [entries[1].mid, 1, TOKEN, "x"]) == 0
    head = orjson.loads(await aredis.lindex(keys.outbox, 0))
    assert head["attempts"] == 2 and head["last_error"] == "boom"
    assert await aredis.zscore(keys.outbox_pending, TOKEN) == 1999


async def test_outbox_dead_moves_head_with_the_reason(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix, n=1)
    reason = orjson.dumps({"status": 400, "answer": "bad", "error": "x"})
    assert await outbox_dead(aredis, keys, TOKEN, entries[0].mid, reason, 7) is True
    assert await outbox_dead(aredis, keys, TOKEN, entries[0].mid, reason, 7) is False
    [letter] = [orjson.loads(x) for x in await aredis.lrange(keys.outbox_dlq, 0, -1)]
    assert letter["conversation"] == TOKEN and letter["reason"]["status"] == 400
    assert await aredis.hget(keys.history_meta, f"{entries[0].mid}:status") == b"failed"
    assert await aredis.zscore(keys.outbox_pending, TOKEN) is None


async def test_outbox_settle_releases_only_its_own_lock(aredis, key_prefix) -> None:
    keys, _ = await setup(aredis, key_prefix, n=1)
    settle_keys = [keys.sending, keys.outbox, keys.outbox_pending]
    await aredis.set(keys.sending, "other")
    assert await OUTBOX_SETTLE(aredis, settle_keys, ["mine", TOKEN]) == 1
    assert await aredis.get(keys.sending) == b"other"
    await aredis.delete(keys.outbox)
    assert await OUTBOX_SETTLE(aredis, settle_keys, ["other", TOKEN]) == 0
    assert await aredis.exists(keys.sending) == 0
    assert await aredis.zscore(keys.outbox_pending, TOKEN) is None


async def test_outbox_sent_never_records_an_id_that_is_another_replys(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix)
    sent_keys = [keys.outbox, keys.history_meta, keys.outbox_pending]
    assert await OUTBOX_SENT(aredis, sent_keys, [entries[0].mid, "true_x_AAA", "AAA", TOKEN]) == 1
    # The late echo of the first reply (same id) must not record the second one.
    assert await OUTBOX_SENT(aredis, sent_keys, [entries[1].mid, "true_x_AAA", "AAA", TOKEN]) == 0
    assert await aredis.llen(keys.outbox) == 1
    assert await aredis.hget(keys.history_meta, f"{entries[1].mid}:status") == b"queued"
    assert await aredis.hget(keys.history_meta, f"{entries[1].mid}:waha_id") is None
    # An id recorded from the phone maps to itself: that is no reply, and does not block one.
    await aredis.hset(keys.history_meta, "w:BBB", "BBB")
    args = [entries[1].mid, "true_x_BBB", "BBB", TOKEN]
    assert await OUTBOX_SENT(aredis, sent_keys, args) == 1


async def test_outbox_sent_makes_the_rest_due_by_now(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix, n=3)
    sent_keys = [keys.outbox, keys.history_meta, keys.outbox_pending]
    await aredis.zadd(keys.outbox_pending, {TOKEN: 9_000})  # put off (an echo was awaited)
    assert await OUTBOX_SENT(aredis, sent_keys, [entries[0].mid, "", "", TOKEN, 7_000]) == 1
    assert await aredis.zscore(keys.outbox_pending, TOKEN) == 7_000
    assert await OUTBOX_SENT(aredis, sent_keys, [entries[1].mid, "", "", TOKEN, 8_000]) == 1
    assert await aredis.zscore(keys.outbox_pending, TOKEN) == 7_000  # never later


async def test_outbox_sent_that_empties_the_outbox_ends_the_delivery_with_its_lock(
    aredis, key_prefix
) -> None:
    """Given the delivery's lock, the record of the last reply releases it (2): the sender's
    closing outbox_settle.lua is not needed. Not while replies are left, and never someone
    else's lock (a sender whose lock expired and was taken over)."""
    keys, entries = await setup(aredis, key_prefix, n=2)
    sent_keys = [keys.outbox, keys.history_meta, keys.outbox_pending, keys.sending]
    await aredis.set(keys.sending, "mine")
    args = [entries[0].mid, "", "", TOKEN, 7_000, "mine"]
    assert await OUTBOX_SENT(aredis, sent_keys, args) == 1  # one reply left: still delivering
    assert await aredis.get(keys.sending) == b"mine"
    await aredis.set(keys.sending, "other")  # taken over
    args = [entries[1].mid, "", "", TOKEN, 8_000, "mine"]
    assert await OUTBOX_SENT(aredis, sent_keys, args) == 1
    assert await aredis.get(keys.sending) == b"other"
    assert await aredis.zscore(keys.outbox_pending, TOKEN) is None

    keys, entries = await setup(aredis, key_prefix + ":2", n=1)
    sent_keys = [keys.outbox, keys.history_meta, keys.outbox_pending, keys.sending]
    await aredis.set(keys.sending, "mine")
    args = [entries[0].mid, "", "", TOKEN, 7_000, "mine"]
    assert await OUTBOX_SENT(aredis, sent_keys, args) == 2
    assert await aredis.exists(keys.sending) == 0
    assert await aredis.zscore(keys.outbox_pending, TOKEN) is None
    assert await OUTBOX_SENT(aredis, sent_keys, args) == 0  # a repeat: nothing more


async def test_send_lock_renew_extends_only_its_own_lock(aredis, key_prefix) -> None:
    keys, _ = await setup(aredis, key_prefix, n=1)
    await aredis.set(keys.sending, "mine", px=1_000)
    assert await SEND_LOCK_RENEW(aredis, [keys.sending], ["mine", 50_000]) == 1
    assert 1_000 < await aredis.pttl(keys.sending) <= 50_000
    await aredis.set(keys.sending, "theirs", px=1_000)
    assert await SEND_LOCK_RENEW(aredis, [keys.sending], ["mine", 50_000]) == 0
    assert await aredis.pttl(keys.sending) <= 1_000
    await aredis.delete(keys.sending)
    assert await SEND_LOCK_RENEW(aredis, [keys.sending], ["mine", 50_000]) == 0
    assert await aredis.exists(keys.sending) == 0


def send_begin(aredis, keys, lock: str, mid: str, *, lock_ms: int = 9_000, wait: int = 60_000):
    return SEND_BEGIN(
        aredis,
        [keys.sending, keys.outbox, keys.outbox_pending],
        [lock, mid, lock_ms, wait, TOKEN, 1_000],
    )


async def test_send_begin_checks_lock_and_head_then_marks_the_attempt(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix)
    await aredis.set(keys.sending, "theirs", px=1_000)
    before = await aredis.lrange(keys.outbox, 0, -1)
    assert await send_begin(aredis, keys, "mine", entries[0].mid) == LOCK_LOST
    await aredis.set(keys.sending, "mine", px=1_000)
    assert await send_begin(aredis, keys, "mine", entries[1].mid) == HEAD_MOVED
    # Refusals change nothing.
    assert await aredis.lrange(keys.outbox, 0, -1) == before
    assert await aredis.pttl(keys.sending) <= 1_000
    assert await aredis.zscore(keys.outbox_pending, TOKEN) == 5
    assert await send_begin(aredis, keys, "mine", entries[0].mid) == 0
    assert 1_000 < await aredis.pttl(keys.sending) <= 9_000
    head = orjson.loads(await aredis.lindex(keys.outbox, 0))
    assert head["mid"] == entries[0].mid and head["text"] == "r0"
    assert head["try"]["lock"] == "mine" and head["try"]["at"] > 0
    # Our own mark does not hold us back (a second attempt in the same turn).
    assert await send_begin(aredis, keys, "mine", entries[0].mid) == 0
    assert await aredis.zscore(keys.outbox_pending, TOKEN) == 5
    # Another sender, later: the first attempt's outcome is unknown, so it waits for the echo,
    # and the conversation is due again when the wait is over (the caller's clock: 1_000).
    await aredis.set(keys.sending, "next", px=1_000)
    wait = await send_begin(aredis, keys, "next", entries[0].mid)
    assert 0 < wait <= 60_000
    assert await aredis.zscore(keys.outbox_pending, TOKEN) == 1_000 + wait
    assert orjson.loads(await aredis.lindex(keys.outbox, 0))["try"]["lock"] == "mine"
    # Once the echo wait is over, it goes.
    assert await send_begin(aredis, keys, "next", entries[0].mid, wait=0) == 0
    assert orjson.loads(await aredis.lindex(keys.outbox, 0))["try"]["lock"] == "next"


async def test_send_mark_marks_only_a_send_that_send_begin_let_go(aredis, key_prefix) -> None:
    """send_mark.lua rides right behind send_begin.lua, before its answer is known: it writes
    the in-flight marker only where send_begin.lua let the send go (our lock, our head, marked
    with our attempt). A refused begin leaves the marker of whatever send is under way: a
    sender whose lock was lost must not replace the marker of the reply the lock's holder is
    sending (its echo would then be taken for the business writing from its phone)."""
    keys, entries = await setup(aredis, key_prefix)
    marker_key = WahaSessionKeys("default", key_prefix).inflight(CHAT)
    mine = InflightSend(entries[0].mid, "r0", 1_000)
    theirs = InflightSend(entries[1].mid, "r1", 900).encode()
    await aredis.set(marker_key, theirs)

    async def mark(lock: str, mid: str) -> int:
        args = [lock, mid, InflightSend(mid, "r", 1_000).encode(), 60_000]
        return await SEND_MARK(aredis, [marker_key, keys.sending, keys.outbox], args)

    await aredis.set(keys.sending, "theirs", px=10_000)
    assert await send_begin(aredis, keys, "mine", entries[0].mid) == LOCK_LOST
    assert await mark("mine", entries[0].mid) == 0  # the lock is not ours
    await aredis.set(keys.sending, "mine", px=10_000)
    assert await send_begin(aredis, keys, "mine", entries[1].mid) == HEAD_MOVED
    assert await mark("mine", entries[1].mid) == 0  # the head is another reply
    assert await mark("mine", entries[0].mid) == 0  # our head, but no attempt of ours on it
    assert await aredis.get(marker_key) == theirs.encode()
    assert await send_begin(aredis, keys, "mine", entries[0].mid) == 0
    args = [entries[0].mid, mine.encode(), 60_000]
    assert await SEND_MARK(aredis, [marker_key, keys.sending, keys.outbox], ["mine", *args]) == 1
    assert InflightSend.decode(await aredis.get(marker_key)) == mine
    assert 50_000 < await aredis.pttl(marker_key) <= 60_000
    # Our lock taken over by another sender, before it began: the head still carries our
    # attempt, yet the send is no longer ours to mark.
    await aredis.set(keys.sending, "next", px=10_000)
    assert await mark("mine", entries[0].mid) == 0
    # That sender must wait for our attempt's echo: it marks nothing, ours stays.
    assert await send_begin(aredis, keys, "next", entries[0].mid) > 0
    assert await mark("next", entries[0].mid) == 0
    assert InflightSend.decode(await aredis.get(marker_key)) == mine


async def test_retry_and_abort_clear_the_attempts_mark(aredis, key_prefix) -> None:
    keys, entries = await setup(aredis, key_prefix)
    await aredis.set(keys.sending, "mine", px=5_000)
    assert await send_begin(aredis, keys, "mine", entries[0].mid) == 0
    # Another attempt's mark, or another reply: nothing to clear.
    assert await SEND_ABORT(aredis, [keys.outbox], [entries[0].mid, "theirs"]) == 0
    assert await SEND_ABORT(aredis, [keys.outbox], [entries[1].mid, "mine"]) == 0
    assert "try" in orjson.loads(await aredis.lindex(keys.outbox, 0))
    assert await SEND_ABORT(aredis, [keys.outbox], [entries[0].mid, "mine"]) == 1
    assert "try" not in orjson.loads(await aredis.lindex(keys.outbox, 0))
    assert await send_begin(aredis, keys, "mine", entries[0].mid) == 0
    await OUTBOX_RETRY(aredis, [keys.outbox, keys.outbox_pending], [entries[0].mid, 1, TOKEN, "x"])
    head = orjson.loads(await aredis.lindex(keys.outbox, 0))
    assert "try" not in head and head["attempts"] == 1
    # A new sender need not wait: the attempt failed, nothing went out.
    await aredis.set(keys.sending, "next", px=5_000)
    assert await send_begin(aredis, keys, "next", entries[0].mid) == 0


async def test_send_due_steps_over_held_conversations(aredis, key_prefix) -> None:
    shard = ShardKeys(0, key_prefix)
    keys, _ = await setup(aredis, key_prefix, n=1)
    pending = keys.outbox_pending
    prefix, suffix = lock_key_parts(shard)
    assert prefix + TOKEN + suffix == keys.sending
    tokens = [f"default|55119{n:08d}@c.us" for n in range(6)]
    await aredis.zadd(pending, {t: n for n, t in enumerate(tokens)})
    await aredis.zadd(pending, {"default|later@c.us": 99, TOKEN: 10})
    for t in tokens[:3] + tokens[4:5]:
        held = engine_keys_for("default", t.split("|")[1], 1, key_prefix).sending
        await aredis.set(held, "someone", px=60_000)

    async def due(limit: int, start: int, scan: int) -> tuple[list[str], int]:
        found, next_from = await SEND_DUE(
            aredis, [pending], [50, limit, start, scan, prefix, suffix]
        )
        return [f.decode() for f in found], next_from

    assert await due(10, 0, 1000) == ([tokens[3], tokens[5], TOKEN], 0)  # 0: the end
    # A limit, and a bound on what one call looks at: it says where to go on.
    assert await due(1, 0, 1000) == ([tokens[3]], 4)
    assert await due(10, 0, 3) == ([], 3)
    assert await due(10, 3, 3) == ([tokens[3], tokens[5]], 6)
    assert await due(10, 6, 3) == ([TOKEN], 0)
    assert await aredis.zscore(pending, "default|later@c.us") == 99  # read-only


async def test_outbox_sent_ranks_statuses_as_the_history_does(aredis, key_prefix) -> None:
    """The status ranking lives twice: shared/delivery_status.py STATUS_RANK (an ack's turn,
    the history's reads) and lib/status.lua (outbox_sent.lua's early ack; the gateway's
    receipts). For every status the reply had and every early ack, the script ends where
    `advances` says."""
    statuses = sorted(STATUS_RANK)
    for n, (had, early) in enumerate((a, b) for a in statuses for b in statuses):
        keys, entries = await setup(aredis, f"{key_prefix}:{n}", n=1)
        mid = entries[0].mid
        await aredis.hset(keys.history_meta, mapping={f"{mid}:status": had, "w:AAA:ack": early})
        sent_keys = [keys.outbox, keys.history_meta, keys.outbox_pending]
        assert await OUTBOX_SENT(aredis, sent_keys, [mid, "true_x_AAA", "AAA", TOKEN]) == 1
        expected = had
        for step in ("sent", early):
            if advances(expected, step):
                expected = step
        got = await aredis.hget(keys.history_meta, f"{mid}:status")
        assert (had, early, got) == (had, early, expected.encode())
