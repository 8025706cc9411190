"""`wsm dlq outbox` (worker/dlq_outbox.py): the replies the sender gave up on, listed, sent again
and dropped. The operator's path runs the real command (`python -m wsm`) beside the real sender
and its WAHA (respx): a reply WAHA refused is replayed, sent once, and a second replay finds
nothing. In-process runs read what the command prints line by line, and take every refusal,
each checked to have stored nothing (every key of the test's prefix, byte for byte)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx

from engine.erase import erase_customer
from engine.history import HistoryKeys, read_page
from engine.outbox import new_entry
from shared.clock import now_ms
from shared.keys import ShardKeys
from shared.outbox_dead_letters import (
    OutboxDeadLetter,
    drop_outbox_dead_letter,
    list_outbox_dead_letters,
)
from tests.engine.harness import WAHA, mock_courtesy, texts_sent
from tests.engine.support import make_sender, sent_answer
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id, fleet_environment, run_wsm
from tests.worker.support.in_process import settings_of, single_queue
from tests.worker.support.outbox_dead import (
    AT_MS,
    SESSION,
    bury,
    commit,
    keys_for,
    no_answer,
    outbox_texts,
)
from worker import dlq_cli, dlq_outbox


@pytest.fixture
async def queue(redis_url: str, key_prefix: str) -> AsyncIterator[Queue]:
    """One Redis (the script's cluster cases are in test_replay_outbox_dead_script.py)."""
    async with single_queue(redis_url, key_prefix) as queue:
        yield queue


async def wsm_dlq(queue: Queue, *argv: str, **settings: str) -> int:
    args = dlq_cli.build_parser().parse_args(list(argv))
    return await dlq_cli.run(settings_of(queue, **settings), args)


async def stored(queue: Queue) -> dict[bytes, tuple[bytes, bool]]:
    """Every key of the test's prefix: its value (DUMP) and whether it expires."""
    keys = [key async for key in queue.client.scan_iter(match=f"{queue.prefix}:*", count=1000)]
    return {key: (await queue.client.dump(key), await queue.client.ttl(key) > 0) for key in keys}


async def listed(queue: Queue) -> list[OutboxDeadLetter]:
    return await list_outbox_dead_letters(queue.client, 1, queue.prefix)


# --- list ---------------------------------------------------------------------------------


async def test_list_prints_one_line_per_reply_oldest_first(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = chat_id(1), chat_id(2)
    (refused,) = await bury(queue.client, first, queue.prefix, ["Olá! Sua vez na fila: 3"],
                            at_ms=AT_MS + 60_000)  # fmt: skip
    (timed_out,) = await bury(queue.client, second, queue.prefix, ["x" * 80], reason=no_answer())
    image = new_entry(second, "Seu comprovante")
    image = type(image)(**{**_fields(image), "kind": "image",
                           "media": {"id": "m1", "filename": "pix.png"}})  # fmt: skip
    await commit(queue.client, second, queue.prefix, 1, [image])
    await _dead(queue, second, image.mid, '{"status":null,"answer":"","error":"the image to '
                'send is no longer stored"}', AT_MS + 120_000)  # fmt: skip

    assert await wsm_dlq(queue, "outbox", "list") == 0

    assert capsys.readouterr().out.splitlines() == [
        f"2025-11-30T10:53:20Z  attempts=1  unknown   default|{second}  {timed_out}  "
        f'"{"x" * 59}…"  POST /api/sendText: ReadTimeout: no answer in time',
        f"2025-11-30T10:54:20Z  attempts=1  not_sent  default|{first}  {refused}  "
        '"Olá! Sua vez na fila: 3"  POST /api/sendText: WAHA answered 400: '
        '{"message":"chatId is invalid"}',
        f"2025-11-30T10:55:20Z  attempts=0  not_sent  default|{second}  {image.mid}  "
        'image:pix.png "Seu comprovante"  the image to send is no longer stored',
    ]


def _fields(entry: Any) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in entry.__slots__}


async def _dead(queue: Queue, chat: str, mid: str, reason: str, at_ms: int) -> None:
    """A reply dead-lettered before any send (the sender's `_file_of` failed)."""
    from shared.dead_letters import outbox_dead

    keys = keys_for(chat, queue.prefix)
    assert await outbox_dead(queue.client, keys, keys.conversation.token, mid, reason, at_ms)


async def test_list_of_nothing_says_so(queue: Queue, capsys: pytest.CaptureFixture[str]) -> None:
    assert await wsm_dlq(queue, "outbox", "list") == 0
    assert capsys.readouterr().out == "no outbox dead letters\n"
    for command in ("replay", "drop"):
        assert await wsm_dlq(queue, "outbox", command, "--all") == 0
        assert capsys.readouterr().out == "no outbox dead letters\n"


async def test_list_says_how_many_older_replies_were_dropped(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    await bury(queue.client, chat_id(3), queue.prefix, ["a"])
    await queue.client.hset(ShardKeys(0, queue.prefix).stats, "outbox_dead_dropped", 4)

    assert await wsm_dlq(queue, "outbox", "list", WSM_DEAD_LETTERS_MAX="50") == 0

    assert capsys.readouterr().out.splitlines()[1:] == [
        "(4 older replies were dropped: at most 50 per shard are kept, for 30 days)"
    ]


async def test_list_json_is_one_object_per_line_and_nothing_else(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = chat_id(4)
    (mid,) = await bury(queue.client, chat, queue.prefix, ["olá\nmundo"])
    await queue.client.hset(ShardKeys(0, queue.prefix).stats, "outbox_dead_dropped", 3)

    assert await wsm_dlq(queue, "outbox", "list", "--json") == 0

    assert [orjson.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {
            "id": mid,
            "conversation": f"default|{chat}",
            "shard": 0,
            "chat": chat,
            "kind": "text",
            "text": "olá\nmundo",
            "media": None,
            "author": "bot",
            "created": AT_MS,
            "attempts": 1,
            "at": AT_MS,
            "status": 400,
            "answer": '{"message":"chatId is invalid"}',
            "error": "POST /api/sendText: WAHA answered 400",
            "outcome": "not_sent",
        }
    ]


async def test_the_queues_list_points_at_the_outboxs(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await wsm_dlq(queue, "list") == 0
    assert capsys.readouterr().out == "no dead letters\n"
    await bury(queue.client, chat_id(5), queue.prefix, ["a", "b"])

    assert await wsm_dlq(queue, "list") == 0
    assert capsys.readouterr().out.splitlines() == [
        "no dead letters",
        "(2 replies the sender gave up on: wsm dlq outbox list)",
    ]
    assert await wsm_dlq(queue, "list", "--json") == 0
    assert capsys.readouterr().out == ""


# --- replay ---------------------------------------------------------------------------------


async def test_replay_of_a_conversation_puts_back_its_replies_only_in_their_order(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    chat, other = chat_id(6), chat_id(7)
    mids = await bury(queue.client, chat, queue.prefix, ["um", "dois"], created_ms=now_ms())
    (others,) = await bury(queue.client, other, queue.prefix, ["outro"], created_ms=now_ms())

    # As an operator may write it: WhatsApp's raw form of the chat is the same conversation.
    raw_chat = chat.replace("@c.us", "@s.whatsapp.net")
    assert await wsm_dlq(queue, "outbox", "replay", "--conversation", f"default|{raw_chat}") == 0

    assert capsys.readouterr().out.splitlines() == [f"{mid}: replayed" for mid in mids]
    assert await outbox_texts(queue.client, keys_for(chat, queue.prefix)) == ["um", "dois"]
    assert [letter.mid for letter in await listed(queue)] == [others]


async def test_replay_and_drop_of_what_is_not_there_fail_the_command(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    (mid,) = await bury(queue.client, chat_id(8), queue.prefix, ["a"])
    before = await stored(queue)

    assert await wsm_dlq(queue, "outbox", "replay", "nope", "--resend-unknown") == 1
    assert capsys.readouterr() == ("", "nope: no such outbox dead letter\n")
    assert await wsm_dlq(queue, "outbox", "replay", "--conversation", "default|1@c.us") == 1
    assert capsys.readouterr() == (
        "",
        "conversation default|1@c.us: no such outbox dead letter\n",
    )
    assert await wsm_dlq(queue, "outbox", "drop", "nope", "nope") == 1
    assert capsys.readouterr() == ("", "nope: no such outbox dead letter\n")
    assert await stored(queue) == before

    # One found and one not: the found one is handled, and the command still fails.
    assert await wsm_dlq(queue, "outbox", "drop", mid, "nope") == 1
    assert capsys.readouterr() == (f"{mid}: dropped\n", "nope: no such outbox dead letter\n")
    assert await listed(queue) == []


@pytest.mark.parametrize(
    ("command", "gone", "done"),
    [("replay", "gone", "replayed"), ("drop", "already gone", "dropped")],
)
async def test_a_reply_taken_before_it_is_handled_fails_the_command(
    queue: Queue,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    gone: str,
    done: str,
) -> None:
    """Another operator replays or drops the oldest reply right after this command listed
    them: it is answered as gone and fails the command; the next one is still handled."""

    async def list_then_lose_one(client: Any, shards: int, prefix: str) -> list[OutboxDeadLetter]:
        letters = await list_outbox_dead_letters(client, shards, prefix)
        await drop_outbox_dead_letter(client, letters[0])
        return letters

    monkeypatch.setattr(dlq_outbox, "list_outbox_dead_letters", list_then_lose_one)
    now = now_ms()
    (lost,) = await bury(queue.client, chat_id(17), queue.prefix, ["a"], created_ms=now)
    (kept,) = await bury(queue.client, chat_id(18), queue.prefix, ["b"], created_ms=now,
                         at_ms=AT_MS + 1)  # fmt: skip

    assert await wsm_dlq(queue, "outbox", command, lost, kept) == 1

    assert capsys.readouterr() == (f"{lost}: {gone}\n{kept}: {done}\n", "")
    assert await listed(queue) == []


REFUSALS = {
    "unknown": "not replayed: its last send got no answer from WAHA, so it may have reached the "
    "customer: check the chat, then replay it with --resend-unknown",
    "no_history": "not replayed: its conversation's history no longer has it (the customer was "
    "erased, or it was trimmed past the history's retention or cap)",
    "expired": "not replayed: written more than WSM_HISTORY_RETENTION_DAYS (2) days ago",
    "recorded": "not replayed: the history says it is 'read', not failed",
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
async def test_a_refused_replay_says_why_fails_and_stores_nothing(
    queue: Queue, capsys: pytest.CaptureFixture[str], refusal: str
) -> None:
    chat = chat_id(9)
    keys = keys_for(chat, queue.prefix)
    reason = no_answer() if refusal == "unknown" else None
    # Written just now, or (expired) three days ago with the history kept for two.
    created = now_ms() - (3 * 86_400_000 if refusal == "expired" else 0)
    (mid,) = await bury(queue.client, chat, queue.prefix, ["x"], reason=reason, created_ms=created)
    if refusal == "no_history":
        await queue.client.hdel(keys.history_meta, f"{mid}:status")
    elif refusal == "recorded":
        await queue.client.hset(keys.history_meta, f"{mid}:status", "read")
    before = await stored(queue)
    (letter,) = await listed(queue)

    code = await wsm_dlq(queue, "outbox", "replay", mid, WSM_HISTORY_RETENTION_DAYS="2")

    assert code == 1
    assert capsys.readouterr() == (f"{mid}: {REFUSALS[refusal]}\n", "")
    assert await stored(queue) == before
    assert await listed(queue) == [letter]


async def test_an_erase_between_list_and_replay_leaves_nothing_to_send(
    queue: Queue, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer is erased (LGPD) right after the command listed their reply: the replay
    finds it gone and stores nothing, so nothing of theirs comes back and nothing is sent."""
    chat = chat_id(10)
    (mid,) = await bury(queue.client, chat, queue.prefix, ["dados"])
    erased: list[dict[bytes, Any]] = []

    async def list_then_erase(client: Any, shards: int, prefix: str) -> list[OutboxDeadLetter]:
        letters = await list_outbox_dead_letters(client, shards, prefix)
        await erase_customer(client, prefix=prefix, shards=shards, session=SESSION, chat_id=chat)
        erased.append(await stored(queue))
        return letters

    monkeypatch.setattr(dlq_outbox, "list_outbox_dead_letters", list_then_erase)

    assert await wsm_dlq(queue, "outbox", "replay", mid) == 1

    assert capsys.readouterr() == (f"{mid}: gone\n", "")
    assert await stored(queue) == erased[0]
    keys = keys_for(chat, queue.prefix)
    assert await queue.client.exists(keys.outbox, keys.history_meta, keys.outbox_dlq) == 0
    assert await queue.client.zscore(keys.outbox_pending, keys.conversation.token) is None


async def test_an_erased_customers_replies_are_not_listed_nor_replayed(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    chat, other = chat_id(11), chat_id(12)
    (mid,) = await bury(queue.client, chat, queue.prefix, ["dados"])
    (kept,) = await bury(queue.client, other, queue.prefix, ["outro"])
    await erase_customer(queue.client, prefix=queue.prefix, shards=1, session=SESSION, chat_id=chat)
    before = await stored(queue)

    assert await wsm_dlq(queue, "outbox", "replay", mid) == 1
    assert capsys.readouterr() == ("", f"{mid}: no such outbox dead letter\n")
    assert await stored(queue) == before
    assert [letter.mid for letter in await listed(queue)] == [kept]


# --- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["replay"],
        ["drop"],
        ["replay", "x", "--all"],
        ["replay", "--conversation", "default|1@c.us", "--all"],
        ["drop", "x", "--conversation", "default|1@c.us"],
    ],
)
def test_ids_conversation_or_all_exactly_one(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        dlq_cli.main(["outbox", *argv])
    assert exited.value.code == 2
    assert "give reply ids, --conversation or --all (one)" in capsys.readouterr().err


# --- the operator's path: the real command beside the real sender ---------------------------


@respx.mock
async def test_a_reply_waha_refused_is_replayed_by_the_command_and_sent_once(
    queue: Queue, workdir: Path
) -> None:
    chat = chat_id(13)
    keys = keys_for(chat, queue.prefix)
    token = keys.conversation.token
    env = fleet_environment(queue.url, queue.prefix, {})
    mock_courtesy()
    refused = httpx.Response(400, json={"statusCode": 400, "message": "session busy, try later"})
    send = respx.post(f"{WAHA}/api/sendText").mock(
        side_effect=[refused, sent_answer(1), sent_answer(2)]
    )
    await commit(queue.client, chat, queue.prefix, 1, [new_entry(chat, "ruim"),
                                                       new_entry(chat, "boa")])  # fmt: skip
    sender, waha = make_sender(queue.client, queue.prefix)
    await sender.deliver(token)
    assert texts_sent(send) == ["ruim", "boa"]  # the refused one dead-lettered, the next sent

    listing = run_wsm(["dlq", "outbox", "list", "--json"], env, workdir)
    assert listing.returncode == 0, listing.stderr
    (letter,) = [orjson.loads(line) for line in listing.stdout.splitlines()]
    assert (letter["text"], letter["status"], letter["outcome"]) == ("ruim", 400, "not_sent")
    assert "session busy" in run_wsm(["dlq", "outbox", "list"], env, workdir).stdout

    replay = run_wsm(["dlq", "outbox", "replay", letter["id"]], env, workdir)
    assert (replay.returncode, replay.stdout, replay.stderr) == (
        0, f"{letter['id']}: replayed\n", ""
    )  # fmt: skip
    assert await sender.sweep_once() == 1  # due now: the sweeper finds it
    await sender.drain()

    assert texts_sent(send) == ["ruim", "boa", "ruim"]  # sent again, once
    page, _ = await read_page(queue.client, HistoryKeys(keys.history, keys.history_meta))
    assert [(e.text, e.status) for e in page] == [("ruim", "sent"), ("boa", "sent")]
    again = run_wsm(["dlq", "outbox", "replay", letter["id"]], env, workdir)
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == f"{letter['id']}: no such outbox dead letter\n"
    await sender.sweep_once()
    await sender.deliver(token)
    assert send.call_count == 3  # nothing more to send
    assert run_wsm(["dlq", "outbox", "list"], env, workdir).stdout == "no outbox dead letters\n"
    await waha.aclose()


async def test_the_command_refuses_an_unknown_outcome_until_told_and_drops(
    queue: Queue, workdir: Path
) -> None:
    chat = chat_id(14)
    env = fleet_environment(queue.url, queue.prefix, {})
    now = now_ms()
    (mid,) = await bury(
        queue.client, chat, queue.prefix, ["talvez"], reason=no_answer(), created_ms=now
    )
    (other,) = await bury(queue.client, chat_id(15), queue.prefix, ["outro"], created_ms=now)
    keys = keys_for(chat, queue.prefix)
    before = await queue.client.hgetall(keys.history_meta)

    refused = run_wsm(["dlq", "outbox", "replay", "--all"], env, workdir)

    assert refused.returncode == 1, refused.stderr
    assert refused.stdout.splitlines() == [f"{mid}: {REFUSALS['unknown']}", f"{other}: replayed"]
    # The other conversation's reply went back; of this one nothing was stored.
    assert await outbox_texts(queue.client, keys_for(chat_id(15), queue.prefix)) == ["outro"]
    assert await queue.client.exists(keys.outbox) == 0
    assert await queue.client.hgetall(keys.history_meta) == before
    assert await queue.client.zscore(keys.outbox_pending, keys.conversation.token) is None
    assert [letter.mid for letter in await listed(queue)] == [mid]

    told = run_wsm(
        ["dlq", "outbox", "replay", "--conversation", f"default|{chat}", "--resend-unknown"],
        env,
        workdir,
    )
    assert (told.returncode, told.stdout) == (0, f"{mid}: replayed\n"), told.stderr
    assert await outbox_texts(queue.client, keys) == ["talvez"]

    await bury(queue.client, chat_id(16), queue.prefix, ["de novo"], created_ms=now)
    dropped = run_wsm(["dlq", "outbox", "drop", "--all"], env, workdir)
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.stdout.endswith(": dropped\n")
    assert await listed(queue) == []

    usage = run_wsm(["dlq", "outbox", "replay"], env, workdir)
    assert usage.returncode == 2
    assert "give reply ids, --conversation or --all (one)" in usage.stderr
    helped = run_wsm(["dlq", "outbox", "--help"], env, workdir)
    assert helped.returncode == 0 and "--resend-unknown" in helped.stdout
