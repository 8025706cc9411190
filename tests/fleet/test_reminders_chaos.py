"""A booking's reminder on the real fleet, with real crashes: the worker is
`python -m worker --handler engine.agent.service:create`, WAHA is the simulator, Redis runs
with its append-only file (appendfsync always). The booking is made two days ahead by the
booking script itself, with a lead that puts its reminder a few seconds from now (real
processes run on the real clock). Whatever is killed or restarted around the due moment, the
customer gets exactly one reminder: counted at the simulator, after the fleet is quiet."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta

import pytest
import redis.asyncio as aioredis

from engine.agent.bookings import BookingStore, Customer, booking_id_for
from engine.agent.calendar import Calendar, Slot, default_calendar
from shared.keys import CalendarKeys
from tests.fleet.conftest import (
    ECHO_WAIT_SECONDS,
    FLEET_OPTIONS,
    FLEET_SETTINGS,
    SEND_LOCK_SECONDS,
    SESSION,
    Fleet,
)
from tests.support.polling import async_wait_until, wait_until
from tests.support.product import started_product
from wsm.load.product import KEY_PREFIX, ProductStack

pytestmark = pytest.mark.slow

# How far ahead of "now" the reminder is due: time to get into position before it.
DUE_IN_MS = 4000


@pytest.fixture(scope="module")
def fleet_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductStack]:
    """The fleet of tests/fleet/conftest.py, with reminders unpaced (each test's one reminder
    must not wait for the previous test's in the session's pace)."""
    options = {**FLEET_OPTIONS, "env": {**FLEET_SETTINGS, "WSM_REMINDER_PACE": "0"}}
    with started_product(tmp_path_factory.mktemp("fleet-reminders"), **options) as product:
        yield product


@pytest.fixture
async def calendar_redis(fleet_stack: ProductStack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(fleet_stack.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def two_days_ahead(store: BookingStore, calendar: Calendar) -> Slot:
    """The first free slot at least two days ahead (each test of the module takes one)."""
    service = calendar.services[0]
    now = datetime.now(calendar.tz)
    first = (now + timedelta(days=2)).date()
    later = [
        slot
        for slot in calendar.slots(service, first, first + timedelta(days=7), now)
        if slot.start >= now + timedelta(days=2)
    ]
    free = await store.free(later)
    assert free, "no free slot two days ahead"
    return free[0]


async def book_due_soon(client: aioredis.Redis, phone: str) -> tuple[str, int]:
    """A booking two days ahead whose reminder is due DUE_IN_MS from now -> (id, due ms)."""
    calendar = default_calendar("Clínica Sorriso", ["Consulta"])

    def store_with_lead(lead_ms: int) -> BookingStore:
        return BookingStore(
            client,
            calendar,
            prefix=KEY_PREFIX,
            max_per_customer=3,
            retention_seconds=3600,
            webhook_enabled=False,
            reminder_lead_ms=lead_ms,
        )

    slot = await two_days_ahead(store_with_lead(0), calendar)
    due = int(time.time() * 1000) + DUE_IN_MS
    store = store_with_lead(slot.start_ms - due)
    customer = Customer(token=f"{SESSION}|{phone}@c.us", name="Ana")
    booking_id = booking_id_for(customer.token, f"m-{phone}", slot.id)
    await store.book(customer, slot, booking_id=booking_id)
    assert await client.zscore(CalendarKeys(KEY_PREFIX).reminders, booking_id) == due
    return booking_id, due


def timer_gone(fleet: Fleet, booking_id: str) -> bool:
    return fleet.redis.zscore(CalendarKeys(KEY_PREFIX).reminders, booking_id) is None


async def exactly_one_reminder(fleet: Fleet, phone: str) -> None:
    # A kill that lands between the reminder's send_begin and WAHA's answer leaves an attempt
    # whose outcome is unknown: the reply then waits out the echo wait (seen on a loaded CI).
    [reminder] = await fleet.wait_replies(
        phone, 1, timeout=max(SEND_LOCK_SECONDS, ECHO_WAIT_SECONDS) + 30
    )
    assert reminder["text"].startswith("Olá! Lembrete da *")
    assert "*Consulta* em *" in reminder["text"]
    fleet.wait_worker_processes()
    # Past the sender's lock and the echo wait: a reminder still in an outbox would go now.
    wait_until(lambda: not fleet.delivery_lock_held(phone), timeout=SEND_LOCK_SECONDS + 10)
    await fleet.quiet()
    assert len(await fleet.replies(phone)) == 1


async def test_sigkill_just_before_the_due_moment(fleet: Fleet, calendar_redis) -> None:
    phone = fleet.new_phone()
    booking_id, due = await book_due_soon(calendar_redis, phone)
    await asyncio.sleep(max(0.0, (due - 300) / 1000 - time.time()))
    [victim] = fleet.worker_processes()
    os.kill(victim, signal.SIGKILL)
    await exactly_one_reminder(fleet, phone)
    assert timer_gone(fleet, booking_id)


async def test_sigkill_as_the_reminder_is_queued(fleet: Fleet, calendar_redis) -> None:
    """Killed the moment the pass took the timer: its command may be queued, leased, or
    committed with its reply not yet sent."""
    phone = fleet.new_phone()
    booking_id, _ = await book_due_soon(calendar_redis, phone)
    wait_until(lambda: timer_gone(fleet, booking_id), timeout=15, interval=0.002)
    for victim in fleet.worker_processes():
        os.kill(victim, signal.SIGKILL)
    await exactly_one_reminder(fleet, phone)


async def test_sigkill_while_the_reminder_is_being_sent(fleet: Fleet, calendar_redis) -> None:
    """WAHA has taken the reminder but is slow to answer its sendText, and the sender is killed
    meanwhile: only WAHA's echo can tell the restarted fleet that it went out."""
    phone = fleet.new_phone()
    await fleet.faults({"latency": {"ms": 3000, "paths": ["/api/sendText"]}})
    await book_due_soon(calendar_redis, phone)
    await fleet.wait_replies(phone, 1, timeout=20)  # WAHA has it; its 201 is not back yet
    for victim in fleet.worker_processes():
        os.kill(victim, signal.SIGKILL)
    await fleet.clear_faults()
    await exactly_one_reminder(fleet, phone)


async def test_redis_restarted_from_its_append_only_file_at_the_due_moment(
    fleet: Fleet, calendar_redis
) -> None:
    """Redis goes down right after the timer was taken, and the worker is killed while it is
    down: what was acknowledged (the queued command, the forgotten timer) comes back from the
    append-only file, and the reminder still goes out once."""
    phone = fleet.new_phone()
    product = fleet.product
    booking_id, _ = await book_due_soon(calendar_redis, phone)
    wait_until(lambda: timer_gone(fleet, booking_id), timeout=15, interval=0.002)
    product.redis.stop()
    try:
        for victim in fleet.worker_processes():
            os.kill(victim, signal.SIGKILL)
    finally:
        product.stack.start(product.redis)
        fleet.redis_restarted = True
    await async_wait_until(
        lambda: _answers(fleet), timeout=20, interval=0.1, what="Redis back from its file"
    )
    assert timer_gone(fleet, booking_id)
    await exactly_one_reminder(fleet, phone)


async def _answers(fleet: Fleet) -> bool:
    try:
        return bool(fleet.redis.ping())
    except Exception:
        return False
