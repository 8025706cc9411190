"""The engine end to end on the real queue protocol: menu, state across restarts, inactivity,
exactly-once replies, and the business answering from its own phone."""

from __future__ import annotations

from engine.history import HistoryKeys, read_page
from engine.state import State, load_state
from shared.keys import WahaSessionKeys, conversation_token, engine_keys_for
from tests.support.polling import async_wait_until
from tests.support.waha import from_me, text_message

ANA = "5511987650001@c.us"


async def state_of(aredis, prefix: str, chat: str):
    return await load_state(aredis, engine_keys_for("default", chat, 1, prefix).state)


async def test_menu_collects_name_and_service_and_survives_a_restart(
    aredis, key_prefix, waha, make_harness
) -> None:
    first = make_harness()
    for text in ("oi", "Ana", "1", "2"):
        await first.webhook(text_message(ANA, text))
    await first.drain()
    replies = waha.to(ANA)
    assert replies[0].startswith("Olá! 👋 Bem-vindo(a)")
    assert replies[1].startswith("Como posso ajudar, Ana?")
    assert replies[1].splitlines()[-1] == "3. Falar com um atendente"
    assert "2. Retorno" in replies[2]
    assert replies[3] == "Anotado: Retorno. ✅"
    state = await state_of(aredis, key_prefix, ANA)
    assert state.state is State.BOT
    assert dict(state.collected) == {"name": "Ana", "service": "Retorno"}
    await first.aclose()
    # A new process (a fleet restart) continues where the customer stopped.
    second = make_harness()
    await second.webhook(text_message(ANA, "2"))
    await second.drain()
    assert waha.to(ANA)[-1].startswith("Como posso ajudar, Ana?")
    assert "Atendemos de segunda" in waha.to(ANA)[-2]


async def test_inactive_conversation_closes_with_a_goodbye_and_greets_back(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness(inactivity_close_seconds=1)
    await harness.webhook(text_message(ANA, "oi"))
    await harness.say(ANA, "Ana")

    async def closed() -> bool:
        await harness.service.timers_once()
        await harness.drain()
        return (await state_of(aredis, key_prefix, ANA)).state is State.CLOSED

    await async_wait_until(closed, timeout=10, interval=0.2, what="inactivity close")
    assert waha.to(ANA)[-1].startswith("Vamos encerrar por aqui")
    await harness.say(ANA, "oi de novo")
    assert waha.to(ANA)[-2] == "Que bom te ver de novo, Ana! 😊"
    assert (await state_of(aredis, key_prefix, ANA)).state is State.BOT


async def test_same_inbound_twice_gets_one_reply(aredis, key_prefix, waha, make_harness) -> None:
    harness = make_harness()
    message = text_message(ANA, "oi", message_id="SAMEID", event_id="evt_a")
    assert await harness.webhook(message) is True
    # WAHA repeats the message under a new envelope id: the gateway's dedupe drops it.
    assert await harness.webhook(dict(message, id="evt_b")) is False
    await harness.drain()
    assert len(waha.to(ANA)) == 1


async def test_redelivery_after_a_lost_commit_replies_once(
    aredis, key_prefix, waha, make_harness
) -> None:
    """A handler whose commit was refused (worker fenced out, or killed before committing)
    committed nothing; the redelivery runs it again and the customer gets one reply."""
    harness = make_harness()
    await harness.webhook(text_message(ANA, "oi"))
    await harness.handle_fenced_out("default", ANA)
    await harness.drain()
    assert len(waha.to(ANA)) == 1
    page, _ = await read_page(aredis, _history(key_prefix, ANA))
    assert [e.direction for e in page] == ["in", "out"]


def _history(prefix: str, chat: str) -> HistoryKeys:
    keys = engine_keys_for("default", chat, 1, prefix)
    return HistoryKeys(keys.history, keys.history_meta)


async def test_business_phone_pauses_the_bot_but_our_echoes_do_not(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness()
    await harness.say(ANA, "oi")
    # WAHA echoes our own reply on message.any: not a human, the bot goes on.
    echo_id = waha.ids[0].split("_")[-1]
    await harness.webhook(from_me(ANA, waha.sent[0][1], echo_id))
    await harness.drain()
    assert (await state_of(aredis, key_prefix, ANA)).state is State.BOT
    # An echo that overtakes WAHA's answer to sendText is recognised by the send under way.
    inflight = WahaSessionKeys("default", key_prefix).inflight(ANA)
    await aredis.set(inflight, "em andamento", px=5000)
    await harness.webhook(from_me(ANA, "em andamento", "NOTYETKNOWN"))
    await harness.drain()
    assert (await state_of(aredis, key_prefix, ANA)).state is State.BOT
    # Someone answers from the business's phone: the bot keeps quiet in that chat.
    await harness.webhook(from_me(ANA, "Oi Ana, aqui é a Júlia!", "HUMAN1"))
    await harness.drain()
    assert (await state_of(aredis, key_prefix, ANA)).state is State.PAUSED
    sent_before = len(waha.sent)
    await harness.say(ANA, "Ana")
    assert len(waha.sent) == sent_before
    page, _ = await read_page(aredis, _history(key_prefix, ANA))
    assert [(e.direction, e.author) for e in page] == [
        ("in", "customer"), ("out", "bot"), ("out", "business"), ("in", "customer"),
    ]  # fmt: skip


async def test_crash_after_commit_before_send_is_sent_once(
    aredis, key_prefix, waha, make_harness
) -> None:
    crashed = make_harness()
    # The process "dies" right after the commit: its sender never starts the delivery (left
    # running, the kick would race the restarted process for the delivery lock).
    crashed.service.sender.kick = lambda token: None  # type: ignore[method-assign]
    await crashed.webhook(text_message(ANA, "oi"))
    await crashed.drain(deliver=False)  # committed, not sent
    assert waha.sent == []
    restarted = make_harness()
    await restarted.service.sender.sweep_once()
    await restarted.service.sender.drain()
    await restarted.service.sender.sweep_once()
    await restarted.service.sender.drain()
    assert len(waha.to(ANA)) == 1


async def test_history_acks_edits_reactions_and_pagination(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness()
    for n in range(5):
        await harness.webhook(text_message(ANA, f"m{n}", message_id=f"IN{n}"))
    await harness.drain()
    history = _history(key_prefix, ANA)
    everything, cursor = await read_page(aredis, history, limit=100)
    assert cursor is None and len(everything) > 5
    texts_in = [e.text for e in everything if e.direction == "in"]
    assert texts_in == ["m0", "m1", "m2", "m3", "m4"]
    pages, cursor = [], None
    while True:
        page, cursor = await read_page(aredis, history, limit=4, before=cursor)
        assert 0 < len(page) <= 4
        pages.insert(0, page)
        if cursor is None:
            break
    assert [e.cursor for page in pages for e in page] == [e.cursor for e in everything]
    # Acks move a reply's status forward only; a late DEVICE does not undo READ.
    out_id = waha.ids[0]
    for ack, name in ((3, "READ"), (2, "DEVICE")):
        document = text_message(ANA, "", event="message.ack")
        document["payload"] = {"id": out_id, "from": ANA, "fromMe": True, "ack": ack,
                               "ackName": name, "participant": None, "to": None}  # fmt: skip
        await harness.webhook(document)
    await harness.drain()
    page, _ = await read_page(aredis, history, limit=100)
    first_out = next(e for e in page if e.direction == "out")
    assert (first_out.status, first_out.waha_id) == ("read", out_id)
    # Edits, revokes and reactions are recorded on the message they touch.
    edit = text_message(ANA, "m0 (editada)", event="message.edited")
    edit["payload"]["editedMessageId"] = "IN0"
    react = text_message(ANA, "", event="message.reaction")
    react["payload"]["reaction"] = {"text": "👍", "messageId": f"false_{ANA}_IN1"}
    revoke = text_message(ANA, "", event="message.revoked")
    revoke["payload"] = {"before": {"id": f"false_{ANA}_IN2", "from": ANA},
                         "after": None, "revokedMessageId": "IN2"}  # fmt: skip
    for document in (edit, react, revoke):
        await harness.webhook(document)
    await harness.drain()
    page, _ = await read_page(aredis, history, limit=100)
    by_text = {e.text: e for e in page}
    assert by_text["m0"].edited_text == "m0 (editada)"
    assert by_text["m1"].reactions == {ANA: "👍"}
    assert by_text["m2"].revoked is True


async def test_ack_before_the_sender_recorded_the_id_is_kept(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness()
    await harness.webhook(text_message(ANA, "oi"))
    await harness.drain(deliver=False)
    # The ack for the id WAHA is about to give arrives before the sender's bookkeeping.
    document = text_message(ANA, "", event="message.ack")
    expected_id = f"true_{ANA}_3EB0{0:016X}"
    document["payload"] = {"id": expected_id, "from": ANA, "fromMe": True, "ack": 2,
                           "ackName": "DEVICE"}  # fmt: skip
    await harness.webhook(document)
    await harness.drain()
    page, _ = await read_page(aredis, _history(key_prefix, ANA))
    out = next(e for e in page if e.direction == "out")
    assert (out.waha_id, out.status) == (expected_id, "device")


async def test_a_changed_conversation_is_indexed_with_its_commit(
    aredis, key_prefix, waha, make_harness
) -> None:
    """The index writes ride in the commit's round trip, ahead of it (the commit's prelude,
    tests/worker/test_ack_prelude.py): listed, with its inactivity timer, as its state lands."""
    harness = make_harness(inactivity_close_seconds=600)
    await harness.say(ANA, "oi")
    state = await state_of(aredis, key_prefix, ANA)
    index = harness.service.index
    token = conversation_token("default", ANA)
    assert await aredis.zscore(index.conversations, token) == state.last_activity_at
    assert await aredis.zscore(index.timers, token) == state.last_activity_at + 600_000
