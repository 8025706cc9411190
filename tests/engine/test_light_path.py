"""The engine's cheap paths (issue 19): the events that change nothing in a conversation's state
- `message.any` twins, echoes of our own replies, delivery acks - are committed without reading
the state or asking the brain, in the conversation's order; one sendSeen per inbound burst; a
reply's bookkeeping in fewer Redis round trips. Counted on the private Redis's own command
statistics (INFO commandstats), not timed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import respx
from redis.asyncio.client import Pipeline

import tests.engine.harness as harness_module
from engine.brain import Brain, Decision, Turn
from engine.history import HistoryKeys, read_page
from engine.outbox import new_entry, outbox_writes
from engine.sender import OUTBOX_SENT, OUTBOX_SETTLE, SEND_BEGIN, SEND_MARK
from engine.service import EngineService
from engine.state import State, load_state
from engine.waha_client import WahaClient
from shared.keys import engine_keys_for
from shared.queue_consumer import Prelude
from tests.engine.harness import WAHA, FakeWaha, Harness, apply_writes, settings_for
from tests.support.polling import async_wait_until
from tests.support.waha import text_message

ANA = "5511987650001@c.us"


async def command_calls(aredis: Any) -> dict[str, int]:
    stats = await aredis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def from_me(chat: str, text: str, message_id: str, event: str = "message.any") -> dict[str, Any]:
    document = text_message(chat, text, event=event)
    document["payload"].update(
        {"id": f"true_{chat}_{message_id}", "fromMe": True, "from": chat, "to": chat, "ack": 1}
    )
    return document


def reaction(chat: str, waha_id: str, emoji: str) -> dict[str, Any]:
    document = text_message(chat, "", event="message.reaction")
    document["payload"] = {
        "id": f"false_{chat}_R{waha_id[-6:]}", "from": chat, "fromMe": False,
        "reaction": {"text": emoji, "messageId": waha_id},
    }  # fmt: skip
    return document


def ack(chat: str, waha_id: str, level: int) -> dict[str, Any]:
    document = text_message(chat, "", event="message.ack")
    document["payload"] = {"id": waha_id, "from": chat, "fromMe": True, "ack": level}
    return document


async def test_twins_echoes_and_acks_skip_the_state_and_the_brain(
    aredis, key_prefix, make_harness
) -> None:
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        harness = make_harness()
        inbound = text_message(ANA, "oi", message_id="IN1")
        await harness.webhook(inbound)
        await harness.drain()
        keys = engine_keys_for("default", ANA, 1, key_prefix)
        before = await load_state(aredis, keys.state)
        replies = list(waha.sent)
        assert len(replies) == 1
        await aredis.config_resetstat()
        # What WAHA sends after one customer message and our reply: the message's twin on
        # message.any, our reply's echo, and its acks (DEVICE, then READ).
        # (The queue's dedupe may drop the twin already: it repeats the message's id.)
        twin = dict(inbound, id="evt_twin", event="message.any")
        echo_id = waha.ids[0].split("_")[-1]
        documents = [
            twin, from_me(ANA, replies[0][1], echo_id), ack(ANA, waha.ids[0], 2),
            ack(ANA, waha.ids[0], 3),
        ]  # fmt: skip
        accepted = [await harness.webhook(document) for document in documents]
        assert accepted[1:] == [True, True, True]
        # None of them reaches a turn (but the twin, if it was queued): the echo and the acks
        # name a message in the history already, so the gateway's script settled them at the
        # door (shared/enqueue.py; tests/gateway/test_receipts.py).
        assert await harness.drain() == accepted[0]
        calls = await command_calls(aredis)
    # Nobody read the conversation's state (the turn's HGETALL), nothing was answered.
    assert calls.get("hgetall", 0) == 0
    assert waha.sent == replies
    assert await load_state(aredis, keys.state) == before
    assert before.state is State.BOT
    # The acks were recorded, in order, on our reply; the echo added nothing.
    page, _ = await read_page(aredis, HistoryKeys(keys.history, keys.history_meta))
    assert [(e.direction, e.status) for e in page] == [("in", "received"), ("out", "read")]


async def test_a_message_from_the_business_phone_still_takes_the_full_turn(
    aredis, key_prefix, make_harness
) -> None:
    with respx.mock(assert_all_called=False) as router:
        FakeWaha(router)
        harness = make_harness()
        await harness.say(ANA, "oi")
        await harness.webhook(from_me(ANA, "Oi Ana, aqui é a Júlia!", "HUMAN1"))
        await harness.drain()
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    assert (await load_state(aredis, keys.state)).state is State.PAUSED


async def test_one_send_seen_per_inbound_burst(aredis, key_prefix, make_harness) -> None:
    with respx.mock(assert_all_called=False) as router:
        FakeWaha(router)
        harness = make_harness(inactivity_close_seconds=1)
        # Two messages in one burst: two replies, delivered together, one sendSeen.
        await harness.webhook(text_message(ANA, "oi"))
        await harness.webhook(text_message(ANA, "Ana"))
        await harness.drain(deliver=False)
        await harness.drain()
        paths = [call.request.url.path for call in router.calls]
        assert paths.count("/api/sendText") == 2
        assert paths.count("/api/sendSeen") == 1
        assert paths[0] == "/api/sendSeen"
        # A reply to no new message (the inactivity goodbye) marks nothing seen.
        keys = engine_keys_for("default", ANA, 1, key_prefix)

        async def closed() -> bool:
            await harness.service.timers_once()
            await harness.drain()
            return (await load_state(aredis, keys.state)).state is State.CLOSED

        await async_wait_until(closed, timeout=10, interval=0.2, what="inactivity close")
        paths = [call.request.url.path for call in router.calls]
        assert paths.count("/api/sendText") == 3
        assert paths.count("/api/sendSeen") == 1


@dataclass
class RoundTrips:
    """What went to Redis, one entry a round trip."""

    trips: list[str] = field(default_factory=list)  # a command's name, or "pipeline"
    single: list[str] = field(default_factory=list)  # the commands sent alone
    piped: list[list[str]] = field(default_factory=list)  # each pipeline's commands

    @property
    def commands(self) -> set[str]:
        """Every command sent, alone or in a pipeline."""
        return set(self.single) | {command for pipeline in self.piped for command in pipeline}


@contextmanager
def round_trips(aredis: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    """Records every round trip `aredis` makes inside the block (commands and pipelines)."""
    seen = RoundTrips()
    execute_command = aredis.execute_command
    pipelined = Pipeline.execute

    async def command(*args: Any, **options: Any) -> Any:
        seen.trips.append(str(args[0]))
        seen.single.append(str(args[0]))
        return await execute_command(*args, **options)

    async def pipeline(self: Pipeline, *args: Any, **options: Any) -> Any:
        seen.trips.append("pipeline")
        seen.piped.append([str(c[0][0]) for c in self.command_stack])
        return await pipelined(self, *args, **options)

    monkeypatch.setattr(aredis, "execute_command", command)
    monkeypatch.setattr(Pipeline, "execute", pipeline)
    try:
        yield seen
    finally:
        monkeypatch.undo()


async def test_a_reply_is_sent_and_recorded_in_fewer_round_trips(
    aredis, key_prefix, make_harness, monkeypatch
) -> None:
    """One reply's delivery: (the lock + head + park), (the in-flight marker + send_begin),
    (ours + sent, which ends the delivery and its lock with the last reply + marker gone + the
    next head + park: empty): 3 round trips. Before: 11 (the lock alone, the head and the park
    apart on each loop, a lock renewal per reply, ours, sent and the marker's removal apart),
    then 7 (the lock and each look at the head alone), then 5 (a closing settle for the lock),
    then 4 (send_begin and the marker apart)."""
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    entries = [new_entry(ANA, "Olá!")]
    await apply_writes(aredis, outbox_writes(keys, entries, retention_seconds=3600, now_ms=1))
    with respx.mock(assert_all_called=False) as router:
        FakeWaha(router)
        harness = make_harness()
        for script in (SEND_MARK, SEND_BEGIN, OUTBOX_SENT, OUTBOX_SETTLE):
            await script.load(aredis)  # a first NOSCRIPT would cost a round trip more
        with round_trips(aredis, monkeypatch) as seen:
            await harness.service.sender.deliver(f"default|{ANA}")
        paths = [call.request.url.path for call in router.calls]
    assert paths == ["/api/sendSeen", "/api/sendText"]
    trips = seen.trips
    assert trips == ["pipeline", "pipeline", "pipeline"]
    assert seen.piped == [
        ["SET", "LINDEX", "EXISTS"],
        ["EVALSHA", "EVALSHA"],  # send_mark.lua, send_begin.lua
        ["SET", "EVALSHA", "DEL", "LINDEX", "EXISTS"],
    ]
    assert await aredis.llen(keys.outbox) == 0
    assert await aredis.exists(keys.sending) == 0  # the lock went with the last record
    assert await aredis.zscore(keys.outbox_pending, f"default|{ANA}") is None
    page, _ = await read_page(aredis, HistoryKeys(keys.history, keys.history_meta))
    assert [(e.text, e.status) for e in page] == [("Olá!", "sent")]


async def test_a_reply_committed_after_the_delivery_ended_is_left_to_its_own_delivery(
    aredis, key_prefix, make_harness, monkeypatch
) -> None:
    """The last reply's record released the delivery lock; a reply committed in the instant
    before the same round trip read the outbox's head is seen there, but it is not this
    delivery's to send (another sender may hold the lock already: its commit kicked one). The
    delivery ends without even asking (no send_begin.lua, no closing settle), and the reply
    waits, due, for the delivery its commit started."""
    token = f"default|{ANA}"
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    await apply_writes(
        aredis, outbox_writes(keys, [new_entry(ANA, "Olá!")], retention_seconds=3600, now_ms=1)
    )
    later = new_entry(ANA, "Mais uma coisa")
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        harness = make_harness()
        sender = harness.service.sender
        mark_sent = sender._mark_sent

        async def committed_meanwhile(*args: Any, **options: Any) -> Any:
            recorded, look = await mark_sent(*args, **options)
            await apply_writes(
                aredis, outbox_writes(keys, [later], retention_seconds=3600, now_ms=2)
            )
            return recorded, replace(look, head=await aredis.lindex(keys.outbox, 0))

        monkeypatch.setattr(sender, "_mark_sent", committed_meanwhile)
        for script in (SEND_MARK, SEND_BEGIN, OUTBOX_SENT, OUTBOX_SETTLE):
            await script.load(aredis)  # a first NOSCRIPT would cost a round trip more
        with round_trips(aredis, monkeypatch) as seen:
            await sender.deliver(token)
        assert waha.to(ANA) == ["Olá!"]
        # Its own: the lock + look, the marker + send_begin, the record (then the test's
        # writes and read). No second send_begin, no closing settle.
        assert seen.trips[:3] == ["pipeline", "pipeline", "pipeline"]
        assert seen.piped[1] == ["EVALSHA", "EVALSHA"]  # send_mark.lua, send_begin.lua
        assert seen.piped[:3].count(["EVALSHA", "EVALSHA"]) == 1
        assert "EVALSHA" not in seen.single
        assert await aredis.exists(keys.sending) == 0
        assert await aredis.zscore(keys.outbox_pending, token) is not None  # due: swept

        monkeypatch.undo()
        await sender.deliver(token)  # what its commit's kick does
        assert waha.to(ANA) == ["Olá!", "Mais uma coisa"]


async def name_turn(harness: Harness, aredis: Any, monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    """Ana says "oi" (greeted, asked her name), then her name: that turn's round trips."""
    await harness.webhook(text_message(ANA, "oi"))
    await harness.drain()
    await harness.webhook(text_message(ANA, "Ana", message_id="IN2"))
    with round_trips(aredis, monkeypatch) as seen:
        await harness.drain(deliver=False)
    await harness.drain()
    return seen


class HistoryReader:
    """A brain that reads the history (as the AI agent does): the menu's answers, and every
    history it was given."""

    def __init__(self, menu: Brain) -> None:
        self.menu = menu
        self.histories: list[list[str]] = []

    async def decide(self, turn: Turn) -> Decision:
        self.histories.append([entry.text for entry in turn.history])
        return await self.menu.decide(turn)


async def test_a_customer_message_reads_state_marker_and_history_in_one_round_trip(
    aredis, redis_url, key_prefix, monkeypatch
) -> None:
    """The state, whether the message is in the history already, and the newest entries for
    a brain that reads them: one pipeline, not three round trips."""
    settings = settings_for(key_prefix, redis_url)
    plain = EngineService(aredis, settings, outbound=WahaClient(WAHA))
    brain = HistoryReader(plain.engine.tools.brain)
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        service = EngineService(aredis, settings, outbound=WahaClient(WAHA), brain=brain)
        harness = Harness(aredis, settings, service)
        seen = await name_turn(harness, aredis, monkeypatch)
        await harness.aclose()
        await plain.aclose()
    assert waha.to(ANA)[-1].startswith("Como posso ajudar, Ana?")
    assert not {"HGETALL", "HGET", "XREVRANGE"} & set(seen.single)
    assert ["HGETALL", "HGET", "XREVRANGE"] in seen.piped
    assert brain.histories[-1][0] == "oi"  # and it was given to the brain


async def test_the_menu_is_not_given_the_history_it_does_not_read(
    aredis, key_prefix, make_harness, monkeypatch
) -> None:
    """The menus answer from the state's step and the message: their turn neither reads nor
    decodes the history (a fifth of a worker's CPU per message in the menu's load test)."""
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        seen = await name_turn(make_harness(), aredis, monkeypatch)
    assert waha.to(ANA)[-1].startswith("Como posso ajudar, Ana?")
    assert ["HGETALL", "HGET"] in seen.piped
    assert not {"XREVRANGE", "HMGET"} & seen.commands


async def test_an_ack_reads_its_entry_and_status_in_one_round_trip(
    aredis, key_prefix, make_harness, monkeypatch
) -> None:
    """Two acks follow every reply: each finds the entry its WhatsApp id names and that entry's
    status in one script call (history_fact.lua), not two HGETs in a row; a late lower ack
    does not take the status back."""
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        harness = make_harness()
        await harness.say(ANA, "oi")
        await harness.webhook(ack(ANA, waha.ids[0], 3))
        with round_trips(aredis, monkeypatch) as seen:
            await harness.drain(deliver=False)
        await harness.webhook(ack(ANA, waha.ids[0], 2))
        await harness.drain()
    keys = engine_keys_for("default", ANA, 1, key_prefix)
    assert not {"HGET", "HMGET", "HGETALL"} & seen.commands
    page, _ = await read_page(aredis, HistoryKeys(keys.history, keys.history_meta))
    assert [(e.direction, e.status) for e in page] == [("in", "received"), ("out", "read")]


async def test_acks_echoes_and_events_without_a_turn_let_their_commit_ride(
    aredis, key_prefix, make_harness, monkeypatch
) -> None:
    """The light path has nothing to do after its commit: it commits with `commit_later`, which
    the worker sends with the turn's release when the event ends the turn (one round trip for
    both: tests/worker/test_ack_later.py). A customer's first message, whose turn has a follow-up
    under the lease after its commit (the state's index), commits at once; the next one, whose
    only follow-up is the sender's kick, rides too, the kick running once it has landed."""
    used: list[tuple[str, str]] = []
    plain = harness_module.Ctx

    class Recording(plain):
        async def commit(
            self, writes: Iterable[Sequence[Any]] = (), *, prelude: Prelude | None = None
        ) -> None:
            used.append(("commit", self.message_id))
            await super().commit(writes, prelude=prelude)

        async def commit_later(
            self,
            writes: Iterable[Sequence[Any]] = (),
            *,
            prelude: Prelude | None = None,
            then: Callable[[], None] | None = None,
        ) -> None:
            used.append(("commit_later", self.message_id))
            await super().commit_later(writes, prelude=prelude, then=then)

    monkeypatch.setattr(harness_module, "Ctx", Recording)
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        harness = make_harness()
        await harness.say(ANA, "oi")
        assert [how for how, _ in used] == ["commit"]
        used.clear()
        # Her next message leaves the state where it was: nothing follows its commit but the
        # sender's kick, so it rides with the release too (and the kick still comes).
        await harness.say(ANA, "oi de novo")
        assert [how for how, _ in used] == ["commit_later"]
        assert len(waha.to(ANA)) == 2
        used.clear()
        # A reaction to our reply; a receipt reaches a turn only when its message is not
        # recorded yet (the gateway settles the others, and our reply's echo, at the door):
        # the sender will pick up what the turn parks.
        await harness.webhook(reaction(ANA, waha.ids[0], "👍"))
        await harness.webhook(ack(ANA, f"true_{ANA}_3EB0NOTRECORDED", 2))
        await harness.webhook(text_message("status@broadcast", "promo", message_id="B1"))
        await harness.drain()
    assert [how for how, _ in used] == ["commit_later", "commit_later", "commit_later"]
