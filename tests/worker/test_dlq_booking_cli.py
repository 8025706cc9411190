"""`wsm dlq booking-webhook` (worker/dlq_booking.py): the booking webhook events the workers
gave up on, listed, sent again and dropped, on the run's private Redis. Dead letters are made
the way the product makes them: a real booking (BookingStore's script queues its event) and the real
deliverer (BookingWebhook) facing a receiver that refuses it. A replayed event is then delivered
by the real deliverer, once, with the body and id it had. Every refusal and every bad command
line is checked to have stored nothing (every key of the test's prefix, byte for byte)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from engine.agent.booking_dead_letters import (
    BookingReplayResult,
    list_booking_dead_letters,
    replay_booking_dead_letters,
)
from engine.agent.booking_webhook import BookingWebhook
from engine.agent.bookings import BookingStore, Customer
from engine.parts import calendar_from
from shared.clock import now_ms
from shared.dead_letters import DEFAULT_DEAD_LETTER_LIMITS, DeadLetterLimits
from shared.keys import CalendarKeys
from shared.redis_client import connect
from shared.settings import Settings
from tests.worker.support.fleet import fleet_environment, run_wsm
from tests.worker.support.in_process import has_deadlines, record_clients
from worker import dlq_cli

HOOKS = "https://crm.test/hooks/bookings"
SECRET = "crm-secret-0123456789abcdef01234567"  # >= 32 characters
ANA = "5511987650001@c.us"
BIA = "5511987650002@c.us"


class Stand:
    """The test's Redis, key prefix and booking store, and the receiver's answers."""

    def __init__(self, client: Any, redis_url: str, prefix: str) -> None:
        self.client = client
        self.redis_url = redis_url
        self.prefix = prefix
        self.keys = CalendarKeys(prefix)
        self.store = BookingStore(
            client, calendar_from(self.settings()), prefix=prefix, max_per_customer=3,
            retention_seconds=3600, webhook_enabled=True,
        )  # fmt: skip
        self.slots = self._slots()
        # What the receiver got (every request) and answers next (default: accepts).
        self.received: list[httpx.Request] = []
        self.answer: Callable[[httpx.Request], httpx.Response] = lambda request: httpx.Response(200)
        # The deliverer's dead-letter limits (the settings' by default).
        self.dead_letters = DEFAULT_DEAD_LETTER_LIMITS

    def settings(self, **extra: Any) -> Settings:
        """As the environment would give them (never a developer `.env`)."""
        values: dict[str, Any] = {
            "REDIS_URL": self.redis_url,
            "WSM_KEY_PREFIX": self.prefix,
            "WSM_BOOKING_WEBHOOK_URL": HOOKS,
            "WSM_BOOKING_WEBHOOK_SECRET": SECRET,
            **extra,
        }
        return Settings(_env_file=None, **values)

    def _slots(self) -> Any:
        calendar = self.store.calendar
        now = calendar.now()
        return calendar.slots(
            calendar.services[0], now.date(), now.date() + timedelta(days=14), now
        )

    async def book(self, chat: str, name: str) -> str:
        """A booking of `chat`'s customer; its webhook event is queued with it. -> booking id"""
        booking_id = "bk" + uuid.uuid4().hex[:8]
        customer = Customer(f"default|{chat}", name, chat.partition("@")[0])
        await self.store.book(customer, next(self.slots), booking_id=booking_id)
        return booking_id

    async def deliver(self, *, max_attempts: int = 1) -> int:
        """One pass of the workers' deliverer against the receiver."""

        def receive(request: httpx.Request) -> httpx.Response:
            self.received.append(request)
            return self.answer(request)

        hook = BookingWebhook(
            self.client, prefix=self.prefix, url=HOOKS, secret=SECRET.encode(), timeout_seconds=5,
            max_attempts=max_attempts, retry_base_ms=1, retry_max_ms=2,
            dead_letters=self.dead_letters,
            http=httpx.AsyncClient(transport=httpx.MockTransport(receive)),
        )  # fmt: skip
        try:
            return await hook.deliver_due()
        finally:
            await hook.aclose()

    async def bury(self, chat: str, name: str, status: int = 410, text: str = "gone") -> str:
        """A booking whose event the receiver refuses for good: dead-lettered. -> event id"""
        await self.book(chat, name)
        self.answer = lambda request: httpx.Response(status, text=text)
        try:
            assert await self.deliver() == 0
        finally:
            self.answer = lambda request: httpx.Response(200)
        return self.received[-1].headers["x-wsm-delivery"]

    async def stored(self) -> dict[bytes, bytes]:
        """Every key of the test's prefix and its value (DUMP)."""
        keys = [k async for k in self.client.scan_iter(match=f"{self.prefix}:*", count=1000)]
        return {key: await self.client.dump(key) for key in keys}

    async def dead(self) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in await self.client.lrange(self.keys.hooks_dead, 0, -1)]


@pytest.fixture
async def stand(redis_url: str, key_prefix: str) -> AsyncIterator[Stand]:
    client = connect(redis_url)
    try:
        yield Stand(client, redis_url, key_prefix)
    finally:
        await client.aclose()


async def wsm_dlq(stand: Stand, *argv: str, **settings: Any) -> int:
    """`wsm dlq <argv>` in-process, with the stand's settings (and `settings` over them)."""
    args = dlq_cli.build_parser().parse_args(list(argv))
    return await dlq_cli.run(stand.settings(**settings), args)


def lines(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str]]:
    out, err = capsys.readouterr()
    return out.splitlines(), err.splitlines()


# --- list ---------------------------------------------------------------------------------


async def test_list_prints_one_line_per_event_oldest_first(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await stand.bury(ANA, "Ana Souza", 410, "endpoint\nremoved")
    second = await stand.bury(BIA, "Bia Lima", 401, "bad signature")
    entries = await stand.dead()

    assert await wsm_dlq(stand, "booking-webhook", "list") == 0

    expected = []
    for entry, chat, status, error in (
        (entries[0], ANA, 410, "endpoint removed"),
        (entries[1], BIA, 401, "bad signature"),
    ):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["at"] / 1000))
        booking = entry["body"]["booking"]
        expected.append(
            f"{when}  attempts=1  booking.booked       default|{chat}  {entry['id']}  "
            f"{booking['id']} {booking['start']}  HTTP {status}: {error}"
        )
    assert [entry["id"] for entry in entries] == [first, second]
    assert lines(capsys) == (expected, [])


async def test_list_json_gives_every_field_and_the_body_as_sent(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    event_id = await stand.bury(ANA, "Ana Souza", 422, "unknown service")
    [entry] = await stand.dead()

    assert await wsm_dlq(stand, "booking-webhook", "list", "--json") == 0

    [line] = capsys.readouterr().out.splitlines()
    assert orjson.loads(line) == {
        "id": event_id,
        "event": "booking.booked",
        "conversation": f"default|{ANA}",
        "booking": entry["body"]["booking"]["id"],
        "start": entry["body"]["booking"]["start"],
        "attempts": 1,
        "at": entry["at"],
        "error": "HTTP 422: unknown service",
        "body": orjson.loads(stand.received[-1].content),
    }


async def test_list_of_nothing_says_so_and_all_finds_nothing_to_do(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await wsm_dlq(stand, "booking-webhook", "list") == 0
    assert capsys.readouterr().out == "no booking webhook dead letters\n"
    for command in ("replay", "drop"):
        assert await wsm_dlq(stand, "booking-webhook", command, "--all") == 0
        assert capsys.readouterr().out == "no booking webhook dead letters\n"
    assert await stand.stored() == {}


# --- replay -------------------------------------------------------------------------------


async def test_replay_puts_the_event_back_once_and_the_workers_deliver_it_once(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    event_id = await stand.bury(ANA, "Ana Souza", 503, "maintenance")
    other = await stand.bury(BIA, "Bia Lima")
    first_try = stand.received[0]
    before = now_ms()

    assert await wsm_dlq(stand, "booking-webhook", "replay", event_id) == 0
    assert lines(capsys) == ([f"{event_id}: replayed"], [])

    # Back among the pending events as it was first queued: its body byte for byte, due now,
    # no attempts; out of the dead letters, where the other event stays.
    keys = stand.keys
    assert [entry["id"] for entry in await stand.dead()] == [other]
    assert await stand.client.hgetall(keys.hooks_body) == {event_id.encode(): first_try.content}
    [(member, due)] = await stand.client.zrange(keys.hooks_due, 0, -1, withscores=True)
    assert member == event_id.encode() and before <= due <= now_ms()
    assert not await stand.client.exists(keys.hooks_attempts)

    # A second replay finds it gone, and stores nothing.
    stored = await stand.stored()
    assert await wsm_dlq(stand, "booking-webhook", "replay", event_id) == 1
    assert lines(capsys) == ([], [f"{event_id}: no such booking webhook dead letter"])
    assert await stand.stored() == stored

    # The workers deliver it once, signed anew, with its id and body; then nothing is left.
    sent = len(stand.received)
    assert await stand.deliver() == 1
    [again] = stand.received[sent:]
    assert again.headers["x-wsm-delivery"] == event_id and again.content == first_try.content
    assert again.headers["x-wsm-event"] == "booking.booked"
    assert await stand.deliver() == 0
    assert len(stand.received) == sent + 1
    assert not await stand.client.exists(keys.hooks_body, keys.hooks_due, keys.hooks_attempts)


async def test_replaying_all_or_a_conversation_puts_back_only_those(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    ana = [await stand.bury(ANA, "Ana Souza"), await stand.bury(ANA, "Ana Souza")]
    bia = await stand.bury(BIA, "Bia Lima")

    # The raw WhatsApp form of her chat is the same conversation.
    raw_chat = "default|5511987650001:7@s.whatsapp.net"
    assert await wsm_dlq(stand, "booking-webhook", "replay", "--conversation", raw_chat) == 0
    assert lines(capsys) == ([f"{ana[0]}: replayed", f"{ana[1]}: replayed"], [])
    assert [entry["id"] for entry in await stand.dead()] == [bia]
    assert await stand.client.zcard(stand.keys.hooks_due) == 2

    assert await wsm_dlq(stand, "booking-webhook", "replay", "--all") == 0
    assert lines(capsys) == ([f"{bia}: replayed"], [])
    assert await stand.dead() == []
    assert await stand.client.zcard(stand.keys.hooks_due) == 3


async def test_two_replays_at_once_put_an_event_back_once(stand: Stand) -> None:
    """Two operators (or a command run twice) replaying the same event: the script takes it out
    of the dead letters in the step that queues it, so the second finds it gone."""
    event_id = await stand.bury(ANA, "Ana Souza")
    other = await stand.bury(BIA, "Bia Lima")
    ana, bia = await list_booking_dead_letters(stand.client, stand.prefix)

    answers = await asyncio.gather(
        *(replay_booking_dead_letters(stand.client, stand.prefix, [ana], now_ms())
          for _ in range(2))
    )  # fmt: skip

    assert sorted(answers, key=lambda a: a[0].value) == [
        [BookingReplayResult.GONE],
        [BookingReplayResult.REPLAYED],
    ]
    assert await stand.client.zrange(stand.keys.hooks_due, 0, -1) == [event_id.encode()]
    # The same letter given twice in one call goes back once.
    twice = await replay_booking_dead_letters(stand.client, stand.prefix, [bia, bia], now_ms())
    assert twice == [BookingReplayResult.REPLAYED, BookingReplayResult.GONE]
    due = await stand.client.zrange(stand.keys.hooks_due, 0, -1)
    assert sorted(due) == sorted([event_id.encode(), other.encode()])
    assert await stand.dead() == []


async def test_on_a_redis_cluster(
    redis_cluster_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The script's keys (the dead letters, the pending events, each letter's booking) share
    the calendar's hash tag: one slot, one node."""
    client = connect(redis_cluster_url)
    try:
        stand = Stand(client, redis_cluster_url, key_prefix)
        event_id = await stand.bury(ANA, "Ana Souza")
        other = await stand.bury(BIA, "Bia Lima")
        assert await wsm_dlq(stand, "booking-webhook", "replay", event_id, "evt_nope") == 1
        assert lines(capsys) == (
            [f"{event_id}: replayed"],
            ["evt_nope: no such booking webhook dead letter"],
        )
        assert await client.zrange(stand.keys.hooks_due, 0, -1) == [event_id.encode()]
        assert await wsm_dlq(stand, "booking-webhook", "drop", other) == 0
        assert await stand.dead() == []
    finally:
        await client.aclose()


# --- refusals: each leaves the event listed and stores nothing ---------------------------


async def test_an_unknown_id_or_conversation_is_an_error_and_changes_nothing(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    event_id = await stand.bury(ANA, "Ana Souza")
    stored = await stand.stored()
    for command in ("replay", "drop"):
        assert await wsm_dlq(stand, "booking-webhook", command, "evt_nope", "evt_nope") == 1
        assert lines(capsys) == ([], ["evt_nope: no such booking webhook dead letter"])
        chat = f"default|{BIA}"
        assert await wsm_dlq(stand, "booking-webhook", command, "--conversation", chat) == 1
        assert lines(capsys) == ([], [f"conversation {chat}: no such booking webhook dead letter"])
        assert await stand.stored() == stored
    # A known id beside an unknown one: the known is handled, the unknown said (exit 1).
    assert await wsm_dlq(stand, "booking-webhook", "replay", event_id, "evt_nope") == 1
    assert lines(capsys) == (
        [f"{event_id}: replayed"],
        ["evt_nope: no such booking webhook dead letter"],
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["replay"],
        ["drop"],
        ["replay", "evt_1", "--all"],
        ["drop", "--all", "--conversation", f"default|{ANA}"],
        ["replay", "evt_1", "--conversation", f"default|{ANA}"],
        ["replay", "--resend-unknown", "--all"],
        ["list", "--all"],
        [],
    ],
)
async def test_a_bad_command_line_exits_2_and_changes_nothing(
    stand: Stand, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    await stand.bury(ANA, "Ana Souza")
    stored = await stand.stored()
    with pytest.raises(SystemExit) as exited:
        dlq_cli.main(["booking-webhook", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: wsm dlq") and "error: " in err
    assert await stand.stored() == stored


async def test_an_event_whose_customer_was_erased_is_not_replayed(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    """The erase deletes the customer's bookings before their dead letters: a replay in
    between must not put their name and phone back among the pending events."""
    event_id = await stand.bury(ANA, "Ana Souza")
    await stand.store.erase_customer(f"default|{ANA}")
    stored = await stand.stored()
    assert [entry["id"] for entry in await stand.dead()] == [event_id]

    assert await wsm_dlq(stand, "booking-webhook", "replay", event_id) == 1

    assert lines(capsys) == (
        [
            f"{event_id}: not replayed: its booking is no longer kept (the customer was "
            "erased, or it is past the bookings' retention)"
        ],
        [],
    )
    assert await stand.stored() == stored


async def test_an_event_already_pending_is_not_replayed(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    event_id = await stand.bury(ANA, "Ana Souza")
    # Its id is waiting to be delivered (put back by hand, say).
    await stand.client.hset(stand.keys.hooks_body, event_id, stand.received[-1].content)
    stored = await stand.stored()

    assert await wsm_dlq(stand, "booking-webhook", "replay", "--all") == 1

    assert lines(capsys) == (
        [f"{event_id}: not replayed: an event of this id is waiting to be delivered already"],
        [],
    )
    assert await stand.stored() == stored


async def test_an_unreadable_entry_is_listed_refused_and_can_be_dropped(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    await stand.client.rpush(stand.keys.hooks_dead, b"not json")
    stored = await stand.stored()

    assert await wsm_dlq(stand, "booking-webhook", "list", "--json") == 0
    assert orjson.loads(capsys.readouterr().out)["id"] == ""
    assert await wsm_dlq(stand, "booking-webhook", "replay", "--all") == 1
    assert lines(capsys) == ([": not replayed: the entry cannot be read (drop it)"], [])
    assert await stand.stored() == stored

    assert await wsm_dlq(stand, "booking-webhook", "drop", "--all") == 0
    assert lines(capsys) == ([": dropped"], [])
    assert await stand.stored() == {}


async def test_replay_without_a_webhook_url_is_refused_and_changes_nothing(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    """Put back where no worker delivers them, the events would wait unseen instead of being
    listed."""
    event_id = await stand.bury(ANA, "Ana Souza")
    stored = await stand.stored()

    assert (
        await wsm_dlq(
            stand,
            "booking-webhook",
            "replay",
            event_id,
            WSM_BOOKING_WEBHOOK_URL="",
            WSM_BOOKING_WEBHOOK_SECRET="",
        )
        == 1
    )

    out, err = lines(capsys)
    assert out == [] and "WSM_BOOKING_WEBHOOK_URL is not set" in err[0]
    assert await stand.stored() == stored


# --- drop ---------------------------------------------------------------------------------


async def test_drop_deletes_for_good(stand: Stand, capsys: pytest.CaptureFixture[str]) -> None:
    ana = await stand.bury(ANA, "Ana Souza")
    bia = await stand.bury(BIA, "Bia Lima")

    assert await wsm_dlq(stand, "booking-webhook", "drop", ana) == 0
    assert lines(capsys) == ([f"{ana}: dropped"], [])
    assert [entry["id"] for entry in await stand.dead()] == [bia]
    assert not await stand.client.exists(stand.keys.hooks_body, stand.keys.hooks_due)
    assert await wsm_dlq(stand, "booking-webhook", "drop", ana) == 1
    assert lines(capsys) == ([], [f"{ana}: no such booking webhook dead letter"])


async def test_its_calls_do_not_wait_forever_for_redis(
    stand: Stand, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `wsm dlq`'s other commands: a Redis that stops answering fails the command."""
    made = record_clients(monkeypatch, dlq_cli)
    assert await wsm_dlq(stand, "booking-webhook", "list") == 0
    assert [has_deadlines(client) for client in made] == [True]


# --- the operator's path: the real command ------------------------------------------------


async def test_the_wsm_command_lists_and_replays(stand: Stand, tmp_path: Path) -> None:
    """`python -m wsm dlq booking-webhook ...` as the runbook runs it, beside `wsm dlq`'s
    other commands, which are worker/dlq_cli.py's as they were."""
    event_id = await stand.bury(ANA, "Ana Souza")
    env = fleet_environment(
        stand.redis_url,
        stand.prefix,
        {"WSM_BOOKING_WEBHOOK_URL": HOOKS, "WSM_BOOKING_WEBHOOK_SECRET": SECRET},
    )

    listed = run_wsm(["dlq", "booking-webhook", "list"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"default|{ANA}  {event_id}" in listed.stdout
    replayed = run_wsm(["dlq", "booking-webhook", "replay", event_id], env, tmp_path)
    assert (replayed.returncode, replayed.stdout) == (0, f"{event_id}: replayed\n")
    assert await stand.dead() == []
    assert await stand.client.zrange(stand.keys.hooks_due, 0, -1) == [event_id.encode()]

    queue = run_wsm(["dlq", "list"], env, tmp_path)
    assert (queue.returncode, queue.stdout) == (0, "no dead letters\n")
    helped = run_wsm(["dlq", "--help"], env, tmp_path)
    assert helped.returncode == 0 and "booking-webhook" in helped.stdout


async def test_list_says_how_many_events_the_cap_dropped(
    stand: Stand, capsys: pytest.CaptureFixture[str]
) -> None:
    """A receiver down for long: past WSM_DEAD_LETTERS_MAX the oldest are dropped when the next
    one is given up, and `list` says how many went (the JSON stays the events only)."""
    stand.dead_letters = DeadLetterLimits(max_entries=1, max_age_ms=86_400_000)
    await stand.bury(ANA, "Ana Souza")
    assert await stand.client.get(stand.keys.hooks_dead_dropped) is None  # nothing dropped yet
    # Two given up long ago, past the age: the next one given up takes both with it.
    for n in (1, 2):
        old = {"id": f"evt-old-{n}", "body": {}, "attempts": 1, "error": "x", "at": 1}
        await stand.client.lpush(stand.keys.hooks_dead, orjson.dumps(old))
    await stand.bury(BIA, "Bia Lima")  # 2 by age, 1 by the cap
    last = await stand.bury(ANA, "Ana Souza")  # 1 by the cap
    assert [entry["id"] for entry in await stand.dead()] == [last]  # the newest kept
    capsys.readouterr()

    assert await wsm_dlq(stand, "booking-webhook", "list", WSM_DEAD_LETTERS_MAX="1") == 0
    out, err = lines(capsys)
    assert err == [] and len(out) == 2 and last in out[0]
    assert out[1] == "(4 older events were dropped: at most 1 are kept, for 30 days)"

    assert await wsm_dlq(stand, "booking-webhook", "list", "--json") == 0
    out, err = lines(capsys)  # one JSON object per line, and no count among them
    assert err == [] and [orjson.loads(line)["id"] for line in out] == [last]
