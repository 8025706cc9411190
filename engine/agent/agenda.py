"""What both brains can do with the calendar, for the conversation's own customer: find free
slots, check a proposed change, carry it out, list the customer's appointments.

The rules live here once, for the AI agent's tools (engine/agent/tools.py) and for the
scheduling menu (engine/agent/menu.py) alike: the customer always comes from the Turn; a slot
must be a real, free slot of the calendar; a booking must be the customer's own and upcoming.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from engine.agent.bookings import (
    Booking,
    BookingLimit,
    BookingNotFound,
    BookingStore,
    Change,
    Customer,
    SlotTaken,
    booking_id_for,
)
from engine.agent.calendar import Calendar, InvalidSlot, Service, Slot
from engine.agent.confirmation import PendingAction
from engine.brain import Turn


class UnknownService(ValueError):
    """A service name that is not in the calendar (the caller's mistake)."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """A checked pending action and the words to ask the customer about it."""

    action: PendingAction
    service: str
    when: str  # label of the (new) start
    old: str = ""  # label of the current start (reschedule)


class Agenda:
    def __init__(
        self,
        store: BookingStore,
        calendar: Calendar,
        *,
        language: str,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.calendar = calendar
        self.language = language
        self._clock = clock or calendar.now

    def now(self) -> datetime:
        return self._clock()

    def now_ms(self) -> int:
        return int(self.now().timestamp() * 1000)

    @staticmethod
    def customer(turn: Turn) -> Customer:
        return Customer(
            token=turn.conversation.token,
            name=turn.state.collected.get("name", ""),
            phone=turn.state.phone,
        )

    def service(self, ref: str) -> Service:
        service = self.calendar.service(ref)
        if service is None:
            raise UnknownService(ref)
        return service

    def label(self, slot: Slot) -> str:
        return self.calendar.label(slot, self.language)

    def booking_label(self, booking: Booking) -> str:
        moment = datetime.fromtimestamp(booking.start_ms / 1000, self.calendar.tz)
        return self.calendar.label(moment, self.language)

    # --- reads ----------------------------------------------------------------------------
    async def free_slots(
        self,
        service: Service,
        *,
        first_day: date | None = None,
        last_day: date | None = None,
        limit: int = 8,
        moving: Booking | None = None,
    ) -> list[Slot]:
        """The first `limit` free slots of `service` in the day range (default: the whole
        booking window), soonest first. Looks a week at a time, so a busy calendar does not
        make one call read every day of the window. `moving`: the times are for moving that
        booking (see `_free`)."""
        now = self.now()
        window_first, window_last = self.calendar.window(now)
        day = max(first_day or window_first, window_first)
        last = min(last_day or window_last, window_last)
        found: list[Slot] = []
        while day <= last and len(found) < limit:
            chunk_end = min(last, day + timedelta(days=6))
            candidates = list(self.calendar.slots(service, day, chunk_end, now))
            found += await self._free(candidates, moving)
            day = chunk_end + timedelta(days=1)
        return found[:limit]

    async def _free(self, slots: list[Slot], moving: Booking | None) -> list[Slot]:
        """The free ones among `slots`. For moving a booking, its own slots count as free (the
        reschedule frees them in the same step: a 60-minute booking at 10:00 can move to 09:30
        or 10:30), and its current start is no new time."""
        if moving is None:
            return await self.store.free(slots)
        free = await self.store.free(slots, moving=moving.id)
        return [s for s in free if s.id != moving.start]

    async def mine(self, customer: Customer) -> list[Booking]:
        return await self.store.upcoming(customer, self.now_ms())

    async def own_upcoming(self, customer: Customer, booking_id: str) -> Booking:
        """The customer's own booked, upcoming booking, or BookingNotFound (someone else's,
        cancelled or past alike)."""
        booking = await self.store.own(customer, booking_id)
        if booking.status != "booked" or booking.start_ms < self.now_ms():
            raise BookingNotFound(booking_id)
        return booking

    # --- proposals ------------------------------------------------------------------------
    async def describe(self, action: PendingAction, customer: Customer) -> Proposal | None:
        """The words of a pending action, without re-checking it (a slot taken since is
        still described: the tool call that follows says it is taken, with alternatives)."""
        try:
            if action.kind == "book":
                service = self.service(action.service)
                slot = self.calendar.slot(service, action.start, self.now())
                return Proposal(action, service.name, self.label(slot))
            booking = await self.store.own(customer, action.booking_id)
        except (UnknownService, InvalidSlot, BookingNotFound):
            return None
        if action.kind == "cancel":
            return Proposal(action, booking.service_name, self.booking_label(booking))
        try:
            slot = self.calendar.slot(self.service(booking.service_id), action.start, self.now())
        except (UnknownService, InvalidSlot):
            return None
        return Proposal(action, booking.service_name, self.label(slot), self.booking_label(booking))

    async def propose(self, action: PendingAction, customer: Customer) -> Proposal:
        """Check `action` as it would run now: InvalidSlot, UnknownService, SlotTaken,
        BookingLimit or BookingNotFound when it cannot."""
        if action.kind == "book":
            service = self.service(action.service)
            slot = self.calendar.slot(service, action.start, self.now())
            if not await self.store.free([slot]):
                raise SlotTaken(slot.id)
            active = len(await self.mine(customer))
            if active >= self.store.max_per_customer:
                raise BookingLimit(active)
            normalized = PendingAction("book", service=service.id, start=slot.id)
            return Proposal(normalized, service.name, self.label(slot))
        booking = await self.own_upcoming(customer, action.booking_id)
        if action.kind == "cancel":
            normalized = PendingAction("cancel", booking_id=booking.id)
            return Proposal(normalized, booking.service_name, self.booking_label(booking))
        service = self.service(booking.service_id)
        slot = self.calendar.slot(service, action.start, self.now())
        if slot.id == booking.start:
            raise InvalidSlot("that is already the appointment's time")
        if not await self._free([slot], booking):
            raise SlotTaken(slot.id)
        normalized = PendingAction("reschedule", start=slot.id, booking_id=booking.id)
        return Proposal(
            normalized, booking.service_name, self.label(slot), self.booking_label(booking)
        )

    async def carry_out(self, action: PendingAction, customer: Customer, message_id: str) -> Change:
        """Do a confirmed action (the same errors as `propose`, checked again atomically)."""
        if action.kind == "book":
            service = self.service(action.service)
            slot = self.calendar.slot(service, action.start, self.now())
            booking_id = booking_id_for(customer.token, message_id, slot.id)
            return await self.store.book(customer, slot, booking_id=booking_id)
        if action.kind == "cancel":
            booking = await self.store.own(customer, action.booking_id)
            if booking.status == "booked" and booking.start_ms < self.now_ms():
                raise BookingNotFound(action.booking_id)
            # Already cancelled: the same message handled again after a crash (a repeat).
            return await self.store.cancel(customer, action.booking_id)
        booking = await self.own_upcoming(customer, action.booking_id)
        slot = self.calendar.slot(self.service(booking.service_id), action.start, self.now())
        return await self.store.reschedule(customer, booking.id, slot)
