"""A reply dead-lettered after its last attempt got no answer, whose echo then comes: WhatsApp
has it. The letter leaves the outbox's dead-letter list (a replay would send it twice), the
history says `sent` with its WhatsApp id, and the echo is not taken for a person writing from
the business's phone (which would pause the bot)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import respx

from engine.history import read_page
from engine.outbox import history_keys
from engine.state import State, load_state
from shared.keys import engine_keys_for
from tests.engine.harness import WAHA, Harness, mock_courtesy
from tests.engine.test_light_path import from_me
from tests.support.polling import async_wait_until

ANA = "5511987650073@c.us"


@pytest.fixture
async def buried(aredis, key_prefix, make_harness) -> AsyncIterator[tuple[Harness, Any, dict]]:
    """Ana writes; every attempt to send the answer times out until it is dead-lettered. The
    harness (WAHA still stood in), Ana's keys and the dead letter."""
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    with respx.mock(assert_all_called=False) as router:
        mock_courtesy(router)
        router.post(f"{WAHA}/api/sendText").mock(side_effect=httpx.ReadTimeout("no answer"))
        harness = make_harness(send_max_attempts=2)
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
    aredis, buried: tuple[Harness, Any, dict]
) -> None:
    harness, keys, letter = buried
    mid, text = letter["entry"]["mid"], letter["entry"]["text"]
    # WhatsApp had it: its echo arrives.
    assert await harness.webhook(from_me(ANA, text, "3EB0DEADREPLY1"))
    await harness.drain()
    assert await aredis.llen(keys.outbox_dlq) == 0
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
