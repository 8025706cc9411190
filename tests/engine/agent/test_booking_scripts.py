"""booking_book / booking_reschedule / booking_cancel / booking_hooks_claim on a real Redis:
atomic, owner-only, repeat-safe."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio

from engine.agent.bookings import (
    BookingLimit,
    BookingNotFound,
    BookingStore,
    Customer,
    SlotTaken,
    booking_id_for,
)
from engine.agent.calendar import Calendar, Slot, load_calendar
from shared.keys import CalendarKeys
from shared.lua import LuaScript

ANA = Customer("default|5511987650001@c.us", "Ana", "5511987650001")
BIA = Customer("default|5511987650002@c.us", "Bia", "5511987650002")


@pytest.fixture
def calendar(calendar_file: Path) -> Calendar:
    return load_calendar(calendar_file)


@pytest.fixture
def store(aredis: Any, calendar: Calendar, key_prefix: str) -> BookingStore:
    return make_store(aredis, calendar, key_prefix)


def make_store(client: Any, calendar: Calendar, prefix: str, *, hooks: bool = True) -> BookingStore:
    return BookingStore(
        client, calendar, prefix=prefix, max_per_customer=2, retention_seconds=3600,
        webhook_enabled=hooks,
    )  # fmt: skip


def slot(calendar: Calendar, now: datetime, hhmm: str, service: str = "consulta") -> Slot:
    svc = calendar.service(service)
    assert svc
    return calendar.slot(svc, f"{now.date()}T{hhmm}", now)


async def hgetall(aredis: Any, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await aredis.hgetall(key)).items()}


async def test_book_takes_every_step_indexes_it_and_queues_its_event(
    aredis, store, calendar, now, key_prefix
) -> None:
    keys = CalendarKeys(key_prefix)
    wanted = slot(calendar, now, "10:00", "limpeza")
    change = await store.book(ANA, wanted, booking_id="bk0000000001")
    assert not change.repeated
    day = await hgetall(aredis, keys.day(wanted.day))
    assert day == {"10:00": "bk0000000001", "10:30": "bk0000000001"}
    booking = await hgetall(aredis, keys.booking("bk0000000001"))
    assert booking["customer"] == ANA.token and booking["status"] == "booked"
    assert booking["start"] == wanted.id and booking["steps"] == "10:00,10:30"
    assert await aredis.zscore(keys.customer(ANA.token), "bk0000000001") == wanted.start_ms
    for key in (keys.day(wanted.day), keys.booking("bk0000000001"), keys.customer(ANA.token)):
        assert await aredis.ttl(key) > 0
    [event_id] = await aredis.zrange(keys.hooks_due, 0, -1)
    body = orjson.loads(await aredis.hget(keys.hooks_body, event_id))
    assert body["event"] == "booking.booked" and body["booking"]["id"] == "bk0000000001"
    assert body["customer"] == {
        "session": "default", "chat_id": "5511987650001@c.us", "name": "Ana",
        "phone": "5511987650001",
    }  # fmt: skip


async def test_a_repeat_changes_nothing_and_another_customer_finds_it_taken(
    aredis, store, calendar, now, key_prefix
) -> None:
    keys = CalendarKeys(key_prefix)
    wanted = slot(calendar, now, "10:00")
    await store.book(ANA, wanted, booking_id="bk0000000001")
    again = await store.book(ANA, wanted, booking_id="bk0000000001")
    assert again.repeated and again.booking.id == "bk0000000001"
    assert await aredis.zcard(keys.hooks_due) == 1  # one event, not two
    with pytest.raises(SlotTaken):
        await store.book(BIA, wanted, booking_id="bk0000000002")
    # An overlapping longer service is refused too, and leaves nothing behind.
    with pytest.raises(SlotTaken):
        await store.book(BIA, slot(calendar, now, "10:00", "limpeza"), booking_id="bk0000000003")
    assert not await aredis.exists(keys.booking("bk0000000002"), keys.booking("bk0000000003"))
    assert not await aredis.exists(keys.customer(BIA.token))
    assert await hgetall(aredis, keys.day(wanted.day)) == {"10:00": "bk0000000001"}


async def test_the_per_customer_limit_is_atomic(aredis, store, calendar, now, key_prefix) -> None:
    await store.book(ANA, slot(calendar, now, "10:00"), booking_id="bk01")
    await store.book(ANA, slot(calendar, now, "11:00"), booking_id="bk02")
    with pytest.raises(BookingLimit) as raised:
        await store.book(ANA, slot(calendar, now, "14:00"), booking_id="bk03")
    assert raised.value.active == 2
    assert not await aredis.exists(CalendarKeys(key_prefix).booking("bk03"))


async def test_two_customers_booking_one_slot_at_once_one_gets_it(
    redis_url, calendar, now, key_prefix
) -> None:
    # Separate connections, released together: the scripts really race on the server.
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(8)]
    try:
        stores = [make_store(c, calendar, key_prefix) for c in clients]
        wanted = slot(calendar, now, "15:00")
        customers = [Customer(f"default|55119000000{n:02d}@c.us") for n in range(8)]
        gate = asyncio.Event()

        async def attempt(n: int) -> str:
            await gate.wait()
            try:
                await stores[n].book(customers[n], wanted, booking_id=f"bk{n:012d}")
            except SlotTaken:
                return "taken"
            return "booked"

        tasks = [asyncio.create_task(attempt(n)) for n in range(8)]
        gate.set()
        outcomes = await asyncio.gather(*tasks)
        assert sorted(outcomes) == ["booked"] + ["taken"] * 7
        winner = outcomes.index("booked")
        day = await clients[0].hgetall(CalendarKeys(key_prefix).day(wanted.day))
        assert day == {b"15:00": f"bk{winner:012d}".encode()}
    finally:
        for client in clients:
            await client.aclose()


async def test_reschedule_is_atomic_and_owner_only(
    aredis, store, calendar, now, key_prefix
) -> None:
    keys = CalendarKeys(key_prefix)
    old, new = slot(calendar, now, "10:00"), slot(calendar, now, "16:00")
    await store.book(ANA, old, booking_id="bk01")
    await store.book(BIA, slot(calendar, now, "17:00"), booking_id="bk02")
    # Bia cannot move Ana's booking, and is told exactly what she would be told for none.
    with pytest.raises(BookingNotFound):
        await store.reschedule(BIA, "bk01", new)
    with pytest.raises(SlotTaken):
        await store.reschedule(ANA, "bk01", slot(calendar, now, "17:00"))
    assert await hgetall(aredis, keys.day(old.day)) == {"10:00": "bk01", "17:00": "bk02"}
    hooks_before = await aredis.zcard(keys.hooks_due)
    change = await store.reschedule(ANA, "bk01", new)
    assert change.previous_start == old.id and change.booking.start == new.id
    assert await hgetall(aredis, keys.day(old.day)) == {"16:00": "bk01", "17:00": "bk02"}
    assert (await hgetall(aredis, keys.booking("bk01")))["start"] == new.id
    assert await aredis.zscore(keys.customer(ANA.token), "bk01") == new.start_ms
    assert await aredis.zcard(keys.hooks_due) == hooks_before + 1
    assert (await store.reschedule(ANA, "bk01", new)).repeated  # a repeat moves nothing


async def reschedule_bk01(
    aredis: Any, keys: CalendarKeys, day: str, customer: str, start: str, new: str
) -> Any:
    """booking_reschedule called directly (the store would refuse first): `customer` moves
    booking bk01, seen at `start` (one slot), to `new` (one slot), both HH:MM on `day`."""
    return await LuaScript.named("booking_reschedule")(
        aredis,
        [keys.day(day), keys.day(day), keys.booking("bk01"), keys.customer(customer),
         keys.customer_all(customer), keys.hooks_due, keys.hooks_body],
        ["bk01", customer, f"{day}T{start}", f"{day}T{new}", 1, 1, 2**31, "", "", day,
         1, start, 1, new],
    )  # fmt: skip


async def test_reschedule_refuses_a_booking_changed_meanwhile(
    aredis, store, calendar, now, key_prefix
) -> None:
    await store.book(ANA, slot(calendar, now, "10:00"), booking_id="bk01")
    keys = CalendarKeys(key_prefix)
    day = str(now.date())
    answer = await reschedule_bk01(aredis, keys, day, ANA.token, "10:30", "11:00")
    assert answer == [b"changed"]
    assert await hgetall(aredis, keys.day(day)) == {"10:00": "bk01"}


async def test_cancel_frees_the_slot_only_for_its_owner(
    aredis, store, calendar, now, key_prefix
) -> None:
    keys = CalendarKeys(key_prefix)
    wanted = slot(calendar, now, "10:00", "limpeza")
    await store.book(ANA, wanted, booking_id="bk01")
    with pytest.raises(BookingNotFound):
        await store.cancel(BIA, "bk01")
    with pytest.raises(BookingNotFound):
        await store.cancel(ANA, "bk-does-not-exist")
    assert (await hgetall(aredis, keys.booking("bk01")))["status"] == "booked"
    change = await store.cancel(ANA, "bk01")
    assert not change.repeated
    assert await hgetall(aredis, keys.day(wanted.day)) == {}
    assert (await hgetall(aredis, keys.booking("bk01")))["status"] == "cancelled"
    assert await aredis.zscore(keys.customer(ANA.token), "bk01") is None
    assert (await store.cancel(ANA, "bk01")).repeated
    assert await aredis.zcard(keys.hooks_due) == 2  # booked + cancelled, not a second cancel
    # The slot is free again for anyone.
    await store.book(BIA, wanted, booking_id="bk02")


async def test_no_webhook_configured_queues_no_event(aredis, calendar, now, key_prefix) -> None:
    store = make_store(aredis, calendar, key_prefix, hooks=False)
    await store.book(ANA, slot(calendar, now, "10:00"), booking_id="bk01")
    assert await aredis.zcard(CalendarKeys(key_prefix).hooks_due) == 0


async def test_hooks_claim_takes_due_events_and_hides_them_for_a_while(aredis, key_prefix) -> None:
    keys = CalendarKeys(key_prefix)
    await aredis.zadd(keys.hooks_due, {"e1": 1000, "e2": 2000, "later": 10_000})
    claim = LuaScript.named("booking_hooks_claim")
    assert await claim(aredis, [keys.hooks_due], [5000, 30_000, 10]) == [b"e1", b"e2"]
    assert await aredis.zscore(keys.hooks_due, "e1") == 35_000
    # Claimed events are not due again until the visibility window passes.
    assert await claim(aredis, [keys.hooks_due], [6000, 30_000, 10]) == []
    assert await claim(aredis, [keys.hooks_due], [35_000, 30_000, 1]) == [b"later"]


async def test_erase_forgets_every_booking_of_a_customer(
    aredis, store, calendar, now, key_prefix
) -> None:
    keys = CalendarKeys(key_prefix)
    await store.book(ANA, slot(calendar, now, "10:00"), booking_id="bk01")
    await store.book(ANA, slot(calendar, now, "11:00"), booking_id="bk02")
    await store.cancel(ANA, "bk02")
    await store.book(BIA, slot(calendar, now, "14:00"), booking_id="bk03")
    assert await store.erase_customer(ANA.token) == 2
    names = [k.decode() for k in await aredis.keys(f"{key_prefix}:*")]
    assert not any(ANA.token in name for name in names)
    assert not any("bk01" in name or "bk02" in name for name in names)
    assert await hgetall(aredis, keys.day(str(now.date()))) == {"14:00": "bk03"}
    bodies = [orjson.loads(v) for v in (await aredis.hgetall(keys.hooks_body)).values()]
    assert [b["customer"]["chat_id"] for b in bodies] == ["5511987650002@c.us"]


def test_booking_ids_are_stable_per_customer_message_and_slot() -> None:
    a = booking_id_for(ANA.token, "msg1", "2026-05-12T10:00")
    assert a == booking_id_for(ANA.token, "msg1", "2026-05-12T10:00")
    assert a != booking_id_for(ANA.token, "msg2", "2026-05-12T10:00")
    assert a != booking_id_for(BIA.token, "msg1", "2026-05-12T10:00")


async def test_owner_check_reads_nothing_for_invented_ids(store) -> None:
    with pytest.raises(BookingNotFound):
        await store.own(ANA, "../../etc")


async def test_the_scripts_themselves_refuse_another_customer(
    aredis, store, calendar, now, key_prefix
) -> None:
    # Python checks the owner first; the scripts check it again atomically. Called directly:
    keys = CalendarKeys(key_prefix)
    day = str(now.date())
    await store.book(ANA, slot(calendar, now, "10:00"), booking_id="bk01")
    cancel = LuaScript.named("booking_cancel")
    answer = await cancel(
        aredis,
        [keys.day(day), keys.booking("bk01"), keys.customer(BIA.token), keys.hooks_due,
         keys.hooks_body],
        ["bk01", BIA.token, 1, "", ""],
    )  # fmt: skip
    assert answer == [b"not_found"]
    answer = await reschedule_bk01(aredis, keys, day, BIA.token, "10:00", "11:00")
    assert answer == [b"not_found"]
    assert await hgetall(aredis, keys.day(day)) == {"10:00": "bk01"}
    assert (await hgetall(aredis, keys.booking("bk01")))["status"] == "booked"
