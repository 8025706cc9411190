"""The delivery lock's keeper, the settlement of a send by its echo and the rest of the sender
(dead letters, file replies, the park and the sweep), against a real Redis: tests written to
kill the mutants of engine/sender.py that survived the mutation runs (docs/testing.md,
"Mutation testing", lists each and the mutant it kills).

Each asserts a behaviour: whose lock is extended, and which echo may record which reply. A
rejection also checks that nothing was written (the outbox, `ours:<id>` and the history)."""

from __future__ import annotations

import dataclasses

import httpx
import orjson
import pytest
import respx

import engine.sender
from engine.outbox import OutboxEntry, new_entry, outbox_writes
from engine.sender import InflightSend, LockKeeper, Sender, SenderConfig
from engine.waha_client import MediaOutbound, SentMessage, WahaClient
from shared.clock import now_ms
from shared.dead_letters import DeadLetterLimits
from shared.keys import WahaSessionKeys, engine_keys_for, shard_of
from shared.redis_errors import REDIS_UNAVAILABLE
from tests.engine.harness import WAHA, apply_writes, mock_courtesy, texts_sent
from tests.engine.support import (
    CHAT,
    HeldSends,
    commit_replies,
    held_elsewhere,
    make_sender,
    sent_answer,
)
from tests.support.polling import async_wait_until

TOKEN = f"default|{CHAT}"
SHORT_ID = f"3EB0{7:016X}"
ECHO = SentMessage(f"true_{CHAT}_{SHORT_ID}")
# Odd, so half of it is not a round number (the edge below is `echo_wait_ms // 2`).
ECHO_WAIT_MS = 60_001

# --- LockKeeper.renew ------------------------------------------------------------------------


async def _held_by(aredis, key_prefix: str, holder: str) -> tuple[str, LockKeeper]:
    """The delivery lock in `holder`'s hands for one more second, and our keeper of it (token
    "mine", a lifetime of a minute)."""
    key = f"{key_prefix}:sending"
    await aredis.set(key, holder, px=1000)
    return key, LockKeeper(aredis, key, "mine", lock_ms=60_000)


async def test_renewing_extends_our_own_lock_to_its_full_lifetime(aredis, key_prefix) -> None:
    """Kills, in renew: the renewal skipped (`not self.lost` -> `self.lost`, `and` -> `or`),
    the script's answer inverted (`not await` -> `await`), `lost` not kept False, the answer
    `not self.lost` -> `self.lost`, and the key, token or lifetime not passed to the script."""
    key, keeper = await _held_by(aredis, key_prefix, "mine")

    assert await keeper.renew() is True

    assert keeper.lost is False
    assert await aredis.get(key) == b"mine"
    assert await aredis.pttl(key) > 1000  # extended to the keeper's lifetime


async def test_a_lock_in_another_senders_hands_is_lost_and_never_extended(
    aredis, key_prefix
) -> None:
    """Kills, in renew: `self.lost = True` -> `None`/`False` (a sender that lost its lock
    would go on as if it held it) and the answer `not self.lost` -> `self.lost`; and checks
    that a keeper that lost its lock never asks again, even if its token comes back."""
    key, keeper = await _held_by(aredis, key_prefix, "someone-else")

    assert await keeper.renew() is False

    assert keeper.lost is True
    assert await aredis.get(key) == b"someone-else"
    assert 0 < await aredis.pttl(key) <= 1000  # not extended
    # Lost is for good: the conversation is another sender's now.
    await aredis.set(key, "mine", px=1000)
    assert await keeper.renew() is False
    assert 0 < await aredis.pttl(key) <= 1000


async def test_a_lapsed_lock_is_lost_and_not_recreated(aredis, key_prefix) -> None:
    """The lock expired (a stalled process): the keeper gives it up and writes nothing."""
    key = f"{key_prefix}:sending"
    keeper = LockKeeper(aredis, key, "mine", lock_ms=60_000)

    assert await keeper.renew() is False

    assert keeper.lost is True
    assert await aredis.exists(key) == 0


async def test_a_started_keeper_renews_the_lock_while_it_runs_and_stops_when_told(
    aredis, key_prefix
) -> None:
    """The keeper's loop renews the lock on its own (it outlives many of its lifetimes), and
    renews no more once stopped. Kills, in _run: the loop never entered (`while self.lost`)
    and the renewal interval's unit (`/ 3000` -> `* 3000`): the lock then lapses."""
    key = f"{key_prefix}:sending"
    # Renews every 500 ms: only an event-loop stall of a whole second could let it lapse.
    await aredis.set(key, "mine", px=1500)
    keeper = LockKeeper(aredis, key, "mine", lock_ms=1500)
    renewals = 0
    renew = keeper.renew

    async def counted() -> bool:
        nonlocal renewals
        renewals += 1
        return await renew()

    keeper.renew = counted  # type: ignore[method-assign]
    keeper.start()
    try:
        # Four renewals outlast the lock's lifetime: it is held only because they happened.
        await async_wait_until(_at_least(lambda: renewals, 4), what="four renewals")
        assert await aredis.get(key) == b"mine"
        assert keeper.lost is False
    finally:
        await keeper.stop()
    stopped_at = renewals
    await async_wait_until(_gone(aredis, key), what="the lock to lapse once its keeper stopped")
    assert renewals == stopped_at


def _at_least(count, n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return count() >= n

    return check


def _gone(aredis, key: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await aredis.exists(key) == 0

    return check


@respx.mock
async def test_a_delivery_that_outlasts_its_lock_keeps_it(aredis, key_prefix, monkeypatch) -> None:
    """A send WAHA holds longer than the delivery lock's lifetime: the delivery's keeper renews
    the lock, so no other sender can take the conversation meanwhile. Kills, in _deliver: the
    LockKeeper given None for its client, key, token or lifetime (its renewals fail, are
    logged, and the lock lapses in the middle of the delivery)."""
    held = await HeldSends.with_replies(aredis, key_prefix, [CHAT])
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    renewals = 0
    real_renew = engine.sender.SEND_LOCK_RENEW

    async def counted(client: object, keys_: object, args: object) -> int:
        nonlocal renewals
        renewed = await real_renew(client, keys_, args)  # type: ignore[arg-type]
        renewals += bool(renewed)
        return renewed

    monkeypatch.setattr(engine.sender, "SEND_LOCK_RENEW", counted)
    # Renewed every 500 ms: only an event-loop stall of a whole second could let it lapse.
    sender, waha = make_sender(aredis, key_prefix, lock_ms=1500)
    sender.kick(TOKEN)
    await async_wait_until(_at_least(lambda: held.in_flight, 1), what="the first send")
    lock = await aredis.get(keys.sending)
    assert lock is not None

    async def outlasted_or_lapsed() -> bool:
        return renewals >= 4 or await aredis.get(keys.sending) != lock

    # Four renewals outlast the lock's lifetime: it is held only because they happened.
    await async_wait_until(outlasted_or_lapsed, what="the lock to be renewed or to lapse")
    assert await aredis.get(keys.sending) == lock

    await held.let_go(sender, waha)
    assert held.sent == [(CHAT, "um"), (CHAT, "dois")]
    assert await aredis.exists(keys.sending) == 0


@respx.mock
async def test_a_delivery_lock_expires_on_its_own(aredis, key_prefix) -> None:
    """The delivery lock is taken with its lifetime: a sender killed before its first send
    (send_begin.lua extends the lock) and before its keeper's first renewal leaves a lock that
    lapses, and another sender delivers the conversation. Kills, in _deliver: the SET NX's `px`
    None or dropped (a lock with no expiry: the conversation never delivered again)."""
    mock_courtesy()
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    lifetimes: list[int] = []

    async def typing(request: httpx.Request) -> httpx.Response:
        lifetimes.append(await aredis.pttl(keys.sending))  # the lock as it was taken
        return httpx.Response(201, json={})

    respx.post(f"{WAHA}/api/startTyping").mock(side_effect=typing)
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    await commit_replies(aredis, key_prefix, "olá")
    # The keeper's first renewal is 20 s away; the typing comes before send_begin.lua.
    sender, waha = make_sender(aredis, key_prefix, lock_ms=60_000, typing_delay_max_ms=1)

    await sender.deliver(TOKEN)

    assert texts_sent(send) == ["olá"]
    [lifetime] = lifetimes
    assert 0 < lifetime <= 60_000
    await waha.aclose()


# --- Sender.settle_echo ---------------------------------------------------------------------


async def _reply_in_flight(aredis, key_prefix: str, text: str = "Olá!") -> OutboxEntry:
    """One reply at the head of the outbox, as a sender left it after its send was under way."""
    await commit_replies(aredis, key_prefix, text)
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    [raw] = await aredis.lrange(keys.outbox, 0, -1)
    return OutboxEntry.decode(raw)


async def _nothing_recorded(aredis, key_prefix: str, entry: OutboxEntry) -> None:
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert [OutboxEntry.decode(r).mid for r in await aredis.lrange(keys.outbox, 0, -1)] == [
        entry.mid
    ]
    assert await aredis.hget(keys.history_meta, f"{entry.mid}:waha_id") is None
    assert await aredis.hget(keys.history_meta, f"w:{SHORT_ID}") is None
    assert await aredis.hget(keys.history_meta, f"{entry.mid}:status") != b"sent"


async def _recorded(aredis, key_prefix: str, entry: OutboxEntry) -> None:
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert await aredis.llen(keys.outbox) == 0
    assert await aredis.hget(keys.history_meta, f"w:{SHORT_ID}") == entry.mid.encode()
    assert await aredis.hget(keys.history_meta, f"{entry.mid}:waha_id") == ECHO.id.encode()
    ours = WahaSessionKeys("default", key_prefix).ours(SHORT_ID)
    assert await aredis.get(ours) == entry.mid.encode()


async def test_an_echo_with_no_reply_left_in_the_outbox_settles_nothing(aredis, key_prefix) -> None:
    """Kills, in settle_echo's first check: `head is None` -> `is not None`, its `or` ->
    `and`, its `return False` -> `True` (an echo with nothing to settle reported as settled)."""
    sender, client = make_sender(aredis, key_prefix)
    marker = InflightSend("a-reply", "Olá!", 1_000_000)

    assert await sender.settle_echo(TOKEN, marker, ECHO, marker.at_ms) is False

    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert await aredis.exists(keys.outbox, keys.history_meta, keys.outbox_pending) == 0
    assert await aredis.exists(WahaSessionKeys("default", key_prefix).ours(SHORT_ID)) == 0
    await client.aclose()


async def test_an_echo_of_the_reply_in_flight_records_it(aredis, key_prefix) -> None:
    """The reply the marker names, at the head, with the echo's text: recorded, and True.
    Kills: the head read from the wrong end or key, `not marker.mid` dropped, the final
    `return True` -> `False`, `if not await self._mark_sent` -> `if await`."""
    entry = await _reply_in_flight(aredis, key_prefix)
    sender, client = make_sender(aredis, key_prefix, echo_wait_ms=ECHO_WAIT_MS)
    marker = InflightSend(entry.mid, entry.text, 1_000_000)

    assert await sender.settle_echo(TOKEN, marker, ECHO, marker.at_ms) is True

    await _recorded(aredis, key_prefix, entry)
    await client.aclose()


async def test_a_marker_that_names_no_reply_settles_nothing(aredis, key_prefix) -> None:
    """A marker written before markers named their reply (plain text) cannot say which reply
    was in flight: the echo records nothing, even with the head's text."""
    entry = await _reply_in_flight(aredis, key_prefix)
    sender, client = make_sender(aredis, key_prefix)
    marker = InflightSend.decode(entry.text.encode())
    assert marker.mid == ""

    assert await sender.settle_echo(TOKEN, marker, ECHO, 0) is False

    await _nothing_recorded(aredis, key_prefix, entry)
    await client.aclose()


@pytest.mark.parametrize(
    ("echo_age_ms", "settles"),
    [
        pytest.param(0, True, id="same-time"),
        pytest.param(ECHO_WAIT_MS // 2, True, id="half-an-echo-wait-older"),
        pytest.param(ECHO_WAIT_MS // 2 + 1, False, id="older-than-half-an-echo-wait"),
        pytest.param(-5_000, True, id="after-the-marker"),
    ],
)
async def test_an_echo_much_older_than_the_send_in_flight_settles_nothing(
    aredis, key_prefix, echo_age_ms: int, settles: bool
) -> None:
    """An echo at least half an echo wait older than the marker is of an older send of the same
    text (made again once the wait was over), not of this one. The edge is exact: half an echo
    wait older still settles. Kills: `<` -> `<=`, `- echo_wait_ms // 2` -> `+`, `// 2` -> `// 3`,
    `echo_at_ms and` -> `or`, and that guard's `return False` -> `True`."""
    entry = await _reply_in_flight(aredis, key_prefix)
    sender, client = make_sender(aredis, key_prefix, echo_wait_ms=ECHO_WAIT_MS)
    marker = InflightSend(entry.mid, entry.text, 10_000_000)

    answer = await sender.settle_echo(TOKEN, marker, ECHO, marker.at_ms - echo_age_ms)

    assert answer is settles
    if settles:
        await _recorded(aredis, key_prefix, entry)
    else:
        await _nothing_recorded(aredis, key_prefix, entry)
    await client.aclose()


async def test_an_echo_without_a_timestamp_is_matched_by_reply_and_text(aredis, key_prefix) -> None:
    """An echo whose timestamp is unknown (0) is not judged by it. Kills: `echo_at_ms and`
    -> `or` (then 0 < edge refuses it)."""
    entry = await _reply_in_flight(aredis, key_prefix)
    sender, client = make_sender(aredis, key_prefix, echo_wait_ms=ECHO_WAIT_MS)
    marker = InflightSend(entry.mid, entry.text, 10_000_000)

    assert await sender.settle_echo(TOKEN, marker, ECHO, 0) is True

    await _recorded(aredis, key_prefix, entry)
    await client.aclose()


async def test_an_echo_whose_id_is_known_as_another_replys_settles_nothing(
    aredis, key_prefix
) -> None:
    """`ours:<id>` names another reply (its send was recorded, the history entry may be gone
    by retention): the echo is that reply's, not the one in flight. Only the sender's own check
    of `ours` sees this (outbox_sent.lua checks the history). Kills, in settle_echo: `if
    sent.short_id` negated, `owner is not None and` -> `or`, `not in` -> `in`, and its
    `return False` -> `True`."""
    entry = await _reply_in_flight(aredis, key_prefix)
    ours = WahaSessionKeys("default", key_prefix).ours(SHORT_ID)
    await aredis.set(ours, "another-reply", ex=3600)
    sender, client = make_sender(aredis, key_prefix)
    marker = InflightSend(entry.mid, entry.text, 1_000_000)

    assert await sender.settle_echo(TOKEN, marker, ECHO, marker.at_ms) is False

    await _nothing_recorded(aredis, key_prefix, entry)
    assert await aredis.get(ours) == b"another-reply"
    await client.aclose()


@pytest.mark.parametrize("owner", ["self", "1"], ids=["names-this-reply", "older-marker-1"])
async def test_an_echo_whose_id_is_known_as_this_replys_or_of_old_still_settles(
    aredis, key_prefix, owner: str
) -> None:
    """`ours:<id>` naming this reply, or holding "1" (written before ids named their reply),
    does not stop the echo from recording it. Kills: `not in` -> `in`, `"1"` changed,
    `owner is not None` -> `is None`."""
    entry = await _reply_in_flight(aredis, key_prefix)
    ours = WahaSessionKeys("default", key_prefix).ours(SHORT_ID)
    await aredis.set(ours, entry.mid if owner == "self" else "1", ex=3600)
    sender, client = make_sender(aredis, key_prefix)
    marker = InflightSend(entry.mid, entry.text, 1_000_000)

    assert await sender.settle_echo(TOKEN, marker, ECHO, marker.at_ms) is True

    await _recorded(aredis, key_prefix, entry)
    await client.aclose()


async def test_an_echo_whose_id_the_history_gives_to_another_reply_settles_nothing(
    aredis, key_prefix
) -> None:
    """The history already maps the id to another reply (`w:<id>`) while `ours` is gone:
    outbox_sent.lua refuses, and settle_echo must say so. Kills: the `return False` after
    `_mark_sent` -> `True` (a reply reported as recorded that is still to be sent)."""
    entry = await _reply_in_flight(aredis, key_prefix)
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    await aredis.hset(keys.history_meta, f"w:{SHORT_ID}", "another-reply")
    sender, client = make_sender(aredis, key_prefix)
    marker = InflightSend(entry.mid, entry.text, 1_000_000)

    assert await sender.settle_echo(TOKEN, marker, ECHO, marker.at_ms) is False

    assert [OutboxEntry.decode(r).mid for r in await aredis.lrange(keys.outbox, 0, -1)] == [
        entry.mid
    ]
    assert await aredis.hget(keys.history_meta, f"{entry.mid}:waha_id") is None
    assert await aredis.hget(keys.history_meta, f"w:{SHORT_ID}") == b"another-reply"
    await client.aclose()


async def test_an_echo_settled_after_its_sender_moved_on_keeps_the_next_sends_marker(
    aredis, key_prefix, monkeypatch
) -> None:
    """The echo of the first reply is settled while its sender, meanwhile, recorded it and
    began the second (its in-flight marker written): the settlement, finding the first reply
    recorded, leaves the second's marker alone, so the second's echo, should it overtake
    WAHA's answer, is still known as ours (not taken for a message typed on the business
    phone: a second history entry, the customer taken off the line). Kills, in _mark_sent:
    `clear_inflight` on by default (the echo's settlement deleting the chat's marker)."""
    await commit_replies(aredis, key_prefix, "primeira", "segunda")
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    first, second = [OutboxEntry.decode(r) for r in await aredis.lrange(keys.outbox, 0, -1)]
    session_keys = WahaSessionKeys("default", key_prefix)
    sender, client = make_sender(aredis, key_prefix, echo_wait_ms=ECHO_WAIT_MS)
    real_lindex = aredis.lindex
    next_marker = InflightSend(second.mid, second.text, now_ms()).encode()

    async def sender_moves_on(name: str, index: int) -> object:
        head = await real_lindex(name, index)
        # The sender's own steps, after the settlement looked at the head.
        await sender._mark_sent(keys, session_keys, TOKEN, first, ECHO, clear_inflight=True)
        await aredis.set(session_keys.inflight(CHAT), next_marker, px=60_000)
        return head

    monkeypatch.setattr(aredis, "lindex", sender_moves_on)
    marker = InflightSend(first.mid, first.text, now_ms())

    assert await sender.settle_echo(TOKEN, marker, ECHO, marker.at_ms) is False

    assert await aredis.get(session_keys.inflight(CHAT)) == next_marker.encode()
    await client.aclose()


@respx.mock
async def test_a_sent_replys_id_is_remembered_for_a_day_only(aredis, key_prefix) -> None:
    """`ours:<id>` (how a late echo is known as our reply) expires after OURS_TTL_SECONDS:
    one key per reply sent would otherwise stay in Redis for ever. Kills, in _mark_sent: its
    SET's `ex` None or dropped."""
    mock_courtesy()
    respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(7))
    await commit_replies(aredis, key_prefix, "olá")
    sender, client = make_sender(aredis, key_prefix)

    await sender.deliver(TOKEN)

    ours = WahaSessionKeys("default", key_prefix).ours(SHORT_ID)
    assert await aredis.get(ours) is not None
    assert 0 < await aredis.ttl(ours) <= engine.sender.OURS_TTL_SECONDS
    await client.aclose()


# --- the rest of the sender -----------------------------------------------------------------


@respx.mock
async def test_the_outboxs_dead_letters_keep_the_configured_limits(aredis, key_prefix) -> None:
    """The deployment's WSM_DEAD_LETTERS_MAX holds for the outbox's dead letters too. Kills, in
    _dead: the sender's limits not passed to outbox_dead.lua (the defaults, 10,000, instead)."""
    mock_courtesy()
    bad = httpx.Response(400, json={"statusCode": 400, "message": "chatId is invalid"})
    respx.post(f"{WAHA}/api/sendText").mock(return_value=bad)
    await commit_replies(aredis, key_prefix, "primeira", "segunda")
    limits = DeadLetterLimits(max_entries=1, max_age_ms=DeadLetterLimits().max_age_ms)
    sender, client = make_sender(aredis, key_prefix, dead_letters=limits)

    await sender.deliver(TOKEN)

    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert await aredis.llen(keys.outbox) == 0
    [kept] = [orjson.loads(x) for x in await aredis.lrange(keys.outbox_dlq, 0, -1)]
    assert kept["entry"]["text"] == "segunda"  # the newest one
    await client.aclose()


@respx.mock
async def test_a_file_reply_without_a_media_store_is_dead_lettered_unsent(
    aredis, key_prefix
) -> None:
    """A process that cannot read stored files (no media store) dead-letters a file reply
    rather than failing on it every sweep, for ever, with the rest of the outbox behind it.
    Kills, in _file_of: `self.media is None or ...` -> `and`."""
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    image = dataclasses.replace(
        new_entry(CHAT, "a foto"), kind="image", media={"id": "m1", "mimetype": "image/png"}
    )
    writes = outbox_writes(
        keys, [image, new_entry(CHAT, "e o texto")], retention_seconds=60, now_ms=1
    )
    await apply_writes(aredis, writes)
    sender, client = make_sender(aredis, key_prefix)
    assert sender.media is None and isinstance(client, MediaOutbound)

    await sender.deliver(TOKEN)

    [dead] = [orjson.loads(x) for x in await aredis.lrange(keys.outbox_dlq, 0, -1)]
    assert dead["entry"]["mid"] == image.mid
    assert texts_sent(send) == ["e o texto"]  # the reply behind it still goes out
    assert await aredis.llen(keys.outbox) == 0
    await client.aclose()


async def test_waking_a_session_makes_every_parked_conversation_of_it_due(
    aredis, key_prefix, monkeypatch
) -> None:
    """session.status WORKING: each of the session's parked conversations is due now, whatever
    its place in the pending index; another session's stay parked. Kills, in wake_session: the
    pending index read from its second entry (`zrange(key, 1, -1)`) or only its first two
    (`0, +1`)."""
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    parked = {f"default|55119{n:08d}@c.us": 10**13 + n for n in range(4)}
    elsewhere = "other|5511900000001@c.us"
    await aredis.zadd(keys.outbox_pending, {**parked, elsewhere: 10**13})
    sender, client = make_sender(aredis, key_prefix)

    async def no_sweep(limit: int = 200) -> int:
        return 0  # the deliveries are not what this test looks at

    monkeypatch.setattr(sender, "sweep_once", no_sweep)
    before = now_ms()

    await sender.wake_session("default")

    scores = dict(await aredis.zrange(keys.outbox_pending, 0, -1, withscores=True))
    assert all(before <= scores[t.encode()] <= now_ms() for t in parked)
    assert scores[elsewhere.encode()] == 10**13
    await client.aclose()


@respx.mock
async def test_a_probe_that_finds_the_session_working_wakes_its_other_conversations(
    aredis, key_prefix
) -> None:
    """A delivery that finds its session parked and WAHA's session WORKING lifts the park for
    the whole session: the session's other parked conversations go out at once, not at their
    recheck. Kills, in _probe: `wake_session(None)`."""
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(side_effect=[sent_answer(1), sent_answer(2)])
    respx.get(f"{WAHA}/api/sessions/default").mock(
        return_value=httpx.Response(200, json={"name": "default", "status": "WORKING"})
    )
    other = "5511900000009@c.us"
    await commit_replies(aredis, key_prefix, "para o primeiro")
    await commit_replies(aredis, key_prefix, "para o segundo", chat=other)
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    await aredis.zadd(keys.outbox_pending, {f"default|{other}": now_ms() + 3_600_000})
    parked = WahaSessionKeys("default", key_prefix).parked
    await aredis.set(parked, "422", px=60_000)
    sender, client = make_sender(aredis, key_prefix)

    await sender.deliver(TOKEN)
    await sender.drain()

    assert sorted(texts_sent(send)) == ["para o primeiro", "para o segundo"]
    assert await aredis.exists(parked) == 0
    await client.aclose()


@respx.mock
async def test_a_sweep_goes_on_where_the_last_one_stopped(aredis, key_prefix, monkeypatch) -> None:
    """A sweep looks at SWEEP_SCAN pending entries at most (send_due.lua's bound); the next
    goes on from there, so an orphan behind more held conversations than that is reached.
    Kills, in sweep_once: the shard's offset not read back (`_sweep_from.get(None, 0)`: every
    sweep starts over, and the orphan is never reached)."""
    monkeypatch.setattr(engine.sender, "SWEEP_SCAN", 3)
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    await held_elsewhere(aredis, key_prefix, 5)  # due before the orphan
    await commit_replies(aredis, key_prefix, "órfã")
    await aredis.zadd(keys.outbox_pending, {TOKEN: 1000})
    sender, client = make_sender(aredis, key_prefix)

    started = [await sender.sweep_once() for _ in range(3)]
    await sender.drain()

    assert sum(started) == 1
    assert texts_sent(send) == ["órfã"]
    await client.aclose()


async def test_a_rate_of_one_send_a_second_still_limits(aredis, key_prefix) -> None:
    """WSM_SENDS_PER_SECOND_PER_SESSION=1 (or less): the session's sends are still spaced.
    Kills, in _rate_wait: `sends_per_second <= 0` -> `<= 1` (a rate of 1 read as "no limit")."""
    sender, client = make_sender(aredis, key_prefix, sends_per_second=1.0, burst=1)
    session_keys = WahaSessionKeys("default", key_prefix)

    assert await sender._rate_wait(session_keys) == 0
    assert await sender._rate_wait(session_keys) > 0  # the bucket is empty: wait for a token
    await client.aclose()


@respx.mock
@pytest.mark.parametrize(("kind", "typing_ms"), [("text", 1), ("text", 0), ("image", 1)])
async def test_seen_and_typing_name_the_chat_and_never_precede_a_file_or_a_disabled_pause(
    aredis, key_prefix, kind: str, typing_ms: int
) -> None:
    """The courtesy calls (WAHA's advice against bans) go to the reply's session and chat:
    seen, then typing for the pause; no typing with the pause set to 0, none before a file.
    Kills, in _send_one: sendText's, sendSeen's, startTyping's and stopTyping's session or
    chat None, `pause = 0` for a file -> `1`, `pause > 0` -> `>= 0`."""
    routes = {
        path: respx.post(f"{WAHA}/api/{path}").mock(return_value=httpx.Response(201, json={}))
        for path in ("sendSeen", "startTyping", "stopTyping")
    }
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    send_image = respx.post(f"{WAHA}/api/sendImage").mock(return_value=sent_answer(1))
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    entry = new_entry(CHAT, "olá")
    if kind == "image":
        entry = dataclasses.replace(
            entry, kind="image", media={"id": "m1", "mimetype": "image/png"}
        )
    await apply_writes(aredis, outbox_writes(keys, [entry], retention_seconds=60, now_ms=1))
    sender, client = make_sender(
        aredis, key_prefix, typing_delay_max_ms=typing_ms, typing_ms_per_char=0
    )
    sender.media = _StoredFile()

    await sender.deliver(TOKEN)

    [sent] = [
        orjson.loads(c.request.content) for c in (send if kind == "text" else send_image).calls
    ]
    assert sent["session"] == "default" and sent["chatId"] == CHAT
    [seen] = [orjson.loads(c.request.content) for c in routes["sendSeen"].calls]
    assert seen["session"] == "default" and seen["chatId"] == CHAT
    for path in ("startTyping", "stopTyping"):
        typing = [orjson.loads(c.request.content) for c in routes[path].calls]
        if kind == "text" and typing_ms:
            assert typing == [{"session": "default", "chatId": CHAT}], path
        else:
            assert typing == [], path
    await client.aclose()


class _StoredFile:
    async def read_media(self, media: dict[str, object]) -> bytes | None:
        return b"\x89PNG" + b"\x00" * 16


@respx.mock
async def test_a_sent_reply_is_recorded_once_redis_answers_again(
    aredis, key_prefix, monkeypatch
) -> None:
    """WAHA accepted the reply and Redis is away for a moment: the sender keeps trying to
    record it (never gives up at once: the reply would be sent a second time), then the
    reply leaves the outbox and its in-flight marker goes. Kills, in _record_sent: the
    patience's deadline None or in the past, the backoff broken (None, `first`/`cap` None,
    `sleep(None)`); and `clear_inflight=True` dropped."""
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    await commit_replies(aredis, key_prefix, "olá")
    sender, client = make_sender(aredis, key_prefix)
    real_mark_sent = sender._mark_sent
    failures = 0

    async def away_twice(*args: object, **kwargs: object) -> int:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise REDIS_UNAVAILABLE[0]("redis away")
        return await real_mark_sent(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sender, "_mark_sent", away_twice)

    await sender.deliver(TOKEN)

    assert failures == 2 and texts_sent(send) == ["olá"]
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert await aredis.llen(keys.outbox) == 0
    assert await aredis.exists(WahaSessionKeys("default", key_prefix).inflight(CHAT)) == 0
    await client.aclose()


@respx.mock
@pytest.mark.parametrize("where", ["send_begin", "inflight"])
async def test_an_attempt_cut_off_before_waha_is_undone_and_due_at_once(
    aredis, key_prefix, monkeypatch, where: str
) -> None:
    """Redis goes away after send_begin.lua marked the head with the attempt (its answer lost,
    or, where the marker takes a round trip of its own as on a cluster, the in-flight marker
    not written), before sendText: nothing went to WAHA. Once Redis answers, the mark is
    cleared and the conversation is due at once, so the sweep hands it to a sender now instead
    of after the echo wait. Kills, in _send_one: the clean-up after a lost send_begin answer not
    spawned or given None/too few arguments; in _abort_unsent: the pending index not made due
    (`zadd` given None or too few arguments)."""
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    await commit_replies(aredis, key_prefix, "olá")
    inflight = WahaSessionKeys("default", key_prefix).inflight(CHAT)
    real_pipeline, real_set = aredis.pipeline, aredis.set
    cut: list[str] = []

    def begin_answer_lost(*args: object, **kwargs: object) -> object:
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute

        async def landed_then_lost(*a: object, **k: object) -> object:
            begins = [c for c, _ in pipe.command_stack if engine.sender.SEND_BEGIN.sha in c]
            answers = await execute(*a, **k)
            if begins and not cut:
                cut.append("send_begin")
                raise REDIS_UNAVAILABLE[0]("Connection reset")
            return answers

        pipe.execute = landed_then_lost
        return pipe

    async def inflight_refused(name: str, *args: object, **kwargs: object) -> object:
        if name == inflight and not cut:
            cut.append("inflight")
            raise REDIS_UNAVAILABLE[0]("Connection refused")
        return await real_set(name, *args, **kwargs)  # type: ignore[arg-type]

    if where == "send_begin":
        monkeypatch.setattr(aredis, "pipeline", begin_answer_lost)
    else:
        monkeypatch.setattr(engine.sender, "one_node", lambda pipe: False)  # as on a cluster
        monkeypatch.setattr(aredis, "set", inflight_refused)
    first, client = make_sender(aredis, key_prefix)
    before = now_ms()

    await first.deliver(TOKEN)  # logs the failure; its clean-up runs in a task of its own
    await first.drain()

    assert cut == [where] and texts_sent(send) == []
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert before <= (await aredis.zscore(keys.outbox_pending, TOKEN) or 0) <= now_ms()
    monkeypatch.undo()
    second, _ = make_sender(aredis, key_prefix)
    assert await second.sweep_once() == 1
    await second.drain()
    assert texts_sent(send) == ["olá"]
    await client.aclose()


@respx.mock
@pytest.mark.parametrize(
    ("answer", "due_at_least_ms"),
    [
        pytest.param(httpx.Response(429, headers={"Retry-After": "30"}), 30_000, id="429"),
        pytest.param(
            httpx.Response(422, json={"message": "Session status is not as expected: STARTING"}),
            5_000,
            id="422-parked",
        ),
        pytest.param(None, 5_000, id="parked-before"),
    ],
)
async def test_a_refused_send_comes_due_again_no_sooner_than_it_should(
    aredis, key_prefix, answer: httpx.Response | None, due_at_least_ms: int
) -> None:
    """A 429 comes due again after WAHA's Retry-After (not at once: the session would be
    hammered); a 422 parks the session, and a delivery that finds it parked (and WAHA not
    WORKING yet) leaves it so: the conversation comes due at its recheck, not at every sweep. Kills,
    in _send_one: the retry's `now + backoff` -> `-`, Retry-After not passed (None, dropped);
    the park's `due` None or `now - recheck`, its `zadd` given None or too few arguments; in
    _deliver, a session found parked (WAHA still STARTING) made due `now - recheck`."""
    mock_courtesy()
    respx.post(f"{WAHA}/api/sendText").mock(return_value=answer or sent_answer(1))
    if answer is None:
        await aredis.set(WahaSessionKeys("default", key_prefix).parked, "422", px=60_000)
        respx.get(f"{WAHA}/api/sessions/default").mock(
            return_value=httpx.Response(200, json={"name": "default", "status": "STARTING"})
        )
    await commit_replies(aredis, key_prefix, "olá")
    sender, client = make_sender(aredis, key_prefix, parked_recheck_ms=5_000, retry_max_ms=60_000)
    before = now_ms()

    await sender.deliver(TOKEN)

    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert await aredis.llen(keys.outbox) == 1
    due = await aredis.zscore(keys.outbox_pending, TOKEN)
    assert due is not None and before + due_at_least_ms <= due <= now_ms() + 60_000
    await client.aclose()


def test_an_in_flight_marker_reads_back_as_written() -> None:
    """What the sender writes to `…:inflight:<chat>` is what the echo's settlement reads: the
    reply, its text and when the attempt began (settle_echo's age check needs the time).
    Kills, in InflightSend.encode: a field written under another name (read back empty or 0)."""
    marker = InflightSend("a-reply", "Olá!", 1_234_567)

    assert InflightSend.decode(marker.encode()) == marker
    assert InflightSend.decode(marker.encode().encode()) == marker


@respx.mock
async def test_a_reply_whose_earlier_attempt_awaits_its_echo_is_left_until_then(
    aredis, key_prefix, monkeypatch
) -> None:
    """The head carries the mark of an attempt whose sender died after send_begin.lua (WAHA
    may have it): a new delivery leaves it for the echo wait, once, without sending, and ends
    (the script makes it due when the wait is over). Kills, in _send_one: that branch's
    `return "stop"` changed (taken for "next": the delivery asks send_begin again and again
    until the wait is over, then sends)."""
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    await commit_replies(aredis, key_prefix, "olá")
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    [raw] = await aredis.lrange(keys.outbox, 0, -1)
    mid = OutboxEntry.decode(raw).mid
    # The earlier sender: its lock, its attempt's mark on the head, then it dies.
    await aredis.set(keys.sending, "dead-sender", px=60_000)
    real_begin = engine.sender.SEND_BEGIN
    begun = await real_begin(
        aredis,
        [keys.sending, keys.outbox, keys.outbox_pending],
        ["dead-sender", mid, 10_000, 60_000, TOKEN, now_ms()],
    )
    assert int(begun) == 0
    await aredis.delete(keys.sending)
    asked = 0
    sender, client = make_sender(aredis, key_prefix)
    real_sender_begin = sender._begin

    async def counted_begin(*args: object) -> int:
        nonlocal asked
        asked += 1
        if asked > 3:
            raise RuntimeError("send_begin asked again and again")
        return await real_sender_begin(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sender, "_begin", counted_begin)

    await sender.deliver(TOKEN)

    assert asked == 1 and texts_sent(send) == []
    assert await aredis.llen(keys.outbox) == 1
    await client.aclose()


@respx.mock
@pytest.mark.parametrize("bound", [1, 0])
async def test_a_bound_of_one_delivery_at_a_time_is_kept(aredis, key_prefix, bound: int) -> None:
    """WSM_SENDER_MAX_DELIVERIES=1 (or 0, read as 1): one conversation delivered at a time in
    the process, the other waiting its turn. Kills, in Sender.__init__: the semaphore's floor
    `max(1, ...)` -> `max(2, ...)` (two at once)."""
    chats = [CHAT, "5511900000009@c.us"]
    held = await HeldSends.with_replies(aredis, key_prefix, chats)
    sender, waha = make_sender(aredis, key_prefix, max_deliveries=bound)
    for chat in chats:
        sender.kick(f"default|{chat}")

    async def one_sending_one_waiting() -> bool:
        return held.in_flight == 1 and sender.waiting == 1

    try:
        await async_wait_until(one_sending_one_waiting, what="1 sending, 1 waiting")
    finally:
        await held.let_go(sender, waha)
    assert held.most == 1
    assert held.each_in_order(chats, ("um", "dois")), held.sent


@respx.mock
async def test_a_sender_over_several_shards_finds_the_conversations_keys(
    aredis, key_prefix
) -> None:
    """WSM_SHARDS above 1: the sender delivers a conversation from its own shard's keys (the
    one the engine committed its replies to). Kills, in _keys: `shard_of(None, ...)` (every
    delivery failing; the tests' single shard never hashes the token)."""
    shards = 4
    assert shard_of(TOKEN, shards) != 0
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    keys = engine_keys_for("default", CHAT, shards, key_prefix)
    writes = outbox_writes(keys, [new_entry(CHAT, "olá")], retention_seconds=60, now_ms=1)
    await apply_writes(aredis, writes)
    waha = WahaClient(WAHA)
    config = SenderConfig(prefix=key_prefix, shards=shards, typing_delay_max_ms=0)
    sender = Sender(aredis, waha, config)

    await sender.deliver(TOKEN)

    assert texts_sent(send) == ["olá"]
    assert await aredis.llen(keys.outbox) == 0
    await waha.aclose()
