"""The load test's checks must catch what they promise to catch: each kind of failure, built
into otherwise good records of one conversation, is reported, and good records are not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from engine.brain import InboundMessage, Turn
from engine.identity import Conversation
from engine.menu_brain import MenuBrain
from engine.state import ConversationState, Trigger
from engine.texts import load_texts
from wsm.load.checks import Findings, check_conversation, latency_summary, percentile
from wsm.load.customers import Customer, Sent, script

CHAT = "5511900000001@c.us"


def conversation(turns: int = 3) -> tuple[Customer, list[dict[str, Any]], list[dict[str, Any]]]:
    """A customer who wrote `turns` messages, each answered once, as both records show it."""
    customer = Customer.numbered(1)
    history: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    seq = 0
    for n in range(turns):
        inbound = f"false_{CHAT}_IN{n}"
        reply = f"true_{CHAT}_OUT{n}"
        customer.sent.append(Sent(inbound, f"text {n}", at=100.0 + n))
        customer.reply_seen_at[reply] = 100.0 + n + 0.05 * (n + 1)
        history += [
            {"direction": "in", "waha_id": inbound, "text": f"text {n}", "status": "received"},
            {"direction": "out", "waha_id": reply, "text": f"reply {n}", "status": "device"},
        ]
        seq += 1
        chat.append({"seq": seq, "id": inbound, "direction": "in", "text": f"text {n}"})
        seq += 1
        chat.append({"seq": seq, "id": reply, "direction": "out", "text": f"reply {n}"})
    return customer, history, chat


def failures(customer: Customer, history: list[Any], chat: list[Any]) -> dict[str, int]:
    findings = Findings()
    check_conversation(customer, history, chat, findings)
    return {name: finding.count for name, finding in findings.failures().items()}


def test_good_records_pass_and_give_exact_latencies() -> None:
    customer, history, chat = conversation()
    findings = Findings()
    check_conversation(customer, history, chat, findings)
    assert findings.ok
    assert findings.replies == 3
    assert [round(ms) for ms in findings.first_reply_ms] == [50, 100, 150]


# Each kind of failure, built into the good records: (customer, history, chat) changed in place.


def message_2_lost(customer: Customer, history: list[Any], chat: list[Any]) -> None:
    del history[2:4]  # message 2 and its reply never made it into the history
    chat[:] = [m for m in chat if m["id"] != f"true_{CHAT}_OUT1"]


def a_message_handled_twice(customer: Customer, history: list[Any], chat: list[Any]) -> None:
    history.insert(2, dict(history[0]))


def messages_handled_out_of_order(customer: Customer, history: list[Any], chat: list[Any]) -> None:
    history[0], history[2] = history[2], history[0]


def a_reply_sent_twice(customer: Customer, history: list[Any], chat: list[Any]) -> None:
    # WAHA took the same reply twice: the chat shows it again under another id.
    chat.insert(2, {"seq": 99, "id": f"true_{CHAT}_AGAIN", "direction": "out", "text": "reply 0"})


def a_reply_never_delivered(customer: Customer, history: list[Any], chat: list[Any]) -> None:
    history[3] = {"direction": "out", "waha_id": "", "text": "reply 1", "status": "queued"}
    chat[:] = [m for m in chat if m["id"] != f"true_{CHAT}_OUT1"]


def replies_delivered_in_another_order(
    customer: Customer, history: list[Any], chat: list[Any]
) -> None:
    chat[1], chat[3] = chat[3], chat[1]


def a_customer_unanswered(customer: Customer, history: list[Any], chat: list[Any]) -> None:
    customer.error = "message 4 not answered within 150 s"


DAMAGES = [
    (message_2_lost, {"lost": 1}),
    (a_message_handled_twice, {"inbound_duplicated": 1}),
    (messages_handled_out_of_order, {"inbound_out_of_order": 1}),
    (a_reply_sent_twice, {"replies_sent_twice": 1}),
    (a_reply_never_delivered, {"replies_not_delivered": 1}),
    (replies_delivered_in_another_order, {"replies_out_of_order": 1}),
    (a_customer_unanswered, {"customers_unanswered": 1}),
]


@pytest.mark.parametrize(("damage", "reported"), DAMAGES, ids=[d.__name__ for d, _ in DAMAGES])
def test_each_kind_of_failure_is_reported(
    damage: Callable[[Customer, list[Any], list[Any]], None], reported: dict[str, int]
) -> None:
    customer, history, chat = conversation()
    damage(customer, history, chat)
    assert failures(customer, history, chat) == reported


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile([], 0.5) is None
    assert latency_summary([10.0, 20.0])["p99_ms"] == 20.0


async def test_every_scripted_message_gets_exactly_one_reply_from_the_menu_brain() -> None:
    """The customers write again at the first reply: the script must keep to messages the
    menu brain answers once, without asking for a person (the waiting line)."""
    brain = MenuBrain(load_texts("pt-BR", None), business="Clínica", services=["A", "B", "C"])
    who = Conversation("default", CHAT)
    state = ConversationState()
    for text in script(7, 12):
        decision = await brain.decide(
            Turn(who, state, [], InboundMessage(text=text, waha_id="x", at=0))
        )
        assert len(decision.replies) == 1, (text, decision)
        assert not decision.hands_off and not decision.closes
        state = state.moved(Trigger.CUSTOMER_MESSAGE).with_collected(decision.collected)
        if decision.step is not None:
            state = replace(state, step=decision.step)
