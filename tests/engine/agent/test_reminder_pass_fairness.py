"""The reminders pass against a backlog and with reminders turned off, through the real engine
(queue, fenced commit, outbox, sender) and a real Redis.

- One WhatsApp session's backlog of due reminders (held back by its pace) does not hold back
  another session's: the pass reads on past the paced timers, each reminder still goes out once
  and the pace per session still holds. A backlog longer than one pass reads is read in turns.
- WSM_REMINDER_LEAD_HOURS=0 sends nothing, not even the timers scheduled before it was set;
  the ones not yet due are sent at their time if the lead is set again before then."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from engine.agent import proactive
from shared.clock import DAY_MS
from shared.keys import CalendarKeys
from tests.engine.agent.support import book, clock, ms  # noqa: F401
from tests.engine.harness import AgentHarness

ANA = "5511987650001@c.us"
OTHER = "5521999999999@c.us"


@pytest.fixture
def keys(key_prefix: str) -> CalendarKeys:
    return CalendarKeys(key_prefix)


def booking_hash(booking_id: str, customer: str, reminder_at: int, start_ms: int) -> dict:
    """A booked Consulta's hash as the booking scripts write it, with its reminder's due time
    (only what the pass reads is meaningful)."""
    return {
        "id": booking_id,
        "customer": customer,
        "service": "consulta",
        "service_name": "Consulta",
        "start": "x",
        "start_ms": start_ms,
        "day": "d",
        "steps": "09:00",
        "status": "booked",
        "reminder_at": reminder_at,
    }


async def backlog(
    aredis: Any, keys: CalendarKeys, due: int, count: int, session: str = "default"
) -> list[str]:
    """`count` bookings of different chats of `session`, their reminders due one ms apart from
    `due` on (written as the booking script writes them) -> their ids, oldest due first."""
    pipe = aredis.pipeline(transaction=False)
    ids = []
    for i in range(count):
        booking_id = f"bk{session[:4]}{i:08x}"
        ids.append(booking_id)
        at = due + i
        pipe.hset(
            keys.booking(booking_id),
            mapping=booking_hash(booking_id, f"{session}|55119{i:08d}@c.us", at, due + DAY_MS),
        )
        pipe.zadd(keys.reminders, {booking_id: at})
    await pipe.execute()
    return ids


async def other_session_booking(aredis: Any, keys: CalendarKeys, due: int) -> str:
    """One booking of the session `other`, its reminder due at `due` (after the backlog's)."""
    booking_id = "bkotherffffff"
    await aredis.hset(
        keys.booking(booking_id),
        mapping=booking_hash(booking_id, f"other|{OTHER}", due, due + DAY_MS),
    )
    await aredis.zadd(keys.reminders, {booking_id: due})
    return booking_id


async def run(agent: AgentHarness) -> dict[str, int]:
    return await agent.service.reminders.run_once(force=True)


async def test_a_sessions_backlog_does_not_hold_back_another_sessions_reminder(
    harness, waha, aredis, keys, now, move_clock
) -> None:
    """250 due in `default` (more than a pass handles), over its pace of 4 a minute: the one
    reminder of `other`, due after all of them, goes out at the first pass, once."""
    agent = harness(groq_api_key=None)  # the default pace: 4 a minute per session
    due = ms(now) + 2 * DAY_MS
    held = await backlog(aredis, keys, due - 60_000, 250)
    other = await other_session_booking(aredis, keys, due)
    move_clock(due)

    done = await run(agent)
    # One of `default` (its pace's burst of one) and `other`'s; the rest wait their turn.
    assert (done["queued"], done["paced"]) == (2, 249)
    assert await aredis.zscore(keys.reminders, other) is None
    assert await aredis.zscore(keys.reminders, held[0]) is None
    assert await aredis.zcard(keys.reminders) == 249
    # Further passes within the pace queue nothing more, of either session.
    for _ in range(3):
        assert (await run(agent))["queued"] == 0
    await agent.drain()
    assert len(waha.to(OTHER)) == 1
    assert len(waha.to(f"55119{0:08d}@c.us")) == 1
    assert len(waha.sent) == 2


async def test_a_backlog_longer_than_a_pass_reads_is_read_in_turns(
    harness, waha, aredis, keys, now, move_clock, monkeypatch
) -> None:
    """With more paced timers due than one pass reads, the next pass reads on from where the
    last stopped, so a reminder behind them is reached, and sent once."""
    monkeypatch.setattr(proactive, "SCAN_LIMIT", 20)
    monkeypatch.setattr(proactive, "PAGE", 6)
    agent = harness(groq_api_key=None)
    due = ms(now) + 2 * DAY_MS
    await backlog(aredis, keys, due - 60_000, 30)
    other = await other_session_booking(aredis, keys, due)
    move_clock(due)

    first = await run(agent)
    assert (first["queued"], first["paced"]) == (1, 19)
    assert await aredis.zscore(keys.reminders, other) is not None
    second = await run(agent)
    assert second["queued"] == 1
    assert await aredis.zscore(keys.reminders, other) is None
    # Past the end: back to the head, where nothing is sendable yet either.
    assert (await run(agent))["queued"] == 0
    await agent.drain()
    assert waha.to(OTHER) and len(waha.to(OTHER)) == 1
    assert len(waha.sent) == 2


async def test_no_reminders_with_the_lead_at_0_even_scheduled_ones(
    harness, waha, aredis, keys, now, move_clock
) -> None:
    before = harness(groq_api_key=None)  # the lead at 24 hours
    start = now + timedelta(days=2, hours=1)
    booking_id = await book(before, ANA, start)
    later = now + timedelta(days=4, hours=1)
    kept = await book(before, "5511987650002@c.us", later)
    off = harness(groq_api_key=None, reminder_lead_hours=0)  # the operator turns them off

    move_clock(ms(start) - DAY_MS)
    done = await run(off)
    await off.drain()
    assert (done["queued"], done["off"]) == (0, 1)
    assert waha.sent == []
    assert await aredis.zscore(keys.reminders, booking_id) is None
    # Not due yet: kept. Turned on again before its time, it goes out then.
    assert await aredis.zscore(keys.reminders, kept) == ms(later) - DAY_MS
    on = harness(groq_api_key=None)
    move_clock(ms(later) - DAY_MS)
    assert (await run(on))["queued"] == 1
    await on.drain()
    assert len(waha.to("5511987650002@c.us")) == 1
    assert waha.to(ANA) == []


async def test_with_the_lead_at_0_started_reminders_are_still_counted(
    harness, waha, aredis, keys, now, move_clock: Callable[[int], None]
) -> None:
    """Turning reminders off stops sending, not the counts of the ones already sent."""
    agent = harness(groq_api_key=None)
    start: datetime = now + timedelta(days=2)
    await book(agent, ANA, start)
    move_clock(ms(start) - DAY_MS)
    assert (await run(agent))["queued"] == 1
    await agent.drain()
    assert await aredis.zcard(keys.reminders_awaiting) == 1
    off = harness(groq_api_key=None, reminder_lead_hours=0)
    move_clock(ms(start) + 1)
    assert (await run(off))["unanswered"] == 1
