"""Reminders: each booking gets one message WSM_REMINDER_LEAD_HOURS before it starts, with the
choices 1 confirm / 2 reschedule / 3 cancel, sent exactly once.

How exactly once is kept, step by step:

1. **The timer is written with the booking.** The booking scripts (book, reschedule, cancel;
   engine/agent/bookings.py) add, move or remove the booking's entry in the reminders ZSET
   (`CalendarKeys.reminders`: booking id -> due ms) in the same atomic step that changes the
   booking, so no booking has a stale timer and no timer outlives its booking. A booking made
   inside the lead gets none (the customer has just chosen it).
2. **A due timer becomes a command of its conversation.** `Reminders.run_once` (a background
   pass of every worker process, engine/service.py, one at a time by a lock) queues
   `wsm.reminder` to the customer's conversation with the event id
   `reminder:<booking id>:<due>`. The queue's dedupe drops a repeat of that id, so a pass that
   dies between queuing and forgetting the timer (or two passes at once) queue it once. The
   timer is forgotten only if it is still the one queued (reminder_done.lua): a booking moved
   meanwhile keeps its new timer.
3. **The conversation's lease and fence do the rest.** The command is handled like a customer's
   message (engine/turn/reminder.py): under the conversation's lease, in order, and its reply
   is committed to the conversation's outbox with the command's ack in one fenced script. A
   worker killed before the commit leaves the command at the head (handled again elsewhere); a
   zombie's commit is refused by its fence. The step also checks the booking again (still
   booked, same start) and records `<booking id>:<due>` in the conversation's state, committed
   with the reply, so even a repeat outside the dedupe window sends nothing twice.
4. **The outbox's sender delivers it**, paced per WhatsApp session like every reply.

Pacing: reminders are proactive messages, the kind an unofficial WhatsApp number (WAHA drives
WhatsApp Web) is banned for when many go out at once. So on top of the sender's per-session
limit, the pass queues at most WSM_REMINDER_PACE reminders per minute per session (a token
bucket in Redis, send_rate_take.lua, burst of one, shared with the freed-slots offers:
engine/agent/proactive.py); the others wait for the next pass. Their timers stay due, at the
head of the ZSET, so the pass reads on past them (`ProactivePass.read_on`): one session's
backlog does not hold back another session's reminders.

Off: with WSM_REMINDER_LEAD_HOURS=0 the booking scripts schedule no timer, and the pass drops
the timers that come due (scheduled before the lead was set to 0) unsent; the ones not yet due
stay, and are sent at their time if the lead is set again before then.

The answer (engine/agent/menu.py, engine/agent/tools.py): the step leaves the conversation on
STEP_REMINDER with the booking in `REMINDER_KEY`; "1" confirms, "2" offers the booking's
service's free times (the reschedule, confirmed as ever), "3" asks to confirm the cancel. In
words, the AI agent answers with its tools (confirm_appointment, reschedule_appointment,
cancel_appointment). The counts (`wsm_reminders_total{event}`) take each sent reminder out of
`CalendarKeys.reminders_awaiting` once: by its answer, or as `unanswered` when the booking
starts first.
"""

from __future__ import annotations

import logging
from dataclasses import KW_ONLY, dataclass
from typing import Any

from engine import commands
from engine.agent.bookings import Booking
from engine.agent.metrics import REMINDERS
from engine.agent.proactive import ProactivePass
from engine.businesses import Business, businesses_from
from engine.commands import CommandQueue
from shared.keys import split_conversation_token
from shared.lua import LuaScript
from shared.redis_client import RedisClient
from shared.settings import Settings

log = logging.getLogger("wsm.engine.agent.reminders")

# The conversation's step after a reminder: its next message may be the answer (1, 2, 3).
STEP_REMINDER = "sched_reminder"
# Collected: the booking the latest reminder was about (cleared once answered).
REMINDER_KEY = "reminder_booking"
# Collected: the latest reminders committed to this conversation, `<booking id>:<due>`.
REMINDED_KEY = "reminders_sent"
REMINDED_KEEP = 8

# Due timers one pass queues or drops as stale, at most (the next pass goes on); it reads at
# most proactive.SCAN_LIMIT.
PASS_LIMIT = 200

DONE = LuaScript.named("reminder_done")


def reminder_event_id(booking_id: str, due: int) -> str:
    """The command's event id: one per booking and due time, so the queue keeps one."""
    return f"reminder:{booking_id}:{due}"


def reminder_mark(booking_id: str, due: int) -> str:
    return f"{booking_id}:{due}"


@dataclass(eq=False)
class Reminders(ProactivePass):
    """The reminders pass: turns due timers into `wsm.reminder` commands."""

    _: KW_ONLY
    # WSM_REMINDER_LEAD_HOURS in ms; 0: reminders off.
    lead_ms: int

    @property
    def lock(self) -> str:
        return self.keys.reminders_lock

    @classmethod
    def from_settings(
        cls, redis: RedisClient, settings: Settings, queue: CommandQueue
    ) -> Reminders:
        return cls(
            redis,
            queue,
            businesses_from(settings),
            lead_ms=settings.reminder_lead_ms,
            **cls.options(settings),
        )

    def _business(self, booking: Booking) -> Business:
        return self._businesses.get(booking.business, self._default)

    def text(self, booking: Booking) -> str:
        """The reminder, in the booking's business's words and time zone."""
        return self.render("reminder", self._business(booking), booking)

    async def run_pass(self, now: int) -> dict[str, int]:
        """Queue the due reminders (as the pace allows) and count the unanswered ones.
        -> what it did."""
        keys = self.keys
        done = {"queued": 0, "stale": 0, "paced": 0, "off": 0, "unanswered": 0}
        if self.lead_ms <= 0:
            # An operator turning reminders off expects none to go out, including the ones
            # booked while they were on. Only the due ones go: the rest are sent at their
            # time if reminders are turned on again before then.
            done["off"] = int(await self.redis.zremrangebyscore(keys.reminders, "-inf", now))
        else:
            waiting: set[str] = set()  # sessions out of pace for this pass

            async def remind(booking_id: str, due_ms: int, values: dict[Any, Any]) -> bool:
                return await self._remind_one(booking_id, due_ms, values, now, waiting, done)

            # Oldest due first, reading on past the timers of sessions out of pace.
            await self.read_on(keys.reminders, now, PASS_LIMIT, remind)
        # Reminders whose booking started with no answer.
        started: list[bytes] = await self.redis.zrangebyscore(
            keys.reminders_awaiting, "-inf", now, start=0, num=PASS_LIMIT
        )  # type: ignore[assignment]
        for member in started:
            if await self.redis.zrem(keys.reminders_awaiting, member):
                REMINDERS.labels("unanswered").inc()
                done["unanswered"] += 1
        return done

    async def _remind_one(
        self,
        booking_id: str,
        due_ms: int,
        values: dict[Any, Any],
        now: int,
        waiting: set[str],
        done: dict[str, int],
    ) -> bool:
        """Queue one due timer's reminder, or drop it as stale -> whether it was handled
        (False: its session is out of pace, the timer stays due)."""
        keys = self.keys
        booking = Booking.from_hash(values)
        if (
            booking is None
            or booking.status != "booked"
            or booking.start_ms <= now
            or booking.reminder_at not in (0, due_ms)
        ):
            # Gone, cancelled, already started (the fleet was down past it) or moved by a
            # script of an older version: nothing to remind.
            await DONE(self.redis, [keys.reminders], [booking_id, due_ms])
            done["stale"] += 1
            return True
        session, chat_id = split_conversation_token(booking.customer)
        if session in waiting or not await self.paced(session):
            waiting.add(session)
            done["paced"] += 1
            return False
        payload = {
            "booking_id": booking_id,
            "start_ms": booking.start_ms,
            "due": due_ms,
            "text": self.text(booking),
        }
        if await self.queue.send(
            session,
            chat_id,
            commands.REMINDER,
            payload,
            event_id=reminder_event_id(booking_id, due_ms),
        ):
            REMINDERS.labels("due").inc()
            done["queued"] += 1
        # Queued (now or by an earlier pass that died before this): forget the timer.
        await DONE(self.redis, [keys.reminders], [booking_id, due_ms])
        return True


__all__ = [
    "REMINDED_KEY",
    "REMINDER_KEY",
    "STEP_REMINDER",
    "Reminders",
    "reminder_event_id",
    "reminder_mark",
]
