"""A late echo of a recorded send settles nothing (issue 11, item 2): two replies with the same
text in a row, the first one's echo arriving while the second is under way. Driven through the
real queue protocol and handler (tests/engine/harness.py), WAHA stood in for by FakeWaha."""

from __future__ import annotations

import httpx
import respx

from engine.history import HistoryKeys, read_page
from engine.outbox import OutboxEntry
from engine.sender import InflightSend, inflight_chats
from engine.state import State, load_state
from engine.waha_client import SentMessage
from shared.keys import WahaSessionKeys, engine_keys_for
from tests.engine.harness import WAHA, mock_courtesy, texts_sent
from tests.engine.support import CHAT, commit_replies, make_sender, sent_answer
from tests.support.waha import from_me

ANA = "5511987650001@c.us"
NOT_UNDERSTOOD = "Não entendi. Responda com o número de uma opção."
TOKEN = f"default|{CHAT}"


async def test_a_late_echo_of_a_recorded_send_does_not_settle_the_next_same_text_reply(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness()
    await harness.say(ANA, "oi")
    keys = engine_keys_for("default", ANA, harness.settings.queue_shards, key_prefix)
    # The first of two replies with the same text goes out and is recorded.
    await commit_replies(aredis, key_prefix, NOT_UNDERSTOOD, chat=ANA)
    await harness.drain()
    sent_before = len(waha.sent) - 1
    assert waha.to(ANA)[sent_before:] == [NOT_UNDERSTOOD]
    # The second one's send is under way (its in-flight marker has the same text) and fails.
    waha.failures.append(httpx.Response(500, json={"statusCode": 500, "message": "boom"}))
    await commit_replies(aredis, key_prefix, NOT_UNDERSTOOD, chat=ANA)
    await harness.drain()
    assert waha.failures == [] and len(waha.to(ANA)) == sent_before + 1
    assert await aredis.llen(keys.outbox) == 1
    first_id = waha.ids[-1]
    # The first reply's echo arrives late, while the second is still to be sent.
    await harness.webhook(from_me(ANA, NOT_UNDERSTOOD, first_id.split("_")[-1]))
    await harness.drain(deliver=False)
    assert await aredis.llen(keys.outbox) == 1  # the second reply is still to be sent
    history = HistoryKeys(keys.history, keys.history_meta)
    page, _ = await read_page(aredis, history)
    outs = [e for e in page if e.direction == "out" and e.text == NOT_UNDERSTOOD]
    assert [(e.status, e.waha_id) for e in outs] == [("sent", first_id), ("queued", "")]
    # The echo was ours: the bot is not paused as if the business had answered by hand.
    state = await load_state(aredis, keys.state)
    assert state.state is State.BOT
    # The second reply's retry goes out, under its own id.
    await harness.drain()
    assert waha.to(ANA)[sent_before:] == [NOT_UNDERSTOOD, NOT_UNDERSTOOD]
    page, _ = await read_page(aredis, history)
    outs = [e for e in page if e.direction == "out" and e.text == NOT_UNDERSTOOD]
    assert [(e.status, e.waha_id) for e in outs] == [("sent", first_id), ("sent", waha.ids[-1])]
    assert waha.ids[-1] != first_id


@respx.mock
async def test_settle_echo_refuses_an_id_recorded_for_another_reply(aredis, key_prefix) -> None:
    # The same story on the sender alone: what the handler does with an echo whose text matches
    # the send under way (engine/turn/business.py) is Sender.settle_echo.
    mock_courtesy()
    error = httpx.Response(500, json={"statusCode": 500, "message": "Internal server error"})
    send = respx.post(f"{WAHA}/api/sendText").mock(
        side_effect=[sent_answer(1), error, sent_answer(2)]
    )
    sender, client = make_sender(aredis, key_prefix)
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    await commit_replies(aredis, key_prefix, NOT_UNDERSTOOD)
    await sender.deliver(TOKEN)  # h1 goes out and is recorded
    await commit_replies(aredis, key_prefix, NOT_UNDERSTOOD)
    await sender.deliver(TOKEN)  # h2's send fails; its marker stays
    [h2] = [OutboxEntry.decode(raw) for raw in await aredis.lrange(keys.outbox, 0, -1)]
    marker = InflightSend.decode(
        await aredis.get(WahaSessionKeys("default", key_prefix).inflight(CHAT))
    )
    assert marker.mid == h2.mid
    h1_id = f"true_{CHAT}_3EB0{1:016X}"
    assert not await sender.settle_echo(TOKEN, marker, SentMessage(h1_id), marker.at_ms)
    assert [OutboxEntry.decode(r).mid for r in await aredis.lrange(keys.outbox, 0, -1)] == [h2.mid]
    assert await aredis.hget(keys.history_meta, f"{h2.mid}:status") != b"sent"
    assert await aredis.hget(keys.history_meta, f"{h2.mid}:waha_id") is None
    await aredis.zadd(keys.outbox_pending, {TOKEN: 0})  # its backoff is over
    await sender.deliver(TOKEN)
    assert texts_sent(send) == [NOT_UNDERSTOOD] * 3
    assert await aredis.llen(keys.outbox) == 0
    assert await aredis.hget(keys.history_meta, f"{h2.mid}:waha_id") == (
        f"true_{CHAT}_3EB0{2:016X}".encode()
    )
    await client.aclose()


def test_a_marker_is_looked_for_under_both_forms_of_a_phone_chat() -> None:
    """A reply is marked under the chat it is sent to, `@c.us` also for a raw jid."""
    raw = "5511987650001:22@s.whatsapp.net"
    assert inflight_chats(raw) == [raw, ANA]
    assert inflight_chats(ANA) == [ANA]
    assert inflight_chats("120363000000000001@g.us") == ["120363000000000001@g.us"]
