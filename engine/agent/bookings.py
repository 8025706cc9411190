"""Bookings in Redis: book, move and cancel atomically, for one customer at a time.

Every change is one Lua script (shared/scripts/booking_*.lua) that checks and writes the
slot's day, the booking, the customer's index and the webhook event together, so:

- two customers booking the same slot at the same moment: exactly one gets it, the other
  gets SlotTaken (and is offered another slot by whoever called);
- a booking can only be seen, moved or cancelled by its own customer: the scripts compare the
  booking's customer with the caller's, and "someone else's" is answered exactly like "does
  not exist" (BookingNotFound), so nothing leaks about other customers;
- a change repeated after a crash (the same message handled again) is recognised and changes
  nothing twice: booking ids derive from (customer, message, slot) and each script answers
  "exists" for its own repeat;
- the outgoing webhook event is queued in the same step (engine/agent/booking_webhook.py
  delivers it), so no booking goes unannounced and no announced booking is missing.

The customer is the conversation's token (`session|chat id`): it comes from the engine's Turn,
never from a model's arguments.

Exceptions (all terminal for the request as asked; the caller offers something else):

    BookingError
    ├── SlotTaken          the slot is someone else's now
    ├── BookingLimit       the customer already holds WSM_MAX_BOOKINGS_PER_CUSTOMER
    ├── BookingNotFound    no such booking of this customer (absent, cancelled, not theirs)
    └── BookingChanged     it changed while we looked (moved elsewhere meanwhile)
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from engine.agent.calendar import Calendar, Slot
from engine.agent.metrics import REMINDERS
from shared.clock import now_ms
from shared.keys import CalendarKeys, split_conversation_token
from shared.lua import LuaScript
from shared.redis_client import RedisClient
from shared.text import as_text

BOOK = LuaScript.named("booking_book")
RESCHEDULE = LuaScript.named("booking_reschedule")
CANCEL = LuaScript.named("booking_cancel")

EVENT_BOOKED = "booking.booked"
EVENT_RESCHEDULED = "booking.rescheduled"
EVENT_CANCELLED = "booking.cancelled"


class BookingError(Exception):
    """A booking request that cannot be done as asked."""


class SlotTaken(BookingError):
    pass


class BookingLimit(BookingError):
    def __init__(self, active: int) -> None:
        super().__init__(f"customer already holds {active} upcoming bookings")
        self.active = active


class BookingNotFound(BookingError):
    pass


class BookingChanged(BookingError):
    pass


@dataclass(frozen=True, slots=True)
class Customer:
    """Who the bookings are for: always the conversation's own customer."""

    token: str  # conversation token `session|chat id`
    name: str = ""
    phone: str = ""


@dataclass(frozen=True, slots=True)
class Booking:
    id: str
    customer: str
    service_id: str
    service_name: str
    start: str  # slot id, local `YYYY-MM-DDTHH:MM`
    start_ms: int
    day: str
    steps: tuple[str, ...]
    status: str
    name: str = ""
    phone: str = ""
    created_at: int = 0
    updated_at: int = 0
    business: str = ""  # whose slots it holds ("" the default business)
    reminder_at: int = 0  # when its reminder is due (ms); 0: none (engine/agent/reminders.py)
    confirmed_at: int = 0  # when the customer confirmed it, answering the reminder

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> Booking | None:
        values = {as_text(k): as_text(v) for k, v in raw.items()}
        if not values.get("id"):
            return None
        return cls(
            id=values["id"],
            customer=values.get("customer", ""),
            service_id=values.get("service", ""),
            service_name=values.get("service_name", ""),
            start=values.get("start", ""),
            start_ms=int(values.get("start_ms", "0") or 0),
            day=values.get("day", ""),
            steps=tuple(s for s in values.get("steps", "").split(",") if s),
            status=values.get("status", ""),
            name=values.get("name", ""),
            phone=values.get("phone", ""),
            created_at=int(values.get("created_at", "0") or 0),
            updated_at=int(values.get("updated_at", "0") or 0),
            business=values.get("business", ""),
            reminder_at=int(values.get("reminder_at", "0") or 0),
            confirmed_at=int(values.get("confirmed_at", "0") or 0),
        )


@dataclass(frozen=True, slots=True)
class Change:
    """What a book / reschedule / cancel did (`repeated`: it had been done already)."""

    event: str
    booking: Booking
    repeated: bool = False
    previous_start: str = ""


def booking_id_for(customer: str, message_id: str, slot_id: str) -> str:
    """Stable per (customer, message, slot): the same message handled twice books once."""
    digest = hashlib.sha256(f"{customer}\n{message_id}\n{slot_id}".encode()).hexdigest()
    return "bk" + digest[:12]


class BookingStore:
    def __init__(
        self,
        redis: RedisClient,
        calendar: Calendar,
        *,
        prefix: str,
        max_per_customer: int,
        retention_seconds: int,
        webhook_enabled: bool,
        on_event: Callable[[], None] | None = None,
        business: str = "",
        reminder_lead_ms: int = 0,
    ) -> None:
        self._redis = redis
        # How long before its start a booking's reminder is due (WSM_REMINDER_LEAD_HOURS);
        # 0: no reminders.
        self.reminder_lead_ms = reminder_lead_ms
        # Called after a change queued a webhook event (wakes the deliverer in this process).
        self.on_event = on_event
        self.calendar = calendar
        self.keys = CalendarKeys(prefix, business)
        self.max_per_customer = max_per_customer
        self.retention_seconds = retention_seconds
        self.webhook_enabled = webhook_enabled

    # --- reads ----------------------------------------------------------------------------
    async def free(self, slots: Sequence[Slot], *, moving: str = "") -> list[Slot]:
        """The slots among `slots` nobody holds, in the order given. `moving`: the id of a
        booking being moved, whose own slots count as free, as booking_reschedule.lua counts
        them (it frees them in the step that takes the new ones): a booking can move onto a
        time that overlaps its current one, never onto another booking's."""
        by_day: dict[str, list[Slot]] = {}
        for slot in slots:
            by_day.setdefault(slot.day, []).append(slot)
        pipe = self._redis.pipeline(transaction=False)
        days = list(by_day)
        for day in days:
            steps = sorted({step for slot in by_day[day] for step in slot.steps})
            pipe.hmget(self.keys.day(day), steps)
        answers = await pipe.execute() if days else []
        taken: set[tuple[str, str]] = set()
        for day, values in zip(days, answers, strict=True):
            steps = sorted({step for slot in by_day[day] for step in slot.steps})
            taken.update(
                (day, step)
                for step, holder in zip(steps, values, strict=True)
                if holder and as_text(holder) != moving
            )
        return [s for s in slots if not any((s.day, step) in taken for step in s.steps)]

    async def _load(self, booking_id: str) -> Booking | None:
        return Booking.from_hash(await self._redis.hgetall(self.keys.booking(booking_id)))

    async def own(self, customer: Customer, booking_id: str) -> Booking:
        """The customer's booking (booked or cancelled), or BookingNotFound; someone else's
        booking is not found either."""
        booking = await self._load(booking_id) if _plausible_id(booking_id) else None
        if booking is None or booking.customer != customer.token:
            raise BookingNotFound(booking_id)
        return booking

    async def upcoming(self, customer: Customer, at_ms: int | None = None) -> list[Booking]:
        """The customer's booked appointments from now on, soonest first."""
        since = now_ms() if at_ms is None else at_ms
        ids = await self._redis.zrangebyscore(self.keys.customer(customer.token), since, "+inf")
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hgetall(self.keys.booking(as_text(raw)))
        found = [Booking.from_hash(raw) for raw in await pipe.execute()]
        return [b for b in found if b and b.customer == customer.token and b.status == "booked"]

    # --- changes --------------------------------------------------------------------------
    def reminder_due(self, start_ms: int, now: int) -> int:
        """When a booking starting at `start_ms` gets its reminder; 0 for none (reminders off,
        or the booking is made inside the lead: the customer has just chosen it)."""
        if self.reminder_lead_ms <= 0:
            return 0
        due = start_ms - self.reminder_lead_ms
        return due if due > now else 0

    def _expire_at(self, slot_start: datetime) -> int:
        return int((slot_start + timedelta(days=1)).timestamp()) + self.retention_seconds

    def _hook(self, change: Change, customer: Customer) -> tuple[str, str]:
        if not self.webhook_enabled:
            return "", ""
        event_id = "evt_" + uuid.uuid4().hex
        return event_id, orjson.dumps(self.event_body(event_id, change, customer)).decode()

    def event_body(self, event_id: str, change: Change, customer: Customer) -> dict[str, Any]:
        booking = change.booking
        session, chat_id = split_conversation_token(booking.customer)
        start = datetime.fromtimestamp(booking.start_ms / 1000, self.calendar.tz)
        service = self.calendar.service(booking.service_id)
        minutes = service.minutes if service else self.calendar.slot_minutes * len(booking.steps)
        body: dict[str, Any] = {
            "id": event_id,
            "event": change.event,
            "occurred_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "booking": {
                "id": booking.id,
                "status": "cancelled" if change.event == EVENT_CANCELLED else "booked",
                "service": {"id": booking.service_id, "name": booking.service_name},
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=minutes)).isoformat(),
                "timezone": self.calendar.timezone,
            },
            "customer": {
                "session": session,
                "chat_id": chat_id,
                "name": customer.name or booking.name,
                "phone": customer.phone or booking.phone,
            },
        }
        if change.previous_start:
            previous = datetime.strptime(change.previous_start, "%Y-%m-%dT%H:%M")
            body["previous_start"] = previous.replace(tzinfo=self.calendar.tz).isoformat()
        return body

    async def book(self, customer: Customer, slot: Slot, *, booking_id: str) -> Change:
        at = now_ms()
        booking = Booking(
            id=booking_id, customer=customer.token, service_id=slot.service.id,
            service_name=slot.service.name, start=slot.id, start_ms=slot.start_ms, day=slot.day,
            steps=slot.steps, status="booked", name=customer.name, phone=customer.phone,
            created_at=at, updated_at=at,
        )  # fmt: skip
        change = Change(EVENT_BOOKED, booking)
        hook_id, hook_body = self._hook(change, customer)
        fields: dict[str, str | int] = {
            "id": booking.id, "customer": booking.customer, "service": booking.service_id,
            "service_name": booking.service_name, "start": booking.start,
            "start_ms": booking.start_ms, "day": booking.day, "steps": ",".join(booking.steps),
            "status": "booked", "name": booking.name, "phone": booking.phone,
            "created_at": at, "updated_at": at, "business": self.keys.business,
            # Read by the script, which schedules the reminder in the same step.
            "reminder_at": self.reminder_due(slot.start_ms, at),
        }  # fmt: skip
        flat: list[str | int] = []
        for name, value in fields.items():
            flat += [name, value]
        answer = await BOOK(
            self._redis,
            [
                self.keys.day(slot.day), self.keys.booking(booking_id),
                self.keys.customer(customer.token), self.keys.customer_all(customer.token),
                self.keys.hooks_due, self.keys.hooks_body, self.keys.reminders,
            ],
            [
                booking_id, at, slot.start_ms, self.max_per_customer,
                self._expire_at(slot.start), at - self.retention_seconds * 1000,
                hook_id, hook_body, len(slot.steps), *slot.steps, *flat,
            ],
        )  # fmt: skip
        outcome = as_text(answer[0])
        if outcome == "taken":
            raise SlotTaken(slot.id)
        if outcome == "limit":
            raise BookingLimit(int(answer[1]))
        if outcome == "exists":
            stored = await self._load(booking_id)
            return Change(EVENT_BOOKED, stored or booking, repeated=True)
        self._queued(hook_id)
        return change

    async def reschedule(self, customer: Customer, booking_id: str, slot: Slot) -> Change:
        current = await self.own(customer, booking_id)
        if current.status != "booked":
            raise BookingNotFound(booking_id)
        at = now_ms()
        moved = Booking(
            id=current.id, customer=current.customer, service_id=current.service_id,
            service_name=current.service_name, start=slot.id, start_ms=slot.start_ms,
            day=slot.day, steps=slot.steps, status="booked", name=current.name,
            phone=current.phone, created_at=current.created_at, updated_at=at,
        )  # fmt: skip
        change = Change(EVENT_RESCHEDULED, moved, previous_start=current.start)
        hook_id, hook_body = self._hook(change, customer)
        answer = await RESCHEDULE(
            self._redis,
            [
                self.keys.day(current.day), self.keys.day(slot.day),
                self.keys.booking(booking_id), self.keys.customer(customer.token),
                self.keys.customer_all(customer.token), self.keys.hooks_due,
                self.keys.hooks_body, self.keys.reminders,
            ],
            [
                booking_id, customer.token, current.start, slot.id, slot.start_ms, at,
                self._expire_at(slot.start), hook_id, hook_body, slot.day,
                len(current.steps), *current.steps, len(slot.steps), *slot.steps,
                self.reminder_due(slot.start_ms, at),
            ],
        )  # fmt: skip
        outcome = as_text(answer[0])
        if outcome == "taken":
            raise SlotTaken(slot.id)
        if outcome == "not_found":
            raise BookingNotFound(booking_id)
        if outcome == "changed":
            raise BookingChanged(booking_id)
        if outcome == "exists":
            return Change(EVENT_RESCHEDULED, current, repeated=True)
        self._queued(hook_id)
        await self._reminder_answered(booking_id, "rescheduled")
        return change

    async def cancel(self, customer: Customer, booking_id: str) -> Change:
        current = await self.own(customer, booking_id)
        change = Change(EVENT_CANCELLED, current)
        if current.status == "cancelled":
            await self._slot_freed(current)
            return Change(EVENT_CANCELLED, current, repeated=True)
        hook_id, hook_body = self._hook(change, customer)
        answer = await CANCEL(
            self._redis,
            [
                self.keys.day(current.day), self.keys.booking(booking_id),
                self.keys.customer(customer.token), self.keys.hooks_due, self.keys.hooks_body,
                self.keys.reminders,
            ],
            [booking_id, customer.token, now_ms(), hook_id, hook_body],
        )  # fmt: skip
        outcome = as_text(answer[0])
        if outcome == "not_found":
            raise BookingNotFound(booking_id)
        if outcome == "cancelled":
            self._queued(hook_id)
            await self._reminder_answered(booking_id, "cancelled")
        if outcome in ("cancelled", "exists"):
            await self._slot_freed(current)
        return Change(EVENT_CANCELLED, current, repeated=outcome == "exists")

    async def _slot_freed(self, booking: Booking) -> None:
        """`offer_freed_slots`: a cancelled slot of today, still ahead, is marked for the
        freed-slots pass (engine/agent/freed_slots.py), which offers it to the waiting line.
        Marked on a repeated cancel too: a worker killed between the cancel script and this
        mark handles the message again, and marks it then (the pass offers a slot once however
        often it is marked)."""
        if self.calendar.offer_freed_slots and freed_today(self.calendar, booking, now_ms()):
            await self._redis.zadd(self.keys.freed, {booking.id: now_ms()}, nx=True)

    async def confirm(self, customer: Customer, booking_id: str) -> Booking:
        """The customer confirms they will come (their answer to the reminder). Changes no slot,
        so it needs no confirmation of its own; repeating it changes nothing.
        BookingNotFound unless it is the customer's own upcoming booking."""
        booking = await self.own(customer, booking_id)
        if booking.status != "booked" or booking.start_ms <= now_ms():
            raise BookingNotFound(booking_id)
        await self._redis.hsetnx(self.keys.booking(booking_id), "confirmed_at", now_ms())
        await self._reminder_answered(booking_id, "confirmed")
        return booking

    async def _reminder_answered(self, booking_id: str, outcome: str) -> None:
        # Counted once per reminder: whoever takes it out of the awaiting set (the answer, by
        # any path: the menu, the agent, the operator API; or the pass, as unanswered).
        if await self._redis.zrem(self.keys.reminders_awaiting, booking_id):
            REMINDERS.labels(outcome).inc()

    def _queued(self, hook_id: str) -> None:
        if hook_id and self.on_event is not None:
            self.on_event()

    async def erase_customer(self, customer_token: str) -> int:
        """LGPD erase: forget every booking this customer ever made (upcoming ones free their
        slots, cancelled ones their mark for the freed-slots pass and its record of offers:
        both named after the booking) and their webhook events not yet delivered. Returns how
        many bookings went."""
        everything = self.keys.customer_all(customer_token)
        ids = [as_text(raw) for raw in await self._redis.zrange(everything, 0, -1)]
        removed = 0
        for booking_id in ids:
            booking = await self._load(booking_id)
            if booking is None or booking.customer != customer_token:
                continue
            # Any business's booking: its own slots (the erase uses the default business's store).
            day_key = CalendarKeys(self.keys.prefix, booking.business).day(booking.day)
            holders = await self._redis.hmget(day_key, list(booking.steps)) if booking.steps else []
            pipe = self._redis.pipeline(transaction=True)
            for step, holder in zip(booking.steps, holders, strict=True):
                if holder is not None and as_text(holder) == booking_id:
                    pipe.hdel(day_key, step)
            pipe.delete(self.keys.booking(booking_id))
            pipe.zrem(self.keys.reminders, booking_id)
            pipe.zrem(self.keys.reminders_awaiting, booking_id)
            pipe.zrem(self.keys.freed, booking_id)
            pipe.delete(self.keys.freed_offers(booking_id))
            await pipe.execute()
            removed += 1
        await self._redis.delete(self.keys.customer(customer_token), everything)
        # Events not yet delivered carry the customer's name and number: drop them too.
        session, chat_id = split_conversation_token(customer_token)
        for event_id, body in (await self._redis.hgetall(self.keys.hooks_body)).items():
            customer = orjson.loads(body).get("customer") or {}
            if customer.get("session") == session and customer.get("chat_id") == chat_id:
                pipe = self._redis.pipeline(transaction=True)
                pipe.zrem(self.keys.hooks_due, event_id)
                pipe.hdel(self.keys.hooks_body, event_id)
                pipe.hdel(self.keys.hooks_attempts, event_id)
                await pipe.execute()
        return removed


def freed_today(calendar: Calendar, booking: Booking, at_ms: int) -> bool:
    """Whether a cancelled booking's slot may go to the waiting line: it is today (in the
    business's time zone) and has not started (engine/agent/freed_slots.py)."""
    today = datetime.fromtimestamp(at_ms / 1000, calendar.tz).strftime("%Y-%m-%d")
    return booking.day == today and booking.start_ms > at_ms


def _plausible_id(booking_id: str) -> bool:
    # Booking ids are ours ("bk" + hex): anything else a model invents is not looked up.
    return booking_id.startswith("bk") and booking_id[2:].isalnum() and len(booking_id) <= 40
