"""What an LGPD erase left behind, found by an audit of every key family (shared/keys.py):

- the dedupe markers of messages whose WhatsApp id names the chat by the raw jid
  (`<phone>@s.whatsapp.net`, `<phone>:<device>@s.whatsapp.net`, as some WAHA engines write
  them), which are one conversation with `<phone>@c.us` (shared/keys.py
  `canonical_chat_id`): the erase looked for `_<phone>@c.us_` only;
- an erase asked for by the raw jid: the conversation's keys went (its token is canonical), but
  not its markers, its send under way nor its booking webhooks' dead letters;
- the freed-slots offers (engine/agent/freed_slots.py): the customer's cancelled slot still
  marked to offer, its record of offers, and the customer's own mark (a digest of their token:
  a pseudonym, reversible by trying phone numbers) in the records of slots offered to them;
- the AI agent's limits (engine/agent/limits.py): turns, transcriptions and tokens counted
  under a digest of the token, kept for up to two days.

Each test drives real customers through the real engine on a real Redis, erases one, then
searches every key, name and content, for the erased customer's number, chat id, name,
booking and digests: nothing may hold them afterwards, and every other key is unchanged byte
for byte (tests/engine/erase_support.py)."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from engine.agent.bookings import Customer
from engine.agent.freed_slots import DONE, hashed
from engine.agent.limits import ConversationLimits
from engine.erase import erase_customer, message_key_names_chat
from engine.identity import Conversation
from shared.clock import DAY_MS
from shared.keys import AgentLimitKeys, CalendarKeys, keys_for_conversation
from shared.lua import LuaScript
from tests.engine.erase_support import (
    assert_erased_exactly,
    booking_store,
    dead_booking_hooks,
    live_a_life,
    now_ms,
    snapshot,
)
from tests.engine.harness import FakeWaha, Harness
from tests.engine.test_erase_mutants import (  # the same customers, and their search
    ERASED,
    MANY,
    NAME,
    OTHER,
    PHONE,
    fence_of,
    needles,
)
from tests.support.waha import text_message

THIRD = Conversation("default", "5531944440000@c.us")
# The same person as ERASED, as some WAHA engines write her chat (the raw jid).
RAW_FORMS = [f"{PHONE}@s.whatsapp.net", f"{PHONE}:22@s.whatsapp.net"]


@pytest.fixture
def harness(make_harness) -> Harness:
    return make_harness(queue_shards=3, conversations_per_agent=1)


def test_a_marker_names_a_chat_in_any_form_of_its_number() -> None:
    for raw in RAW_FORMS:
        assert message_key_names_chat(f"message:false_{raw}_3EB0AA", ERASED.chat_id)
        assert message_key_names_chat(f"message:true_{ERASED.chat_id}_3EB0AA", raw)
    # Another number, even one that starts with this one, is another person.
    assert not message_key_names_chat(f"message:false_{PHONE}7@s.whatsapp.net_3E", ERASED.chat_id)
    assert not message_key_names_chat(f"message:false_{PHONE}@c.us_3E", OTHER.chat_id)
    # A lid is never taken for a number, nor a group for its participant.
    assert not message_key_names_chat(f"message:false_{PHONE}@lid_3E", ERASED.chat_id)
    assert not message_key_names_chat(f"message:false_1@g.us_3E_{RAW_FORMS[0]}", ERASED.chat_id)


async def test_markers_of_messages_written_with_the_raw_jid_are_erased(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix
) -> None:
    """Kills: `_markers` scanning for `_<phone>@c.us_` only, and `message_key_names_chat`
    comparing the chat as written (the markers of `@s.whatsapp.net` messages stayed, with the
    customer's number in their names, for the dedupe window)."""
    for chat in (*RAW_FORMS, ERASED.chat_id):
        for text in ("oi", NAME):
            assert await harness.webhook(text_message(chat, text))
        await harness.drain()
    for text in ("oi", "Otavio Nunes"):
        assert await harness.webhook(text_message("5521955550000@s.whatsapp.net", text))
    await harness.drain()
    # Markers that hold the number and are not the customer's: another number that starts with
    # it, and a group message the customer wrote (the group's data).
    shard = keys_for_conversation(ERASED.session, ERASED.chat_id, 3, key_prefix).shard_keys
    kept = [
        shard.seen_message("default", f"message:false_{PHONE}7@s.whatsapp.net_3EB0A1"),
        shard.seen_message("default", f"message:false_1203@g.us_3EB0A2_{RAW_FORMS[0]}"),
    ]
    for key in kept:
        await harness.redis.set(key, "1", ex=3600)
    before = snapshot(sync_redis, key_prefix)
    raw_markers = [k for k in before if b":seen:" in k and b"@s.whatsapp.net" in k]
    assert len(raw_markers) == 2 * len(RAW_FORMS) + 2 + len(kept)

    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
    )

    after = snapshot(sync_redis, key_prefix)
    assert_erased_exactly(
        before, after, needles(), counters=(fence_of(ERASED, key_prefix),),
        kept=tuple(k.encode() for k in kept),
    )  # fmt: skip


@pytest.mark.parametrize("chat_id", RAW_FORMS)
async def test_an_erase_asked_by_the_raw_jid_erases_as_much_as_by_c_us(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix, chat_id: str
) -> None:
    """The operator may name the customer as WAHA's engine shows them. Kills: the erase using
    the chat id as given, not its canonical form, for the markers' scan, the send under way
    (`inflight:<chat>`, under the `@c.us` the sender sends to) and the booking webhooks' dead
    letters (whose customer is the conversation's canonical chat id)."""
    await harness.service.coordinator.line.set_online("maria", "Maria", now_ms())
    store = booking_store(harness)
    booking = await live_a_life(harness, waha, ERASED, NAME, store, 0)
    await live_a_life(harness, waha, OTHER, "Otavio Nunes", store, 1)
    before = snapshot(sync_redis, key_prefix)

    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=chat_id,
        also=lambda: store.erase_customer(Conversation("default", chat_id).token),
    )  # fmt: skip

    after = snapshot(sync_redis, key_prefix)
    assert_erased_exactly(before, after, needles(booking), counters=(fence_of(ERASED, key_prefix),))


async def test_the_freed_slot_offers_keep_nothing_of_an_erased_customer(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix, monkeypatch
) -> None:
    """The freed-slots pass (`offer_freed_slots`) marks a cancelled slot of today in
    `{cal}:freed` and records whom it offered it to in `{cal}:freed_offers:<booking id>`, by a
    digest of their token. The erased customer cancelled a slot (offered to OTHER) and was
    offered OTHER's (beside THIRD), and MANY slots before. Kills: the erase leaving their
    slot's mark and record (named after their booking), and their digest in the records of
    the slots offered to them (a pseudonym: hashing candidate numbers finds the customer
    again), past each batch of records."""
    await harness.service.coordinator.line.set_online("maria", "Maria", now_ms())
    store = booking_store(harness)
    booking = await live_a_life(harness, waha, ERASED, NAME, store, 0)
    others = await live_a_life(harness, waha, OTHER, "Otavio Nunes", store, 1)
    calendar = CalendarKeys(key_prefix)
    for who, booking_id, offered_to in (
        (ERASED, booking, [OTHER]),
        (OTHER, others, [ERASED, THIRD]),
    ):
        # What BookingStore.cancel and FreedSlots' pass write (engine/agent/freed_slots.py).
        await store.cancel(Customer(who.token), booking_id)
        await harness.redis.zadd(calendar.freed, {booking_id: now_ms()})
        record = calendar.freed_offers(booking_id)
        for customer in offered_to:
            await harness.redis.hset(record, hashed(customer.token), now_ms())
        await harness.redis.pexpireat(record, now_ms() + DAY_MS)
    await harness.redis.hset(calendar.freed_offers(booking), DONE, now_ms())
    # More records than two of the erase's batches, each offered to ERASED and THIRD (as after
    # weeks of freed slots; a record lives until a day after its slot).
    mark = hashed(ERASED.token)
    pipe = harness.redis.pipeline(transaction=False)
    for n in range(MANY):
        record = calendar.freed_offers(f"bk{n:08x}")
        pipe.hset(record, mapping={mark: now_ms(), hashed(THIRD.token): now_ms(), DONE: now_ms()})
        pipe.pexpireat(record, now_ms() + DAY_MS)
    await pipe.execute()
    # The cancellations' webhook events, refused: dead letters with the customer's name.
    assert await dead_booking_hooks(harness) == 0
    before = snapshot(sync_redis, key_prefix)
    assert sync_redis.hexists(calendar.freed_offers(others), mark)
    calls: collections.Counter[str] = collections.Counter()
    real_call = LuaScript.__call__

    async def counted(self: LuaScript, client: Any, keys: Any, args: Any) -> Any:
        calls[self.name] += 1
        return await real_call(self, client, keys, args)

    monkeypatch.setattr(LuaScript, "__call__", counted)

    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id,
        also=lambda: store.erase_customer(ERASED.token),
    )  # fmt: skip

    after = snapshot(sync_redis, key_prefix)
    assert_erased_exactly(
        before, after, needles(booking, mark), counters=(fence_of(ERASED, key_prefix),)
    )
    # In batches of BATCH records (the last a partial one), not one call per record.
    assert calls["erase_calendar"] == 3
    # OTHER's slot is still marked, and THIRD's offer still counts.
    assert sync_redis.zscore(calendar.freed, others) is not None
    assert sync_redis.hkeys(calendar.freed_offers(others)) == [hashed(THIRD.token).encode()]


async def test_the_agent_limits_of_an_erased_customer_go(
    harness: Harness, waha: FakeWaha, sync_redis, key_prefix
) -> None:
    """The AI agent counts a conversation's turns and transcriptions (a minute) and model tokens
    (per UTC day, kept two days) under a digest of its token. Kills: the erase leaving them
    (today's, yesterday's and the day before's token counts)."""
    for who, name in ((ERASED, NAME), (OTHER, "Otavio Nunes")):
        for text in ("oi", name):
            assert await harness.webhook(text_message(who.chat_id, text))
        await harness.drain()
        for days_ago in (2, 1, 0):
            at = now_ms() - days_ago * DAY_MS
            limits = ConversationLimits(
                harness.redis, prefix=key_prefix, shards=3, turns_per_minute=5,
                tokens_per_day=1000, clock_ms=lambda at=at: at,
            )  # fmt: skip
            await limits.add_tokens(who.token, 120)
        assert await limits.admit(who.token) is None
        assert await limits.admit_transcription(who.token)
    before = snapshot(sync_redis, key_prefix)
    who_erased = AgentLimitKeys.who(ERASED.token)
    assert len([k for k in before if who_erased.encode() in k]) == 5

    await erase_customer(
        harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=ERASED.chat_id
    )

    after = snapshot(sync_redis, key_prefix)
    assert_erased_exactly(
        before, after, needles(who_erased), counters=(fence_of(ERASED, key_prefix),)
    )
    assert len([k for k in after if AgentLimitKeys.who(OTHER.token).encode() in k]) == 5
