"""A reply dead-lettered after its last attempt got no answer, whose echo then comes: WhatsApp
has it. The letter leaves the outbox's dead-letter list (a replay would send it twice), the
history says `sent` with its WhatsApp id, and the echo is not taken for a person writing from
the business's phone (which would pause the bot). Also when the echo comes after the send's
in-flight marker lapsed: the reply was noted for its echo (lib/dead_replies.lua) for as long
as dead letters are kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import respx

from engine.history import read_page
from engine.metrics import OUTBOX_SENDS
from engine.outbox import history_keys
from engine.sender import InflightSend, inflight_chats
from engine.state import State, load_state
from engine.waha_client import SentMessage
from shared.clock import now_ms
from shared.keys import WahaSessionKeys, engine_keys_for
from tests.engine.harness import WAHA, Harness, mock_courtesy
from tests.engine.support import make_sender
from tests.engine.test_light_path import from_me
from tests.support.polling import async_wait_until
from tests.worker.support.outbox_dead import bury, no_answer, refused

ANA = "5511987650073@c.us"
# Where outbox_dead.lua notes a reply for its late echo (lib/dead_replies.lua), and how many.
DEAD_REPLIES = "dead_replies"
DEAD_REPLIES_MAX = 16


def dead_delivered() -> float:
    return OUTBOX_SENDS.labels("dead_delivered")._value.get()


async def marker_lapses(aredis: Any, key_prefix: str) -> None:
    """What the in-flight marker's expiry (the echo wait after the attempt) does to it."""
    session_keys = WahaSessionKeys("default", key_prefix)
    markers = [session_keys.inflight(chat) for chat in inflight_chats(ANA)]
    assert await aredis.delete(*markers) == 1


@pytest.fixture
async def buried(
    request, aredis, key_prefix, make_harness
) -> AsyncIterator[tuple[Harness, Any, dict]]:
    """Ana writes; every attempt to send the answer times out until it is dead-lettered. The
    harness (WAHA still stood in), Ana's keys and the dead letter. Settings overrides come as
    the fixture's parameter."""
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    with respx.mock(assert_all_called=False) as router:
        mock_courtesy(router)
        router.post(f"{WAHA}/api/sendText").mock(side_effect=httpx.ReadTimeout("no answer"))
        harness = make_harness(send_max_attempts=2, **getattr(request, "param", {}))
        await harness.say(ANA, "oi")
        sender = harness.service.sender

        async def dead_lettered() -> bool:
            await sender.sweep_once()
            await sender.drain()
            return await aredis.llen(keys.outbox_dlq) == 1

        await async_wait_until(dead_lettered, what="the reply dead-lettered")
        [letter] = [orjson.loads(raw) for raw in await aredis.lrange(keys.outbox_dlq, 0, -1)]
        assert await aredis.hget(keys.history_meta, f"{letter['entry']['mid']}:status") == (
            b"failed"
        )
        yield harness, keys, letter


async def test_the_echo_of_a_dead_reply_records_it_and_removes_the_letter(
    aredis, key_prefix, buried: tuple[Harness, Any, dict]
) -> None:
    harness, keys, letter = buried
    mid, text = letter["entry"]["mid"], letter["entry"]["text"]
    # WhatsApp had it: its echo arrives.
    assert await harness.webhook(from_me(ANA, text, "3EB0DEADREPLY1"))
    await harness.drain()
    assert await aredis.llen(keys.outbox_dlq) == 0
    session_keys = WahaSessionKeys("default", key_prefix)
    markers = [session_keys.inflight(chat) for chat in inflight_chats(ANA)]
    assert await aredis.exists(*markers) == 0  # it named the reply settled
    meta = await aredis.hgetall(keys.history_meta)
    assert meta[f"{mid}:status".encode()] == b"sent"
    assert meta[b"w:3EB0DEADREPLY1"] == mid.encode()
    entries, _ = await read_page(aredis, history_keys(keys))
    assert [e.author for e in entries] == ["customer", "bot"]  # no "business" copy of it
    assert (await load_state(aredis, keys.state)).state is State.BOT  # not paused


async def test_a_business_message_with_another_text_leaves_the_letter(
    aredis, buried: tuple[Harness, Any, dict]
) -> None:
    """Control: what the business types on its phone meanwhile is its own message (recorded,
    the bot pauses), and the dead letter stays for the operator."""
    harness, keys, letter = buried
    assert await harness.webhook(from_me(ANA, "Já te respondo, Ana", "3EB0PHONE1"))
    await harness.drain()
    assert await aredis.llen(keys.outbox_dlq) == 1
    assert await aredis.hget(keys.history_meta, f"{letter['entry']['mid']}:status") == b"failed"
    assert (await load_state(aredis, keys.state)).state is State.PAUSED


async def test_a_late_echo_of_a_dead_reply_is_settled_as_one_in_time(
    aredis, key_prefix, buried: tuple[Harness, Any, dict]
) -> None:
    """The echo comes after the send's in-flight marker lapsed (held back by WAHA's retries or
    the gateway's spool): still ours, settled the same way, and the bot goes on."""
    harness, keys, letter = buried
    mid, text = letter["entry"]["mid"], letter["entry"]["text"]
    await marker_lapses(aredis, key_prefix)
    counted = dead_delivered()
    assert await harness.webhook(from_me(ANA, text, "3EB0LATEREPLY1"))
    await harness.drain()
    assert await aredis.llen(keys.outbox_dlq) == 0
    meta = await aredis.hgetall(keys.history_meta)
    assert meta[f"{mid}:status".encode()] == b"sent"
    assert meta[b"w:3EB0LATEREPLY1"] == mid.encode()
    assert DEAD_REPLIES.encode() not in meta  # its note went with it
    session_keys = WahaSessionKeys("default", key_prefix)
    assert await aredis.get(session_keys.ours("3EB0LATEREPLY1")) == mid.encode()
    assert dead_delivered() == counted + 1
    entries, _ = await read_page(aredis, history_keys(keys))
    assert [e.author for e in entries] == ["customer", "bot"]  # no "business" copy of it
    assert (await load_state(aredis, keys.state)).state is State.BOT  # not paused


async def test_a_business_message_after_the_marker_lapsed_pauses_the_bot(
    aredis, key_prefix, buried: tuple[Harness, Any, dict]
) -> None:
    """Control: what the business types on its phone is its own, also with a reply noted: the
    letter and its note stay for the dead reply's echo."""
    harness, keys, letter = buried
    await marker_lapses(aredis, key_prefix)
    counted = dead_delivered()
    assert await harness.webhook(from_me(ANA, "Já te respondo, Ana", "3EB0PHONE2"))
    await harness.drain()
    assert await aredis.llen(keys.outbox_dlq) == 1
    assert await aredis.hget(keys.history_meta, f"{letter['entry']['mid']}:status") == b"failed"
    assert await aredis.hexists(keys.history_meta, DEAD_REPLIES)
    assert dead_delivered() == counted
    assert (await load_state(aredis, keys.state)).state is State.PAUSED


async def test_the_same_text_typed_before_the_reply_was_sent_is_the_business_own(
    aredis, key_prefix, buried: tuple[Harness, Any, dict]
) -> None:
    """A message from the phone with the dead reply's text, written (WhatsApp's time) well
    before the reply's last attempt began, cannot be that attempt's echo."""
    harness, keys, letter = buried
    await marker_lapses(aredis, key_prefix)
    typed = from_me(ANA, letter["entry"]["text"], "3EB0PHONE3")
    typed["payload"]["timestamp"] = int(time.time()) - 3600
    assert await harness.webhook(typed)
    await harness.drain()
    assert await aredis.llen(keys.outbox_dlq) == 1
    assert (await load_state(aredis, keys.state)).state is State.PAUSED


@pytest.mark.parametrize("buried", [{"dead_letter_days": 0.2 / 86400}], indirect=True)
async def test_a_note_lasts_as_long_as_dead_letters_are_kept(
    aredis, key_prefix, buried: tuple[Harness, Any, dict]
) -> None:
    """Dead letters kept 0.2 s: an echo later than that is no longer recognised by its note
    (the letter itself goes when the next one arrives on the shard, or by the reaper)."""
    harness, keys, letter = buried
    await marker_lapses(aredis, key_prefix)
    await asyncio.sleep(0.3)
    assert await harness.webhook(from_me(ANA, letter["entry"]["text"], "3EB0TOOLATE1"))
    await harness.drain()
    assert await aredis.hget(keys.history_meta, f"{letter['entry']['mid']}:status") == b"failed"
    assert (await load_state(aredis, keys.state)).state is State.PAUSED


async def test_notes_are_bounded_and_kept_only_for_replies_that_may_have_been_sent(
    aredis, key_prefix
) -> None:
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    token = keys.conversation.token
    # WAHA answered an error: it sent nothing, so no echo can come and nothing is noted.
    await bury(aredis, ANA, key_prefix, ["recusada"], reason=refused(), at_ms=now_ms())
    assert not await aredis.hexists(keys.history_meta, DEAD_REPLIES)
    texts = [f"resposta {n}" for n in range(DEAD_REPLIES_MAX + 1)]
    mids = await bury(aredis, ANA, key_prefix, texts, reason=no_answer(), at_ms=now_ms())
    notes = orjson.loads(await aredis.hget(keys.history_meta, DEAD_REPLIES))
    assert [note["mid"] for note in notes] == mids[1:]  # the oldest dropped past the bound
    sender, _ = make_sender(aredis, key_prefix)
    echo_at = now_ms()
    assert not await sender.settle_late_echo(token, texts[0], SentMessage("true_x_3EB0A"), echo_at)
    assert not await sender.settle_late_echo(
        token, "recusada", SentMessage("true_x_3EB0B"), echo_at
    )
    assert await sender.settle_late_echo(token, texts[-1], SentMessage("true_x_3EB0C"), echo_at)
    assert await aredis.hget(keys.history_meta, f"{mids[-1]}:status") == b"sent"
    assert await aredis.llen(keys.outbox_dlq) == len(texts)  # of 18, the one settled went


async def test_an_echo_in_time_finds_a_letter_without_a_note(aredis, key_prefix) -> None:
    """WAHA answered the last attempt with an error, so the reply was not noted; its echo, if
    one comes while the in-flight marker names it, still finds the letter among the newest."""
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    [mid] = await bury(aredis, ANA, key_prefix, ["Oi, Ana"], reason=refused(500), at_ms=now_ms())
    assert not await aredis.hexists(keys.history_meta, DEAD_REPLIES)
    sender, _ = make_sender(aredis, key_prefix)
    marker = InflightSend(mid, "Oi, Ana", now_ms())
    sent = SentMessage(f"true_{ANA}_3EB0INTIME1")
    assert await sender.settle_echo(keys.conversation.token, marker, sent, now_ms())
    assert await aredis.llen(keys.outbox_dlq) == 0
    assert await aredis.hget(keys.history_meta, f"{mid}:status") == b"sent"
