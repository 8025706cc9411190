"""Freed slots: a booking of today cancelled ahead of its time is offered to the customers
waiting in the WhatsApp session's line, when the business turns it on (`offer_freed_slots:
true` in its business file). Each offer is sent exactly once, like a reminder.

1. **The cancel marks the slot.** `BookingStore.cancel` (engine/agent/bookings.py) adds the
   booking to `CalendarKeys.freed` when the option is on and the slot is today (business time
   zone) and still ahead. A repeated cancel (the customer's message handled again after a
   crash between the cancel script and the mark) marks it then.
2. **The pass picks who gets it.** `FreedSlots.run_once` (a background pass, one process at a
   time by a lock) reads the session's waiting lines (every team's, engine/waiting_line.py),
   front first, and queues `wsm.freed_slot` to at most OFFERS_MAX of them, skipping the
   customer who cancelled. Each offer's event id is `freed:<booking id>:<conversation>`, so the
   queue's dedupe keeps one however often a pass repeats it; who was offered is recorded in
   `CalendarKeys.freed_offers` (hashed) so a later pass never picks more than OFFERS_MAX, and
   `done` ends the slot there: once the pass is through, a new mark offers it to nobody else.
   A slot no longer bookable (taken again, inside the minimum notice, started, option turned
   off) is dropped. Offers are proactive messages: they share the reminders' pace per session
   (WSM_REMINDER_PACE, the same token bucket, engine/agent/proactive.py), so reminders and offers
   together stay under it; the rest wait for the next pass. Their slots stay marked, at the head
   of the ZSET, so the pass reads on past them (`ProactivePass.read_on`): one session's backlog
   does not hold back another session's offers.
3. **The conversation sends it once** (engine/turn/freed_slot.py): under its lease, committed
   with the command's ack, only while the customer is still in line and the slot still free;
   the offer's mark in the state refuses a repeat the dedupe window no longer catches.
4. **"1" books it** (engine/turn/freed_slot.py `answer`, from the waiting customer's turn):
   through the booking script, so of several customers answering, one gets the slot and the
   others are told it is gone (they keep their place in line).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine import commands
from engine.agent.bookings import Booking, freed_today
from engine.agent.calendar import InvalidSlot, Slot
from engine.agent.metrics import FREED_SLOTS
from engine.agent.proactive import ProactivePass
from engine.businesses import Business, businesses_from
from engine.commands import CommandQueue
from engine.waiting_line import Waiting, WaitingLine
from shared.clock import DAY_MS
from shared.keys import CalendarKeys, split_conversation_token
from shared.redis_client import RedisClient
from shared.settings import Settings
from shared.text import as_text

# Customers offered one freed slot, at most: the first in line. A few, not everyone: the
# slot is one, and every offer but the winner's ends in "someone else took it".
OFFERS_MAX = 3
# Collected: the offer a waiting customer may answer "1" to (JSON: booking, service, start).
OFFER_KEY = "freed_offer"
# Collected: the cancelled bookings whose slot this conversation was offered (a repeat).
OFFERED_KEY = "freed_offered"
OFFERED_KEEP = 8

# Marked slots one pass offers or drops, at most (the next pass goes on); it reads at most
# proactive.SCAN_LIMIT, past the slots of sessions out of pace.
PASS_LIMIT = 100
DONE = "done"


def freed_event_id(booking_id: str, token: str) -> str:
    """The command's event id: one offer per slot and customer, so the queue keeps one."""
    return f"freed:{booking_id}:{token}"


def hashed(token: str) -> str:
    """How `freed_offers` names a customer: a digest, so no record holds their number. It is a
    pseudonym all the same (hashing candidate numbers finds it): the LGPD erase removes the
    customer's field from every record (erase_calendar.lua)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass(eq=False)
class FreedSlots(ProactivePass):
    """The freed-slots pass: turns marked slots into `wsm.freed_slot` commands."""

    line: WaitingLine

    @property
    def lock(self) -> str:
        return self.keys.freed_lock

    @classmethod
    def from_settings(
        cls, redis: RedisClient, settings: Settings, queue: CommandQueue, line: WaitingLine
    ) -> FreedSlots:
        return cls(redis, queue, businesses_from(settings), line, **cls.options(settings))

    def text(self, business: Business, booking: Booking) -> str:
        return self.render("freed_slot_offer", business, booking)

    def _slot(self, business: Business, booking: Booking, now: int) -> Slot | None:
        """The booking's slot if anyone could still book it now by the calendar's rules (today,
        ahead by the notice), whether or not someone holds it; else None."""
        calendar = business.calendar
        service = calendar.service(booking.service_id)
        if service is None or not freed_today(calendar, booking, now):
            return None
        try:
            return calendar.slot(
                service, booking.start, datetime.fromtimestamp(now / 1000, calendar.tz)
            )
        except InvalidSlot:
            return None

    async def _free(self, business: Business, slot: Slot) -> bool:
        """Nobody holds any of the slot's steps."""
        day = CalendarKeys(self.prefix, business.id).day(slot.day)
        return not any(await self.redis.hmget(day, list(slot.steps)))

    async def run_pass(self, now: int) -> dict[str, int]:
        """Offer the marked slots to the front of their session's line (as the pace allows).
        -> what it did."""
        done = {"queued": 0, "dropped": 0, "paced": 0}
        out_of_pace: set[str] = set()
        lines: dict[str, list[Waiting]] = {}  # each session's line, read once a pass

        async def offer(booking_id: str, _freed_at: int, values: dict[Any, Any]) -> bool:
            return await self._offer(booking_id, values, now, out_of_pace, lines, done)

        # Marked first, first offered, reading on past the slots of sessions out of pace.
        await self.read_on(self.keys.freed, "+inf", PASS_LIMIT, offer)
        return done

    async def _offer(
        self,
        booking_id: str,
        values: dict[Any, Any],
        now: int,
        out_of_pace: set[str],
        lines: dict[str, list[Waiting]],
        done: dict[str, int],
    ) -> bool:
        """Offer one marked slot to the front of its session's line, or drop it -> whether
        its mark is gone (False: its session is out of pace, the rest at a later pass)."""
        keys = self.keys
        record = keys.freed_offers(booking_id)
        booking = Booking.from_hash(values)
        business = self._businesses.get(booking.business) if booking else None
        slot = None
        if (
            booking is not None
            and business is not None
            and booking.status == "cancelled"
            and business.calendar.offer_freed_slots
        ):
            slot = self._slot(business, booking, now)
        if booking is None or business is None or slot is None:
            # Gone (erased), booked again, option off, or no longer a slot anyone could take
            # (started, inside the notice): nothing (more) to offer.
            return await self._drop(booking_id, done)
        session, _ = split_conversation_token(booking.customer)
        if session in out_of_pace:
            # Nothing more goes to this session in this pass: read no further for this slot
            # (who was offered, who holds it, the line), so a long backlog costs little.
            done["paced"] += 1
            return False
        offered = {as_text(k) for k in await self.redis.hkeys(record)}
        if DONE in offered or not await self._free(business, slot):
            # Offered already, or taken again.
            return await self._drop(booking_id, done)
        if session not in lines:
            lines[session] = sorted(await self.line.members(session), key=lambda w: w.entered_at)
        waiting = [w for w in lines[session] if w.token != booking.customer]
        for customer in waiting:
            if len(offered) >= OFFERS_MAX:
                break
            mark = hashed(customer.token)
            if mark in offered:
                continue
            if session in out_of_pace or not await self.paced(session):
                out_of_pace.add(session)
                done["paced"] += 1
                return False  # the rest at a later pass: the slot stays marked
            payload = {
                "booking_id": booking_id,
                "start_ms": booking.start_ms,
                "text": self.text(business, booking),
            }
            _, chat_id = split_conversation_token(customer.token)
            if await self.queue.send(
                session,
                chat_id,
                commands.FREED_SLOT,
                payload,
                event_id=freed_event_id(booking_id, customer.token),
            ):
                FREED_SLOTS.labels("queued").inc()
                done["queued"] += 1
            # Queued (now or by a pass that died before recording it): recorded.
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(record, mark, now)
            pipe.pexpireat(record, booking.start_ms + DAY_MS)
            await pipe.execute()
            offered.add(mark)
        # Whoever was in line has it (at most OFFERS_MAX): the slot is done with, and a later
        # mark (a repeated cancel) offers it to nobody else.
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(record, DONE, now)
        pipe.pexpireat(record, booking.start_ms + DAY_MS)
        pipe.zrem(keys.freed, booking_id)
        await pipe.execute()
        return True

    async def _drop(self, booking_id: str, done: dict[str, int]) -> bool:
        await self.redis.zrem(self.keys.freed, booking_id)
        done["dropped"] += 1
        return True


__all__ = [
    "OFFERED_KEY",
    "OFFERS_MAX",
    "OFFER_KEY",
    "FreedSlots",
    "freed_event_id",
    "hashed",
]
