"""The delivery lock's keeper and the settlement of a send by its echo, against a real Redis:
tests written to kill the mutants of `LockKeeper.renew` and `Sender.settle_echo` that survived
the mutation run (docs/testing.md, "Mutation testing", lists each and the mutant it kills).

Each asserts a behaviour: whose lock is extended, and which echo may record which reply. A
rejection also checks that nothing was written (the outbox, `ours:<id>` and the history)."""

from __future__ import annotations

import pytest

from engine.outbox import OutboxEntry
from engine.sender import InflightSend, LockKeeper
from engine.waha_client import SentMessage
from shared.keys import WahaSessionKeys, engine_keys_for
from tests.engine.support import CHAT, commit_replies, make_sender
from tests.support.polling import async_wait_until

TOKEN = f"default|{CHAT}"
SHORT_ID = f"3EB0{7:016X}"
ECHO = SentMessage(f"true_{CHAT}_{SHORT_ID}")
# Odd, so half of it is not a round number (the edge below is `echo_wait_ms // 2`).
ECHO_WAIT_MS = 60_001

# --- LockKeeper.renew ------------------------------------------------------------------------


async def test_renewing_extends_our_own_lock_to_its_full_lifetime(aredis, key_prefix) -> None:
    """Kills, in renew: the renewal skipped (`not self.lost` -> `self.lost`, `and` -> `or`),
    the script's answer inverted (`not await` -> `await`), `lost` not kept False, the answer
    `not self.lost` -> `self.lost`, and the key, token or lifetime not passed to the script."""
    key = f"{key_prefix}:sending"
    await aredis.set(key, "mine", px=1000)
    keeper = LockKeeper(aredis, key, "mine", lock_ms=60_000)

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
    key = f"{key_prefix}:sending"
    await aredis.set(key, "someone-else", px=1000)
    keeper = LockKeeper(aredis, key, "mine", lock_ms=60_000)

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
