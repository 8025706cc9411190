"""WAHA `message` bodies that are not a customer typing words, through the real queue protocol
(tests/engine/harness.py): what the customer gets and what the history keeps.

- WAHA tells some events as a `message` with nothing to read: no body, no media, no location, no
  contact (a call on NOWEB, tests/fixtures/waha/message-call.json from devlikeapro/waha#840;
  WhatsApp's own notices on WEBJS; protocol messages on older engines). Found by an audit: the
  bot answered a call "Não entendi…" with the menu, greeted it, or repeated the line's notice.
  Not a customer's turn: no reply, nothing recorded, the conversation as it was. Wordless
  content a customer did send (an order, a poll) is still their turn.
- `payload.timestamp` that is not a number (older NOWEB passed Baileys' protobuf Long on as it
  came): found by an audit to fail the turn on every try, so the message ended as a dead letter
  and the customer was never answered. Read as the time the gateway received it.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from engine.history import HistoryEntry, HistoryKeys, recent
from engine.state import State, load_state
from shared.keys import engine_keys_for
from tests.support.waha import from_me, load_fixture, text_message

SESSION = "session_frwq9b"  # message-call.json's
CUSTOMER = "5511987650054@c.us"

# What the customer wrote before the event, to reach each place of the conversation.
BEFORE = {"new": [], "ask_name": ["Oi"], "menu": ["Oi", "Ana"], "waiting": ["Oi", "Ana", "3"]}
# Then the customer's next words, and how the answer to them starts.
NEXT = {
    "new": ("Oi", "Olá! 👋 Bem-vindo(a)"),
    "ask_name": ("Ana", "Como posso ajudar, Ana?"),
    "menu": ("2", "Atendemos de segunda"),
    "waiting": ("2", "Você continua na fila"),
}


def call() -> dict[str, Any]:
    """message-call.json as WAHA delivers another one: its own envelope and message ids."""
    document = copy.deepcopy(load_fixture("message-call.json"))
    document["id"] = "evt_" + uuid.uuid4().hex[:26]
    document["payload"]["id"] = f"false_{CUSTOMER}_{uuid.uuid4().hex.upper()}"
    return document


def typed(text: str) -> dict[str, Any]:
    return text_message(CUSTOMER, text, session=SESSION)


async def history(aredis: Any, prefix: str) -> list[HistoryEntry]:
    keys = engine_keys_for(SESSION, CUSTOMER, 1, prefix)
    return await recent(aredis, HistoryKeys(keys.history, keys.history_meta), 50)


async def state(aredis: Any, prefix: str) -> Any:
    return await load_state(aredis, engine_keys_for(SESSION, CUSTOMER, 1, prefix).state)


async def reach(harness: Any, step: str) -> None:
    for text in BEFORE[step]:
        await harness.webhook(typed(text))
        await harness.drain()


async def assert_not_a_turn(
    document: dict[str, Any], harness: Any, waha: Any, aredis: Any, key_prefix: str
) -> None:
    sent, entries = len(waha.sent), await history(aredis, key_prefix)
    before = await state(aredis, key_prefix)
    assert await harness.webhook(document)
    assert await harness.drain() == 1  # handled (acked), not retried nor dead-lettered
    assert waha.sent[sent:] == []
    assert await history(aredis, key_prefix) == entries
    assert await state(aredis, key_prefix) == before


@pytest.mark.parametrize("step", list(BEFORE))
async def test_a_call_told_as_a_message_gets_no_answer(
    step: str, aredis: Any, key_prefix: str, waha: Any, make_harness: Any
) -> None:
    harness = make_harness()
    await reach(harness, step)

    await assert_not_a_turn(call(), harness, waha, aredis, key_prefix)

    # The customer's next words are answered as if the call had not come.
    words, answer = NEXT[step]
    sent = len(waha.sent)
    await harness.webhook(typed(words))
    await harness.drain()
    assert waha.sent[sent][1].startswith(answer)


# WhatsApp's notices as each engine tells them (engine/media/kinds.py, is_notice).
NOTICES = {
    "noweb-protocol": {"message": {"protocolMessage": {"type": "REVOKE"}}},
    "noweb-edit": {"message": {"editedMessage": {"message": {}}, "messageContextInfo": {}}},
    "gows-call": {"Message": {"call": {"callKey": "MDAx"}}},
    "webjs-call-log": {"type": "call_log", "subtype": "miss"},
    "webjs-e2e": {"type": "e2e_notification"},
}


@pytest.mark.parametrize("data", list(NOTICES.values()), ids=list(NOTICES))
@pytest.mark.parametrize(
    "body", ["", None, " \n\t ", "absent"], ids=["empty", "null", "whitespace", "absent"]
)
async def test_a_notice_with_no_words_gets_no_answer(
    body: Any, data: dict[str, Any], aredis: Any, key_prefix: str, waha: Any, make_harness: Any
) -> None:
    harness = make_harness()
    await reach(harness, "menu")
    document = typed("x")
    document["payload"]["_data"] = data
    if body == "absent":
        del document["payload"]["body"]
    else:
        document["payload"]["body"] = body

    await assert_not_a_turn(document, harness, waha, aredis, key_prefix)


@pytest.mark.parametrize(
    "data",
    [
        {"message": {"orderMessage": {"orderId": "1", "itemCount": 2}}},
        {"type": "order", "orderId": "1"},
        {"message": {"pollCreationMessageV3": {"name": "Qual horário?"}}},
        None,
    ],
    ids=["noweb-order", "webjs-order", "noweb-poll", "no-raw-message"],
)
async def test_wordless_content_a_customer_sent_is_still_their_turn(
    data: Any, aredis: Any, key_prefix: str, waha: Any, make_harness: Any
) -> None:
    """An order from the business's catalog, a poll: nothing the engine can read, but the
    customer sent it. Recorded and answered as any message the menu does not understand, so
    the customer is not left in silence (and an attendant sees it in the history)."""
    harness = make_harness()
    await reach(harness, "menu")
    document = typed("")
    if data is None:
        del document["payload"]["body"]
    else:
        document["payload"]["_data"] = data

    def theirs(entries: list[HistoryEntry]) -> int:
        return sum(entry.author == "customer" for entry in entries)

    before = theirs(await history(aredis, key_prefix))

    await harness.webhook(document)
    await harness.drain()

    assert waha.sent[-2][1].startswith("Não entendi")
    assert theirs(await history(aredis, key_prefix)) == before + 1


async def test_a_lone_emoji_is_still_answered(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any
) -> None:
    harness = make_harness()
    await reach(harness, "menu")
    await harness.webhook(typed("👍"))
    await harness.drain()
    assert waha.sent[-2][1].startswith("Não entendi")
    assert [e.text for e in await history(aredis, key_prefix) if e.author == "customer"][-1] == "👍"


@pytest.mark.parametrize(
    ("timestamp", "at"),
    [
        ({"low": 1763396578, "high": 0, "unsigned": True}, 1),  # the harness queues at ms 1
        ("ontem", 1),
        ("1763396578", 1763396578000),
    ],
    ids=["protobuf-long", "not-a-number", "numeric-string"],
)
async def test_a_message_time_that_is_not_a_number_does_not_fail_the_turn(
    timestamp: Any, at: int, aredis: Any, key_prefix: str, waha: Any, make_harness: Any
) -> None:
    harness = make_harness()
    document = typed("Oi")
    document["payload"]["timestamp"] = timestamp
    await harness.webhook(document)
    await harness.drain()

    assert waha.to(CUSTOMER)[0].startswith("Olá! 👋 Bem-vindo(a)")
    [entry] = [e for e in await history(aredis, key_prefix) if e.author == "customer"]
    assert (entry.text, entry.at) == ("Oi", at)

    # The same from the business's own phone: recorded, and the bot keeps quiet.
    typed_on_phone = from_me(CUSTOMER, "Oi, aqui é a Ana da clínica", "3EB0PHONE01")
    typed_on_phone["session"] = SESSION
    typed_on_phone["payload"]["timestamp"] = timestamp
    await harness.webhook(typed_on_phone)
    await harness.drain()
    [phone] = [e for e in await history(aredis, key_prefix) if e.author == "business"]
    assert (phone.text, phone.at) == ("Oi, aqui é a Ana da clínica", at)
    assert (await state(aredis, key_prefix)).state is State.PAUSED
