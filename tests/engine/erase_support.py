"""The erase tests' kit, shared with the API's erase tests (tests/api/test_api.py) and the
engine's mutant tests (tests/engine/test_mutants.py): every key of a test read with its DUMP,
type and content, and a customer who leaves every kind of key the product writes about them."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import orjson
import redis

from api.console.audit import Audit
from engine.agent.booking_webhook import BookingWebhook
from engine.agent.bookings import BookingStore, Customer
from engine.identity import Conversation
from engine.parts import calendar_from
from shared.keys import ConsoleKeys, LineKeys, WahaSessionKeys, keys_for_conversation
from tests.conftest import keys_with_prefix
from tests.engine.harness import FakeWaha, Harness
from tests.support.waha import text_message


def now_ms() -> int:
    return int(time.time() * 1000)


# --- reading every key ------------------------------------------------------------------------


def content(client: redis.Redis, key: bytes) -> tuple[bytes, Any]:
    """A key's type and logical content (what a byte-level DUMP comparison is explained by)."""
    kind = client.type(key)
    value: Any
    if kind == b"string":
        value = client.get(key)
    elif kind == b"list":
        value = client.lrange(key, 0, -1)
    elif kind == b"set":
        value = client.smembers(key)
    elif kind == b"zset":
        value = dict(client.zrange(key, 0, -1, withscores=True))
    elif kind == b"hash":
        value = client.hgetall(key)
    elif kind == b"stream":
        value = client.xrange(key)
    else:
        value = None
    return kind, value


def snapshot(client: redis.Redis, prefix: str) -> dict[bytes, tuple[bytes | None, bytes, Any]]:
    """Every key of the test: its DUMP (bytes), type and content."""
    return {
        key: (client.dump(key), *content(client, key)) for key in keys_with_prefix(client, prefix)
    }


def values_of(kind: bytes, value: Any) -> list[bytes]:
    """Every member, field and value of a key, as bytes."""
    if kind == b"string":
        return [value or b""]
    if kind in (b"list", b"set"):
        return list(value)
    if kind == b"zset":
        return list(value)
    if kind == b"hash":
        return [b"%s=%s" % kv for kv in value.items()]
    if kind == b"stream":
        return [repr(entry).encode() for entry in value]
    return []


def assert_left_as(
    key: bytes, before: tuple[bytes | None, bytes, Any], expected: Any, after: dict[bytes, Any]
) -> None:
    """A key after an erase, given its content without the erased customer's entries: untouched
    byte for byte when it held none, gone when it held only theirs, else exactly `expected`."""
    dump, kind, value = before
    if expected == value:
        assert key in after and after[key][0] == dump, key  # untouched: byte for byte
    elif not expected:
        assert key not in after, key  # held only the erased customer's entries
    else:
        assert key in after and after[key][1:] == (kind, expected), key


def without(kind: bytes, value: Any, needles: list[bytes]) -> Any:
    """A key's content less every entry that holds one of `needles` (None: nothing left)."""

    def holds(element: bytes) -> bool:
        return any(needle in element for needle in needles)

    if kind == b"string":
        return None if holds(value or b"") else value
    if kind == b"list":
        return [e for e in value if not holds(e)]
    if kind == b"set":
        return {e for e in value if not holds(e)}
    if kind == b"zset":
        return {m: s for m, s in value.items() if not holds(m)}
    if kind == b"hash":
        return {f: v for f, v in value.items() if not holds(f) and not holds(v)}
    if kind == b"stream":
        return [(i, f) for i, f in value if not holds(repr(f).encode())]
    return value


def assert_erased_exactly(
    before: dict[bytes, Any],
    after: dict[bytes, Any],
    needles: list[bytes],
    *,
    counters: tuple[bytes, ...] = (),
    kept: tuple[bytes, ...] = (),
) -> None:
    """An erase judged by what the customer's data holds (their phone number, chat id, name):
    every key named after one of `needles` went; every other key lost exactly its entries that
    hold one and is otherwise unchanged, byte for byte; nothing left holds one. `counters` may
    only grow (the shard's fence: the erase took a lease); `kept` hold a needle and must stay
    byte for byte all the same (another WAHA session's data: another business line's)."""
    assert set(after) <= set(before), set(after) - set(before)
    for key, (dump, kind, value) in before.items():
        if key in counters:
            assert int(after[key][2]) >= int(value), key
            continue
        if key not in kept and any(needle in key for needle in needles):
            assert key not in after, key
        else:
            expected = value if key in kept else without(kind, value, needles)
            assert_left_as(key, (dump, kind, value), expected, after)
    for key, (_, kind, value) in after.items():
        if key in kept:
            continue
        for needle in needles:
            assert needle not in key, (key, needle)
            for element in values_of(kind, value):
                assert needle not in element, (key, element, needle)


# --- driving customers through the real engine ------------------------------------------------


def booking_store(harness: Harness) -> BookingStore:
    return BookingStore(
        harness.redis, calendar_from(harness.settings), prefix=harness.settings.key_prefix,
        max_per_customer=3, retention_seconds=3600, webhook_enabled=True,
    )  # fmt: skip


async def dead_booking_hooks(harness: Harness) -> int:
    """Deliver every due booking webhook to a receiver that refuses it for good (400): each goes
    to `hooks:dead` with the customer's name and phone in its body."""
    refuse = httpx.MockTransport(lambda request: httpx.Response(400, text="no such customer"))
    hook = BookingWebhook(
        harness.redis, prefix=harness.settings.key_prefix, url="http://hooks.test/booked",
        secret=b"s", timeout_seconds=1, max_attempts=1, retry_base_ms=1, retry_max_ms=2,
        http=httpx.AsyncClient(transport=refuse),
    )  # fmt: skip
    try:
        return await hook.deliver_due()
    finally:
        await hook.aclose()


async def live_a_life(
    harness: Harness, waha: FakeWaha, who: Conversation, name: str, store: Any, n: int
) -> str:
    """Everything a customer leaves in Redis: a conversation with the bot and the line, a reply
    WAHA refused (outbox dead letter), a message the workers gave up on (queue dead letter), a
    booking whose webhook failed for good (`hooks:dead`), a cached lid lookup of their number,
    dedupe markers of their messages. Returns their booking's id."""
    for text in ("oi", name, "3"):
        assert await harness.webhook(text_message(who.chat_id, text, session=who.session))
    await harness.drain()
    # WAHA refuses one reply for good: it goes to the outbox dead letters.
    waha.failures.append(httpx.Response(400, json={"error": "chat not found"}))
    assert await harness.webhook(text_message(who.chat_id, "sair", session=who.session))
    await harness.drain()
    # A message the workers give up on: the queue's dead letters (real fail_message.lua).
    assert await harness.webhook(text_message(who.chat_id, "💥", session=who.session))
    shard = keys_for_conversation(
        who.session, who.chat_id, harness.settings.queue_shards, harness.settings.key_prefix
    ).shard_keys
    token = await harness.consumer.pop_ready(shard)
    assert token == who.token
    lease = await harness.consumer.claim(shard, token, uuid.uuid4().hex)
    assert lease is not None
    await harness.consumer.fail(lease, lease.messages[0].id, "handler blew up", terminal=True)
    # A booking, and its webhook dead-lettered.
    calendar = store.calendar
    now = calendar.now()
    slots = calendar.slots(calendar.services[0], now.date(), now.date() + timedelta(days=14), now)
    slot = next(itertools.islice(slots, n, None))  # one slot each
    phone = who.chat_id.partition("@")[0]
    booking_id = "bk" + uuid.uuid4().hex[:8]
    await store.book(Customer(who.token, name, phone), slot, booking_id=booking_id)
    assert await dead_booking_hooks(harness) == 0
    # A lid chat of the same person, whose lookup is cached under the session.
    lid = f"{200000000 + n}@lid"
    await harness.redis.set(
        WahaSessionKeys(who.session, harness.settings.key_prefix).lid(lid), phone
    )
    # What the attendants' console keeps about them: an audit trail, a page showing them, an
    # agent's read mark and handled list, the live channel's events.
    console = ConsoleKeys(harness.settings.key_prefix)
    await Audit(harness.redis, console, retention_seconds=3600).record(who.token, "maria", "took")
    await harness.redis.zadd(console.viewed, {who.token: now_ms() + 60_000})
    await harness.redis.hset(console.read("maria"), who.token, "1-0")
    await harness.redis.zadd(console.handled("maria"), {who.token: now_ms()})
    await harness.redis.xadd(console.events, {"kind": "conv", "token": who.token})
    # Waiting in a team's line of the session (teams: docs/conversations.md).
    await harness.redis.zadd(
        LineKeys(harness.settings.key_prefix).team_waiting(who.session, "financeiro"),
        {who.token: n + 1},
    )
    # A send under way.
    await harness.redis.set(
        WahaSessionKeys(who.session, harness.settings.key_prefix).inflight(who.chat_id),
        orjson.dumps({"mid": "m1", "text": f"Olá {name}", "at": 1}),
    )
    return booking_id
